"""Proxy endpoints: election (raven.election.elect_proxies), their place in the Gateway status,
and the pure plan and allow-list of raven.proxy.plan."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from raven import constants
from raven.election import elect_proxies
from raven.gateway_status import compute_status
from raven.model import Endpoint, Gateway, GatewaySpec, GatewayStatus, Node, ProxyConfig
from raven.proxy.plan import (
    CLIENT,
    NONE,
    SERVER,
    parse_authority,
    plan_proxy,
    proxy_for,
)

NOW = 1_700_000_000.0


def node(name: str, ip: str = "192.0.2.1", pool: str | None = None, ready: bool = True) -> Node:
    return Node.from_k8s({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: pool} if pool else {}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def proxy_gw(names: list[str], replicas: int = 1, active: list[str] = ()) -> Gateway:  # type: ignore[assignment]
    return Gateway("gw", GatewaySpec(
        proxy_config=ProxyConfig(replicas=replicas),
        endpoints=tuple(Endpoint(n, "proxy") for n in names)),
        GatewayStatus(active_endpoints=tuple(Endpoint(n, "proxy") for n in active)))


NODES = {n: node(n) for n in ("a", "b", "c")}
FRESH = {n: NOW for n in NODES}


def test_first_healthy_proxies_in_spec_order_up_to_replicas() -> None:
    e = elect_proxies(proxy_gw(["a", "b", "c"], replicas=2), NODES, FRESH, NOW)
    assert e.names == ("a", "b")
    assert any("c is a healthy standby (proxyConfig.Replicas 2 reached)" in r for r in e.reasons)


def test_active_proxy_is_sticky_and_replaced_when_stale() -> None:
    g = proxy_gw(["a", "b"], active=["b"])
    assert elect_proxies(g, NODES, FRESH, NOW).names == ("b",)
    e = elect_proxies(g, NODES, {"a": NOW}, NOW)
    assert e.names == ("a",)
    assert any("proxy b is not a candidate: agent heartbeat never" in r for r in e.reasons)
    assert any("proxy b is no longer active" in r for r in e.reasons)


def test_replicas_zero_or_absent_elects_none_with_a_reason() -> None:
    e = elect_proxies(proxy_gw(["a"], replicas=0), NODES, FRESH, NOW)
    assert e.names == () and "proxyConfig.Replicas is 0" in e.reasons[0]
    absent = Gateway("gw", GatewaySpec(endpoints=(Endpoint("a", "proxy"),)))
    assert elect_proxies(absent, NODES, FRESH, NOW).names == ()


def test_tunnel_endpoints_are_not_proxy_candidates_and_vice_versa() -> None:
    g = Gateway("gw", GatewaySpec(proxy_config=ProxyConfig(replicas=1),
                                  endpoints=(Endpoint("a", "tunnel"), Endpoint("b", "proxy"))))
    assert elect_proxies(g, NODES, FRESH, NOW).names == ("b",)


def test_lost_cloud_keeps_the_active_proxy() -> None:
    e = elect_proxies(proxy_gw(["a", "b"], active=["a"]), NODES, {}, NOW)
    assert e.names == ("a",) and e.kept_stale


def test_not_ready_with_fresh_heartbeat_is_not_kept() -> None:
    nodes = {"a": node("a", ready=False), "b": node("b")}
    assert elect_proxies(proxy_gw(["a"], active=["a"]), nodes, {"a": NOW}, NOW).names == ()


@given(st.lists(st.sampled_from("abcd"), max_size=6), st.integers(0, 4),
       st.sets(st.sampled_from("abcd")), st.lists(st.sampled_from("abcd"), max_size=3))
def test_proxy_election_invariants(spec: list[str], replicas: int, fresh: set[str],
                                   active: list[str]) -> None:
    nodes = {n: node(n) for n in "abcd"}
    e = elect_proxies(proxy_gw(spec, replicas, active), nodes, {n: NOW for n in fresh}, NOW)
    assert len(e.names) <= replicas
    assert len(set(e.names)) == len(e.names)
    assert set(e.names) <= set(spec)
    if not e.kept_stale:
        assert set(e.names) <= fresh
        # sticky: a healthy previous proxy within the replicas stays
        keep = [n for n in dict.fromkeys(active) if n in fresh and n in spec][:replicas]
        assert set(keep) <= set(e.names)


def _gw_obj(name: str, endpoints: list[dict[str, Any]], replicas: int = 1,
            status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
                           "metadata": {"name": name},
                           "spec": {"endpoints": endpoints, "proxyConfig": {"Replicas": replicas},
                                    "tunnelConfig": {"Replicas": 1}}}
    if status is not None:
        obj["status"] = status
    return obj


def test_status_lists_tunnels_first_then_proxies_without_a_key() -> None:
    key = "a" * 43 + "="
    n = Node.from_k8s({**node("c1", "198.18.1.10", "gw-cloud").to_k8s(),
                       "metadata": {"name": "c1", "labels": {constants.GATEWAY_LABEL: "gw-cloud"},
                                    "annotations": {constants.ANNOTATION_PUBLIC_KEY: key}}})
    obj = _gw_obj("gw-cloud", [{"nodeName": "c1", "type": "tunnel"},
                               {"nodeName": "c1", "type": "proxy"}])
    plan = compute_status(obj, {"c1": n}, {"c1": NOW}, NOW)
    active = plan.status["activeEndpoints"]
    assert [(e["nodeName"], e["type"]) for e in active] == [("c1", "tunnel"), ("c1", "proxy")]
    assert "config" not in active[1] and active[1]["publicIP"] == "198.18.1.10"
    assert plan.elected == ("c1",) and plan.proxy_elected == ("c1",)
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    again = compute_status({**obj, "status": plan.status}, {"c1": n}, {"c1": NOW}, NOW)
    assert again.status == plan.status and again.proxy_elected == () and again.elected == ()
    lost = compute_status({**obj, "status": plan.status}, {"c1": n}, {}, NOW + 100)
    assert lost.proxy_lost == ()  # every heartbeat stale at once: kept (lost cloud)
    gone = compute_status({**obj, "status": plan.status}, {}, {}, NOW + 100)
    assert gone.proxy_lost == ("c1",) and gone.lost == ("c1",)


def test_a_proxy_only_pool_is_not_ready_for_tunnels() -> None:
    obj = _gw_obj("gw-e", [{"nodeName": "e1", "type": "proxy", "underNAT": True}])
    plan = compute_status(obj, {"e1": node("e1", pool="gw-e")}, {"e1": NOW}, NOW)
    assert [e["type"] for e in plan.status["activeEndpoints"]] == ["proxy"]
    assert plan.elected == () and plan.proxy_elected == ("e1",)
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


# -- plan and allow-list ---------------------------------------------------------------------

def cluster(edge_ports: dict[str, str] | None = None) -> list[Gateway]:
    cloud = Gateway.from_k8s(_gw_obj("gw-cloud", [{"nodeName": "c1", "type": "proxy"}], status={
        "nodes": [{"nodeName": "c1", "privateIP": "198.18.1.10", "subnets": []},
                  {"nodeName": "c2", "privateIP": "198.18.1.11", "subnets": []}],
        "activeEndpoints": [{"nodeName": "c1", "type": "proxy", "publicIP": "198.18.1.10"}]}))
    edge_obj = _gw_obj("gw-edge", [{"nodeName": "e1", "type": "proxy", "underNAT": True}],
                       status={
        "nodes": [{"nodeName": "e1", "privateIP": "198.18.2.10", "subnets": []},
                  {"nodeName": "e2", "privateIP": "198.18.2.11", "subnets": []}],
        "activeEndpoints": [{"nodeName": "e1", "type": "proxy", "underNAT": True}]})
    if edge_ports:
        edge_obj["spec"]["proxyConfig"].update(edge_ports)
    other = Gateway.from_k8s(_gw_obj("gw-far", [{"nodeName": "f1", "type": "proxy",
                                                 "underNAT": True}], status={
        "nodes": [{"nodeName": "f1", "privateIP": "198.18.3.10", "subnets": []}]}))
    return [cloud, Gateway.from_k8s(edge_obj), other]


def test_roles() -> None:
    gws = cluster()
    server = plan_proxy(gws, "c1")
    assert server.role == SERVER and server.tunnel_port == 10262 and server.node_ip == "198.18.1.10"
    client = plan_proxy(gws, "e1")
    assert client.role == CLIENT and client.pool == "gw-edge"
    assert [(s.node, s.host, s.port) for s in client.servers] == [("c1", "198.18.1.10", 10262)]
    assert plan_proxy(gws, "e2").role == NONE and plan_proxy(gws, "c2").role == NONE


def test_server_allows_only_kubelet_ports_of_proxied_pools() -> None:
    view = plan_proxy(cluster(), "c1").view
    assert view.check("198.18.2.11:10250").ok and view.check("198.18.2.10:10255").ok
    refused = {
        "198.18.2.11:22": 403,        # not a kubelet port
        "198.18.1.11:10250": 403,     # a node of the public pool: dialled directly
        "198.18.3.10:10250": 403,     # a NAT'd pool without an active proxy endpoint
        "8.8.8.8:10250": 403,         # outside the cluster
        "example.com:10250": 400,     # names are never resolved
        "198.18.2.11": 400, "198.18.2.11:0": 400, "198.18.2.11:99999": 400,
        "[::1]:10250": 403, "::1:10250": 400, "": 400,
    }
    for target, status in refused.items():
        d = view.check(target)
        assert not d.ok and d.status == status, (target, d)


def test_proxy_config_ports_replace_the_defaults() -> None:
    view = plan_proxy(cluster({"proxyHTTPPort": "10255, 9100", "proxyHTTPSPort": "10250"}),
                      "c1").view
    assert view.check("198.18.2.10:9100").ok
    assert not view.check("198.18.2.10:9101").ok


def test_a_client_carries_only_its_own_pool() -> None:
    view = plan_proxy(cluster(), "e1").view
    assert view.check("198.18.2.11:10250").ok
    assert view.check("198.18.1.11:10250").status == 403


def test_proxy_for_tells_the_api_server_direct_or_which_server() -> None:
    objs = [g.to_k8s() for g in cluster()]
    assert proxy_for(objs, "198.18.2.11") == [("198.18.1.10", 10263)]
    assert proxy_for(objs, "198.18.1.11") == []  # public pool: direct
    assert proxy_for(objs, "198.18.3.10") == []  # no proxy client: direct (will fail anyway)
    assert proxy_for(objs, "not an ip") == []
    assert proxy_for(objs, "198.18.2.11", 9443) == [("198.18.1.10", 9443)]


@given(st.text(max_size=40))
def test_parse_authority_never_raises_and_returns_ip_literals(text: str) -> None:
    parsed = parse_authority(text)
    if parsed is not None:
        import ipaddress
        ipaddress.ip_address(parsed[0])
        assert 0 < parsed[1] < 65536
