"""Wiring of the embedded API server: store, semantics, TLS, HTTP; blocking or in a thread.

`serve(settings)` runs until SIGTERM/SIGINT (graceful: watches end cleanly, the store is
closed). `start(settings)` runs in a background thread and returns a `RunningApiServer` that
knows the bound port (port 0 allowed), the kubeconfig path and how to stop.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sqlite3
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from raven.apiserver import security
from raven.apiserver.api import ResourceApi
from raven.apiserver.connections import ApiServerHTTP
from raven.apiserver.context import ServerContext
from raven.apiserver.errors import ApiServerError
from raven.apiserver.fanout import WatchFanout
from raven.apiserver.handler import RequestHandler
from raven.apiserver.kubeletproxy import KubeletProxy
from raven.apiserver.nodedial import EgressProxy, NodeDialer, client_context, parse_host_port
from raven.apiserver.ravenproxy import RavenProxy
from raven.apiserver.resources import Registry
from raven.apiserver.selectors import make_filter
from raven.apiserver.settings import ApiServerSettings
from raven.apiserver.status import ApiError
from raven.apiserver.store import Store
from raven.constants import API_GROUP, API_VERSION, GATEWAY_PLURAL

log = logging.getLogger("raven.apiserver")

DATABASE = "store.sqlite"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    """The address clients should use for a listen address (wildcards -> loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ApiServer:
    """One API server instance: call `bind()`, then `serve_forever()`, then `close()`."""

    def __init__(self, settings: ApiServerSettings) -> None:
        if settings.plain_http and not is_loopback(settings.host):
            raise ApiServerError(
                f"--plain-http serves without TLS and is only allowed on loopback; "
                f"{settings.host} is not a loopback address (use 127.0.0.1 or drop --plain-http)"
            )
        self.settings = settings
        data_dir = Path(settings.data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ApiServerError(f"cannot create the data directory {data_dir}: {exc}") from exc
        self.data_dir = data_dir
        self.token = security.load_or_create_token(data_dir)
        self.fanout = WatchFanout(settings.watcher_backlog_bytes)
        try:
            self.store = Store(data_dir / DATABASE, settings.watch_history, self.fanout)
        except sqlite3.DatabaseError as exc:
            raise ApiServerError(
                f"cannot open the store {data_dir / DATABASE}: {exc}; restore it from a backup "
                "or move it away to start with an empty store"
            ) from exc
        self.registry = Registry()
        self.api = ResourceApi(self.store, self.registry)
        self.api.bootstrap()
        self.stopping = False
        self.httpd: ApiServerHTTP | None = None
        self.kubelets: KubeletProxy | None = None
        self.ca_cert: Path | None = None
        self.kubeconfig: Path | None = None
        self.address = ""

    def bind(self) -> None:
        settings = self.settings
        context = None
        host = client_host(settings.host)
        if not settings.plain_http:
            names = {host, "127.0.0.1", "localhost", *settings.extra_sans}
            if settings.host not in ("", "0.0.0.0", "::"):
                names.add(settings.host)
            else:
                names.add(socket.gethostname())
            self.ca_cert, cert, key = security.ensure_certificates(self.data_dir, sorted(names))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(cert), str(key))
            context.set_alpn_protocols(["http/1.1"])
        self.kubelets = self._kubelet_proxy()
        try:
            self.httpd = ApiServerHTTP((settings.host or "0.0.0.0", settings.port),
                                       RequestHandler, self._context(), context)
        except OSError as exc:
            raise ApiServerError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
                "choose another --listen address or port"
            ) from exc
        self.port = self.httpd.server_address[1]
        scheme = "http" if settings.plain_http else "https"
        self.address = f"{_url_host(host)}:{self.port}"
        self.httpd.context = self._context()  # now with the bound address
        self.url = f"{scheme}://{self.address}"
        self.kubeconfig = security.write_kubeconfig(
            self.data_dir, self.url, self.token, self.ca_cert
        )
        log.info("serving %s (data in %s, kubeconfig %s)", self.url, self.data_dir,
                 self.kubeconfig)

    def _context(self) -> ServerContext:
        return ServerContext(settings=self.settings, token=self.token, registry=self.registry,
                             api=self.api, store=self.store, address=self.address,
                             is_stopping=lambda: self.stopping,
                             watch_health=self.fanout.health,
                             kubelets=self.kubelets)

    def _kubelet_proxy(self) -> KubeletProxy:
        """TLS to kubelets (client cert, CA) and the egress proxies; ApiServerError naming the
        setting when the material cannot be loaded."""
        s = self.settings
        ca = s.kubelet_ca or self.data_dir / security.CA_CERT
        try:
            if s.kubelet_client_cert is not None and s.kubelet_client_key is not None:
                cert, key = s.kubelet_client_cert, s.kubelet_client_key
            else:
                cert, key = security.ensure_kubelet_client(self.data_dir)
            kubelet_tls = client_context(str(ca), str(cert), str(key))
            proxy_tls = None
            if s.egress_proxies:
                proxy_ca = s.egress_proxy_ca or self.data_dir / security.CA_CERT
                proxy_tls = client_context(str(proxy_ca), str(cert), str(key))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ApiServerError(f"cannot load the TLS material for kubelets (CA {ca}): {exc}; "
                                 "check --kubelet-certificate-authority, "
                                 "--kubelet-client-certificate/-key and --egress-proxy-ca") from exc
        try:
            proxies = tuple(EgressProxy(*parse_host_port(p, "--egress-proxy"))
                            for p in s.egress_proxies)
            selector = make_filter(s.egress_selector or None, None, "Node")
        except (ValueError, ApiError) as exc:
            raise ApiServerError(f"egress settings: {getattr(exc, 'message', exc)}") from exc
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in s.kubelet_networks)
        raven = None
        if s.raven_proxy_ca is not None and s.raven_proxy_ca_key is not None:
            raven = RavenProxy(s.raven_proxy_ca, s.raven_proxy_ca_key, s.raven_proxy_port,
                               self._stored_gateways)
            try:
                raven.context()  # the CA files are read now: a bad one stops the start
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise ApiServerError(f"cannot issue a proxy client certificate from "
                                     f"--raven-proxy-ca {s.raven_proxy_ca}: {exc}") from exc
        dialer = NodeDialer(kubelet_tls, proxy_tls, proxies,
                            selector or (lambda _node: True), s.kubelet_timeout, raven,
                            stall_timeout=s.write_timeout)
        return KubeletProxy(dialer, networks)

    def _stored_gateways(self) -> list[dict[str, Any]]:
        rtype = self.registry.get(API_GROUP, API_VERSION, GATEWAY_PLURAL)
        assert rtype is not None  # Gateways are always served
        items, _ = self.api.list(rtype, None, None)
        return [item.obj for item in items]

    def serve_forever(self) -> None:
        assert self.httpd is not None
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop accepting, end every watch, close the store (idempotent)."""
        if self.stopping:
            return
        self.stopping = True
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.store.close()
        log.info("stopped")


@dataclass
class RunningApiServer:
    """A server running in a background thread of this process."""

    server: ApiServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def kubeconfig(self) -> Path:
        assert self.server.kubeconfig is not None
        return self.server.kubeconfig

    @property
    def token(self) -> str:
        return self.server.token

    @property
    def ca_cert(self) -> Path | None:
        return self.server.ca_cert

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


def start(settings: ApiServerSettings) -> RunningApiServer:
    """Start in a background thread; returns once the port is bound and the kubeconfig written."""
    server = ApiServer(settings)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, name="raven-apiserver", daemon=True)
    thread.start()
    return RunningApiServer(server, thread)


def serve(settings: ApiServerSettings, on_ready: object = None) -> int:
    """Serve until SIGTERM or SIGINT. `on_ready(server)` is called once the port is bound."""
    server = ApiServer(settings)
    server.bind()
    if callable(on_ready):
        on_ready(server)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %d, shutting down", signum)
        threading.Thread(target=server.shutdown, name="raven-apiserver-stop").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.shutdown()
    return 0
