"""The controller keeps the proxy's OpenYurt objects on the embedded API server: proxy endpoints
in Gateway status, the Service x-raven-proxy-internal-svc and the ConfigMap edge-tunnel-nodes.
Oracle: kubectl reads what the controller wrote."""

from __future__ import annotations

import json
from typing import Any

from kube_support import kubectl, wait_for
from test_controller import Cluster, cluster, node_obj  # noqa: F401  (fixture)

from raven.kube.client import GATEWAYS, NODES


def _get(c: Cluster, *args: str) -> dict[str, Any] | None:
    proc = kubectl(c.server.kubeconfig, "get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_proxy_endpoints_service_and_dns_records(cluster: Cluster) -> None:  # noqa: F811
    c = cluster
    c.kube.create(NODES, node_obj("ed-1", "198.18.2.10", "10.244.20.0/24", "gw-ed"))
    c.kube.create(NODES, node_obj("ed-2", "198.18.2.11", "10.244.21.0/24", "gw-ed"))
    for n in ("hz-1", "hz-2", "ed-1"):
        c.beat(n)
    c.kube.create(GATEWAYS, {
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": "gw-hz"},
        "spec": {"proxyConfig": {"Replicas": 1, "proxyHTTPSPort": "10250,9445"},
                 "endpoints": [{"nodeName": "hz-1", "type": "tunnel"},
                               {"nodeName": "hz-2", "type": "proxy"},
                               {"nodeName": "hz-1", "type": "proxy"}]}})
    c.kube.create(GATEWAYS, {
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": "gw-ed"},
        "spec": {"proxyConfig": {"Replicas": 1},
                 "endpoints": [{"nodeName": "ed-1", "type": "proxy", "underNAT": True}]}})

    def proxies(name: str) -> list[str]:
        status = c.gw(name).get("status") or {}
        return [e["nodeName"] for e in status.get("activeEndpoints") or []
                if e.get("type") == "proxy"]

    wait_for(lambda: proxies("gw-hz") == ["hz-2"] and proxies("gw-ed") == ["ed-1"],
             what="proxy endpoints elected")
    wait_for(lambda: _get(c, "configmap", "-n", "kube-system", "edge-tunnel-nodes") is not None,
             what="the DNS ConfigMap")
    svc = _get(c, "service", "-n", "kube-system", "x-raven-proxy-internal-svc")
    assert svc is not None
    assert sorted((p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]) == [
        ("https-10250", 10250, 10263), ("https-9445", 9445, 10263)]
    cluster_ip = svc["spec"].get("clusterIP") or ""
    proxy_ip = cluster_ip if cluster_ip and cluster_ip != "None" else "192.0.2.2"
    records = _get(c, "configmap", "-n", "kube-system", "edge-tunnel-nodes")["data"][
        "tunnel-nodes"].splitlines()
    assert f"{proxy_ip}\ted-1" in records and f"{proxy_ip}\ted-2" in records
    assert "192.0.2.1\thz-1" in records and "203.0.113.1\tbj-1" in records
    eps = _get(c, "endpoints", "-n", "kube-system", "x-raven-proxy-internal-svc")
    if eps is not None:  # only when the API server serves Endpoints
        assert eps["subsets"][0]["addresses"] == [{"ip": "192.0.2.2", "nodeName": "hz-2"}]
    # The proxy server's node fails: the other proxy endpoint takes over, the objects follow.
    c.beat("hz-2", ago=3600)
    wait_for(lambda: proxies("gw-hz") == ["hz-1"], what="proxy failover to hz-1")
    if eps is not None:
        wait_for(lambda: (_get(c, "endpoints", "-n", "kube-system", "x-raven-proxy-internal-svc")
                          or {}).get("subsets", [{}])[0].get("addresses")
                 == [{"ip": "192.0.2.1", "nodeName": "hz-1"}], what="Endpoints updated")
    elif not (cluster_ip and cluster_ip != "None"):
        wait_for(lambda: "192.0.2.1\ted-1" in _get(c, "configmap", "-n", "kube-system",
                                                   "edge-tunnel-nodes")["data"]["tunnel-nodes"],
                 what="DNS records follow the new proxy server")
