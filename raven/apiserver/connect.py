"""The connect subresources (pods/log, pods/exec, pods/attach, nodes/proxy): a request in, a
relay to the node's kubelet out. The work is kubeletproxy's (resolve, dial, the bytes) and
nodedial's (which way to the node); this module only joins them to the request.

Rules kept:
- Everything that can refuse the request (no kubelet client certificate: 503; bad parameters,
  unknown pod or node, a kubelet that cannot be reached) is decided in `open_relay`, before
  the client is answered, so a refusal is a plain Status.
- An upgrade (exec's WebSocket) is asked for only with `Connection: upgrade` and an `Upgrade`
  header; HEAD is resolved as GET but sent to the kubelet as HEAD.
- A relay ends with the kubelet's connection: the handler closes the client connection after it.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from raven.apiserver import kubeletproxy
from raven.apiserver.context import ServerContext
from raven.apiserver.exchange import Request, query_lists
from raven.apiserver.kubeletproxy import KubeletRequest
from raven.apiserver.routing import ResourceRoute
from raven.apiserver.status import ApiError


@dataclass(frozen=True)
class Relay:
    """A dialled kubelet connection and the request head to send on it."""

    kubelet: KubeletRequest
    upstream: ssl.SSLSocket
    head: bytes
    upgrade: bool

    def forward(self, client: socket.socket, early: bytes, body: bytes,
                timeout: float) -> int:
        """Send the request, relay the answer (or the upgraded stream) until either side
        closes; the kubelet's status code. `early`: bytes of the upgraded stream the client
        sent with its request head."""
        return kubeletproxy.forward(client, early, self.upstream, self.head, body, self.upgrade,
                                    timeout)


def is_connect(route: ResourceRoute) -> bool:
    return bool(route.subresource) and route.subresource in route.rtype.connect_subresources


def open_relay(context: ServerContext, request: Request, route: ResourceRoute) -> Relay:
    """Resolve the kubelet endpoint and dial it; ApiError when the request cannot be relayed."""
    proxy = context.kubelets
    if proxy is None:
        raise ApiError(503, "ServiceUnavailable", "this API server is not set up to reach "
                       "kubelets (no kubelet client certificate)", {})
    upgrade = wants_upgrade(request.headers.get("Connection"), request.headers.get("Upgrade"))
    query = query_lists(request.raw_query)
    method = request.command
    kubelet = proxy.resolve(context.api, context.registry, route,
                            "GET" if method == "HEAD" else method, query, upgrade)
    upstream = proxy.dial(kubelet)
    head = kubeletproxy.request_head(method, kubelet, request.headers, upgrade,
                                     len(request.body))
    return Relay(kubelet, upstream, head, upgrade)


def wants_upgrade(connection: str | None, upgrade: str | None) -> bool:
    tokens = {t.strip().lower() for t in (connection or "").split(",")}
    return "upgrade" in tokens and bool(upgrade)
