"""Settings of the embedded API server: one frozen dataclass, passed in by the entry points."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from raven.apiserver.errors import ApiServerError
from raven.settings import PROXY_SERVER_PORT


@dataclass(frozen=True)
class ApiServerSettings:
    """Everything the API server needs to start.

    `port` 0 asks the kernel for a free port; the bound port is reported by the running server.
    `plain_http` serves without TLS and is refused unless `host` is a loopback address.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 6443
    plain_http: bool = False
    extra_sans: tuple[str, ...] = ()
    # Events kept in memory so that watches can resume; older resourceVersions get 410 Expired.
    watch_history: int = 20000
    # Interval between BOOKMARK events for watches that asked for them.
    bookmark_interval: float = 60.0
    # Watches without timeoutSeconds end after a random time in this range (like kube-apiserver).
    default_watch_timeout: tuple[float, float] = field(default=(1800.0, 3600.0))
    # A watcher with this many unsent bytes is disconnected (it re-watches or re-lists).
    watcher_backlog_bytes: int = 64 << 20
    # A request body (any framing) above this many bytes is answered 413 (kube-apiserver: 3 MiB).
    max_body_bytes: int = 3 << 20
    # JSON/YAML bodies nested deeper than this are refused (400) before anything recurses on them.
    max_body_depth: int = 200
    # Bytes of request line and headers read per request; beyond them 431 and close (Go's
    # net/http DefaultMaxHeaderBytes). http.server alone allows 100 lines of 64 KiB: 6.4 MB held
    # per unauthenticated connection, several GB over max_connections.
    max_header_bytes: int = 1 << 20
    # Seconds a client has to send the request line and headers (TLS handshake included).
    header_timeout: float = 30.0
    # Seconds a client has to send a whole body once its headers are in.
    body_timeout: float = 60.0
    # Seconds a keep-alive connection may wait for its next request before it is closed.
    # A watch is not idle: while the server streams to it, no timeout applies.
    idle_timeout: float = 90.0
    # Seconds a response write may block on a client that does not read.
    write_timeout: float = 60.0
    # Connections served at once (one thread each, watches included); more are closed at accept.
    max_connections: int = 1024
    # --- kubelets (pods/log, pods/exec, pods/attach, nodes/proxy; raven.apiserver.nodedial)
    # CA that kubelet serving certificates must chain to; None: the cluster CA of the data dir.
    kubelet_ca: Path | None = None
    # Client certificate and key presented to kubelets (and egress proxies); None: made in the
    # data dir from the cluster CA (apiserver-kubelet-client.crt).
    kubelet_client_cert: Path | None = None
    kubelet_client_key: Path | None = None
    # Networks (CIDRs) node addresses must lie in to be dialled; empty: any unicast address
    # that is not link-local.
    kubelet_networks: tuple[str, ...] = ()
    # Seconds to connect (TCP, proxy CONNECT, TLS) to a kubelet before answering 503/502.
    kubelet_timeout: float = 10.0
    # HTTP CONNECT proxies over TLS (HOST:PORT), tried in order, for the nodes `egress_selector`
    # selects (kube-apiserver's egress selector, HTTPConnect mode); empty: always direct.
    egress_proxies: tuple[str, ...] = ()
    # Label selector of the Nodes reached through the egress proxies; "" selects every node.
    egress_selector: str = ""
    # CA that egress proxy certificates must chain to; None: the cluster CA.
    egress_proxy_ca: Path | None = None
    # Raven's proxy (docs/proxy.md): nodes of NAT'd pools are reached through the proxy servers
    # the Gateway status names, with a client certificate issued from this CA (certificate and
    # key); None: not used. Checked before the egress proxies above.
    raven_proxy_ca: Path | None = None
    raven_proxy_ca_key: Path | None = None
    raven_proxy_port: int = PROXY_SERVER_PORT  # the proxy servers' server-facing port

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_body_bytes", "max_body_depth", "max_connections", "max_header_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("header_timeout", "body_timeout", "idle_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be more than 0 seconds (got {getattr(self, name)})")
        if not self.kubelet_timeout > 0:
            problems.append(f"kubelet_timeout must be more than 0 seconds "
                            f"(got {self.kubelet_timeout})")
        for cidr in self.kubelet_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                problems.append(f"kubelet_networks: {cidr!r} is not a network (e.g. "
                                "198.18.0.0/15)")
        if (self.raven_proxy_ca is None) != (self.raven_proxy_ca_key is None):
            problems.append("raven_proxy_ca and raven_proxy_ca_key go together")
        if not 0 < self.raven_proxy_port < 65536:
            problems.append(f"raven_proxy_port must be a port number (got {self.raven_proxy_port})")
        if (self.kubelet_client_cert is None) != (self.kubelet_client_key is None):
            problems.append("kubelet_client_cert and kubelet_client_key go together")
        if problems:
            raise ApiServerError("API server settings: " + "; ".join(problems))
