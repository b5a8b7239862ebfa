"""Kubelets of NAT'd pools through Raven's proxy servers, found from the Gateway status.

docs/proxy.md fixes the interface: `raven.proxy.dial.proxy_for(gateways, node_ip, port)` names
the proxy servers (InternalIPs of the public pools' active proxy endpoints) through which a node
is reached, or [] when it is dialled directly; `raven.proxy.certs.user_context` issues the
client certificate (O=raven:proxy-user) from the proxy CA; `raven.proxy.dial.open_tunnel` sends
the CONNECT and returns the TLS socket to the proxy that carries the kubelet's bytes.

Rules kept:
- the proxies are looked up from the stored Gateways at every request, so an active proxy
  endpoint that fails over (in the NAT'd pool or the public one) is followed at once;
- the client certificate is re-issued when half its lifetime has passed;
- a proxy's 403 is answered 403; otherwise the next proxy is tried; when none connects the
  answer is 502 if a proxy client reached the pool but not the kubelet, else 503.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raven.apiserver.nodedial import KubeletEndpoint, bad_gateway, forbidden, unavailable
from raven.proxy.certs import user_context
from raven.proxy.dial import TunnelError, open_tunnel, proxy_for

CERT_LIFETIME = 24 * 3600.0


@dataclass
class RavenProxy:
    ca_cert: Path
    ca_key: Path
    port: int  # the proxy servers' server-facing port (10263)
    gateways: Callable[[], list[dict[str, Any]]]  # the stored Gateways, storage version
    _context: ssl.SSLContext | None = None
    _issued: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def proxies(self, node_ip: str) -> list[tuple[str, int]]:
        return proxy_for(self.gateways(), node_ip, self.port)

    def context(self) -> ssl.SSLContext:
        now = time.time()
        with self._lock:
            if self._context is None or now - self._issued > CERT_LIFETIME / 2:
                self._context = user_context(self.ca_cert, self.ca_key, now,
                                             lifetime=CERT_LIFETIME)
                self._issued = now
            return self._context

    def tunnel(self, endpoint: KubeletEndpoint, proxies: list[tuple[str, int]],
               timeout: float) -> ssl.SSLSocket:
        context = self.context()
        failures: list[str] = []
        reached_pool = False
        for host, port in proxies:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                return open_tunnel((host, port), context, endpoint.host, endpoint.port, timeout)
            except TunnelError as error:
                if error.status == 403:
                    raise forbidden(f"Raven's proxy server {shown} refused the tunnel to the "
                                    f"kubelet of node {endpoint.node!r} at {endpoint.address}: "
                                    f"{error.reason}") from error
                reached_pool = reached_pool or error.status == 502
                failures.append(f"{shown}: {error}")
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"{shown}: {exc.strerror or exc}")
        message = (f"the kubelet of node {endpoint.node!r} at {endpoint.address} is behind NAT "
                   f"and no Raven proxy server carried the connection: {'; '.join(failures)}")
        raise bad_gateway(message) if reached_pool else unavailable(message)
