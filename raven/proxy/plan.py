"""PURE: who runs what in the proxy, and which targets it may carry.

Rules kept (docs/proxy.md):
- a pool is public when its Gateway is exposed (`exposeType` set) or none of its endpoints is
  under NAT; the active proxy endpoints (status.activeEndpoints, type proxy) of public pools
  run proxy servers, those of NAT'd pools run proxy clients that dial every proxy server;
- the only targets are kubelet ports of nodes of NAT'd pools that have an active proxy
  endpoint: Node InternalIPs from the pool's status.nodes, ports from the pool's proxyConfig
  (proxyHTTPPort, proxyHTTPSPort: comma-separated) or else 10250 and 10255. Targets are IP
  literals; names are refused (no DNS, so never an open relay);
- a proxy client carries only its own pool's targets (checked again at the edge);
- nothing here does I/O; the inputs are Gateways.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raven.errors import ValidationError
from raven.model import PROXY, Endpoint, Gateway
from raven.settings import PROXY_SERVER_PORT

DEFAULT_KUBELET_PORTS = frozenset({10250, 10255})
# The server-facing (CONNECT) port (OpenYurt's DefaultProxyServerSecurePort): the settings
# root's default, written once there (ProxySettings.server_port); named here for the callers.
SERVER_PORT = PROXY_SERVER_PORT
SERVER = "server"
CLIENT = "client"
NONE = "none"


def is_public(gw: Gateway) -> bool:
    if gw.spec.expose_type:
        return True
    return not any(e.under_nat for e in gw.spec.endpoints)


def active_proxies(gw: Gateway) -> tuple[Endpoint, ...]:
    return tuple(e for e in gw.status.active_endpoints if e.type == PROXY and e.node_name)


def allowed_ports(gw: Gateway) -> frozenset[int]:
    """The ports proxyConfig names, or the kubelet's 10250 and 10255 when it names none."""
    cfg = gw.spec.proxy_config
    ports: set[int] = set()
    for text in ((cfg.http_port, cfg.https_port) if cfg is not None else ()):
        for part in text.split(","):
            part = part.strip()
            if part.isdigit() and 0 < int(part) < 65536:
                ports.add(int(part))
    return frozenset(ports) or DEFAULT_KUBELET_PORTS


def parse_authority(authority: str) -> tuple[str, int] | None:
    """(canonical IP, port) of 'IP:port' or '[IPv6]:port'; None for anything else (names too)."""
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 literal must be bracketed
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


@dataclass(frozen=True)
class Decision:
    ok: bool
    status: int  # the HTTP status to answer: 200, 400, 403, 503
    reason: str
    pool: str = ""
    node: str = ""


@dataclass(frozen=True)
class View:
    """What one proxy end may carry: target IP -> (pool, node); pool -> ports."""

    targets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    ports: Mapping[str, frozenset[int]] = field(default_factory=dict)
    clients: Mapping[str, str] = field(default_factory=dict)  # proxy client node -> its pool

    def check(self, authority: str) -> Decision:
        parsed = parse_authority(authority)
        if parsed is None:
            return Decision(False, 400, f"{authority[:80]!r} is not IP:port (names are not "
                            "resolved by the proxy)")
        ip, port = parsed
        hit = self.targets.get(ip)
        if hit is None:
            return Decision(False, 403, f"{ip} is not a node of a pool served by a proxy client")
        pool, node = hit
        if port not in self.ports.get(pool, DEFAULT_KUBELET_PORTS):
            allowed = ", ".join(str(p) for p in sorted(self.ports.get(pool, ())))
            return Decision(False, 403, f"port {port} of node {node} is not a kubelet port of "
                            f"pool {pool} (allowed: {allowed})", pool, node)
        return Decision(True, 200, f"node {node} of pool {pool}", pool, node)


@dataclass(frozen=True)
class ServerAddress:
    node: str
    host: str
    port: int


@dataclass(frozen=True)
class ProxyPlan:
    role: str = NONE  # server, client or none
    node: str = ""
    pool: str = ""
    node_ip: str = ""
    tunnel_port: int = 0  # server: the agent-facing port it listens on
    servers: tuple[ServerAddress, ...] = ()  # client: where to dial
    view: View = field(default_factory=View)
    reasons: tuple[str, ...] = ()


