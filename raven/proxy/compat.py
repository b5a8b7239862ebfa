"""PURE: the OpenYurt-compatible objects the controller keeps for the proxy (docs/proxy.md).

- Service kube-system/x-raven-proxy-internal-svc (ClusterIP): one port per kubelet port the
  public pools' proxyConfig names (`https-<port>` from proxyHTTPSPort, `http-<port>` from
  proxyHTTPPort; 10250 and 10255 when none is named), every one targeting the proxy server's
  server-facing port;
- Endpoints of the same name: the InternalIPs (and node names) of the active proxy endpoints of
  the public pools, with the same ports;
- ConfigMap kube-system/edge-tunnel-nodes, key `tunnel-nodes`: hosts-file lines
  `<address>\\t<node>` sorted, for CoreDNS's hosts plugin: a node of a pool reached through
  the proxy resolves to the Service's ClusterIP (or, without one, the first proxy server's
  InternalIP); every other node to its own InternalIP (OpenYurt's rule when there is no proxy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raven.model import Gateway, Node
from raven.proxy.plan import active_proxies, cluster_view, is_public

NAMESPACE = "kube-system"
SERVICE_NAME = "x-raven-proxy-internal-svc"
DNS_CONFIGMAP = "edge-tunnel-nodes"
DNS_KEY = "tunnel-nodes"
LABELS = {"app": "raven", "app.kubernetes.io/managed-by": "raven-gateway-controller"}


@dataclass(frozen=True)
class CompatObjects:
    service_ports: tuple[tuple[str, int], ...]  # (name, port), all targeting the server port
    target_port: int
    addresses: tuple[tuple[str, str], ...]  # (ip, node name) of the proxy servers
    proxied: tuple[str, ...]  # nodes reached through the proxy

    def service(self, existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
        obj = dict(existing or {})
        meta = dict(obj.get("metadata") or {})
        meta.update(name=SERVICE_NAME, namespace=NAMESPACE)
        meta["labels"] = {**(meta.get("labels") or {}), **LABELS}
        spec = dict(obj.get("spec") or {})
        spec["type"] = "ClusterIP"
        spec["ports"] = [{"name": n, "protocol": "TCP", "port": p, "targetPort": self.target_port}
                         for n, p in self.service_ports]
        spec.pop("selector", None)  # Endpoints are ours, not a selector's
        obj.update(apiVersion="v1", kind="Service", metadata=meta, spec=spec)
        return obj

    def endpoints(self, existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
        obj = dict(existing or {})
        meta = dict(obj.get("metadata") or {})
        meta.update(name=SERVICE_NAME, namespace=NAMESPACE)
        meta["labels"] = {**(meta.get("labels") or {}), **LABELS}
        subsets = []
        if self.addresses:
            subsets = [{"addresses": [{"ip": ip, "nodeName": n} for ip, n in self.addresses],
                        "ports": [{"name": n, "protocol": "TCP", "port": self.target_port}
                                  for n, _ in self.service_ports]}]
        obj.update(apiVersion="v1", kind="Endpoints", metadata=meta, subsets=subsets)
        return obj

    def dns_records(self, nodes: Mapping[str, Node], cluster_ip: str) -> str:
        proxy_ip = cluster_ip if cluster_ip and cluster_ip != "None" else (
            self.addresses[0][0] if self.addresses else "")
        lines = []
        for name in sorted(nodes):
            ip = proxy_ip if name in self.proxied and proxy_ip else nodes[name].internal_ip
            if ip:
                lines.append(f"{ip}\t{name}")
        return "\n".join(sorted(lines))

    def configmap(self, records: str, existing: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
        obj = dict(existing or {})
        meta = dict(obj.get("metadata") or {})
        meta.update(name=DNS_CONFIGMAP, namespace=NAMESPACE)
        data = dict(obj.get("data") or {})
        data[DNS_KEY] = records
        obj.update(apiVersion="v1", kind="ConfigMap", metadata=meta, data=data)
        return obj


def compat_objects(gateways: Iterable[Gateway], nodes: Mapping[str, Node],
                   server_port: int) -> CompatObjects:
    gws = sorted(gateways, key=lambda g: g.name)
    ports: dict[str, int] = {}
    addresses: list[tuple[str, str]] = []
    for gw in gws:
        proxies = active_proxies(gw)
        if not is_public(gw) or not proxies:
            continue
        cfg = gw.spec.proxy_config
        named = False
        for prefix, text in (("http", cfg.http_port if cfg else ""),
                             ("https", cfg.https_port if cfg else "")):
            for part in text.split(","):
                if part.strip().isdigit() and 0 < int(part.strip()) < 65536:
                    ports.setdefault(f"{prefix}-{int(part.strip())}", int(part.strip()))
                    named = True
        if not named:
            ports.setdefault("https-10250", 10250)
            ports.setdefault("http-10255", 10255)
        for ep in proxies:
            node = nodes.get(ep.node_name)
            private = next((n.private_ip for n in gw.status.nodes
                            if n.node_name == ep.node_name), "")
            ip = private or (node.internal_ip if node is not None else "")
            if ip and (ip, ep.node_name) not in addresses:
                addresses.append((ip, ep.node_name))
    proxied = tuple(sorted(node for _, node in cluster_view(gws).targets.values()))
    return CompatObjects(tuple(sorted(ports.items())), server_port, tuple(addresses), proxied)
