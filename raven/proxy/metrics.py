"""Prometheus metrics of the proxy, on the agent's registry (served at the agent's /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.role = Gauge("raven_proxy_role", "1 for this node's proxy role (server, client, "
                          "none)", ["role"], registry=r)
        self.requests = Counter(
            "raven_proxy_requests_total", "Tunnel requests by result: ok, refused (400/403), "
            "unavailable (503: no client), failed (502: target unreachable)", ["side", "result"],
            registry=r)
        self.streams = Gauge("raven_proxy_streams_open", "Tunnelled streams open now",
                             ["side"], registry=r)
        self.connections = Gauge("raven_proxy_connections", "Proxy connections up (server: "
                                 "clients connected; client: servers connected)", ["side"],
                                 registry=r)
        self.dials = Counter("raven_proxy_client_dials_total", "Proxy client dials by result",
                             ["result"], registry=r)
        self.bytes = Counter("raven_proxy_bytes_total", "Bytes carried through tunnels",
                             ["side", "direction"], registry=r)
        self.cert_expiry = Gauge("raven_proxy_certificate_expiry_timestamp_seconds",
                                 "notAfter of the proxy certificate in use", registry=r)
        self.rotations = Counter("raven_proxy_certificate_rotations_total",
                                 "Proxy certificates issued", registry=r)