def parse_gateways(objs: Iterable[Mapping[str, Any] | Gateway]) -> list[Gateway]:
    out = []
    for obj in objs:
        if isinstance(obj, Gateway):
            out.append(obj)
            continue
        try:
            out.append(Gateway.from_k8s(obj))
        except ValidationError:
            continue  # the controller reports it on the object
    return sorted(out, key=lambda g: g.name)


def cluster_view(gateways: Iterable[Gateway]) -> View:
    """Every target the proxy servers carry: nodes of NAT'd pools with an active proxy endpoint."""
    targets: dict[str, tuple[str, str]] = {}
    ports: dict[str, frozenset[int]] = {}
    clients: dict[str, str] = {}
    for gw in gateways:
        proxies = active_proxies(gw)
        if is_public(gw) or not proxies:
            continue
        ports[gw.name] = allowed_ports(gw)
        for ep in proxies:
            clients.setdefault(ep.node_name, gw.name)
        for info in gw.status.nodes:
            if info.private_ip:
                try:
                    ip = str(ipaddress.ip_address(info.private_ip))
                except ValueError:
                    continue
                targets.setdefault(ip, (gw.name, info.node_name))
    return View(targets, ports, clients)


def server_addresses(gateways: Iterable[Gateway]) -> tuple[ServerAddress, ...]:
    """Where proxy clients dial: the active proxy endpoints of public pools, at their public
    address (publicIP filled by the controller) and exposed port (publicPort, else port)."""
    out = []
    for gw in gateways:
        if not is_public(gw):
            continue
        for ep in active_proxies(gw):
            if ep.public_ip:
                out.append(ServerAddress(ep.node_name, ep.public_ip,
                                         ep.public_port or ep.effective_port))
    return tuple(out)


def plan_proxy(gateways: Iterable[Gateway], node: str) -> ProxyPlan:
    gws = sorted(gateways, key=lambda g: g.name)
    for gw in gws:
        if not any(ep.node_name == node for ep in active_proxies(gw)):
            continue
        ep = next(ep for ep in active_proxies(gw) if ep.node_name == node)
        ip = next((n.private_ip for n in gw.status.nodes if n.node_name == node), "")
        view = cluster_view(gws)
        if is_public(gw):
            return ProxyPlan(SERVER, node, gw.name, ip, ep.effective_port, (), view,
                             (f"{node} is an active proxy endpoint of public pool {gw.name}",))
        own = View({ip_: t for ip_, t in view.targets.items() if t[0] == gw.name},
                   {gw.name: view.ports.get(gw.name, DEFAULT_KUBELET_PORTS)},
                   {n: p for n, p in view.clients.items() if p == gw.name})
        servers = server_addresses(gws)
        why = (f"{node} is an active proxy endpoint of NAT'd pool {gw.name}; "
               f"{len(servers)} proxy server(s) to dial")
        return ProxyPlan(CLIENT, node, gw.name, ip, 0, servers, own, (why,))
    return ProxyPlan(NONE, node, reasons=(f"{node} is no active proxy endpoint",))


def proxy_for(gateways: Iterable[Mapping[str, Any] | Gateway], target_ip: str,
              server_port: int = SERVER_PORT) -> list[tuple[str, int]]:
    """For the API server: the proxy servers (InternalIP, server-facing port) through which
    `target_ip` is reached, or [] when the node is dialled directly (its pool is public, has no
    proxy client, or it is in no pool)."""
    gws = parse_gateways(gateways)
    try:
        ip = str(ipaddress.ip_address(target_ip))
    except ValueError:
        return []
    if ip not in cluster_view(gws).targets:
        return []
    out = []
    for gw in gws:
        if not is_public(gw):
            continue
        private = {n.node_name: n.private_ip for n in gw.status.nodes}
        for ep in active_proxies(gw):
            if private.get(ep.node_name):
                out.append((private[ep.node_name], server_port))
    return out
