"""raven.model: parsing, rendering, conversion and every validation rule (table-driven)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.errors import ValidationError
from raven.model import (
    V1ALPHA1,
    V1BETA1,
    Endpoint,
    FrozenMap,
    Gateway,
    GatewaySpec,
    GatewayStatus,
    Network,
    Node,
    NodeInfo,
    TunnelConfig,
    convert_gateway,
    fleet_problems,
    gateway_problems,
)

# A Gateway as OpenYurt's controllers write it (Go JSON: omitempty, capital-R Replicas).
OPENYURT_V1BETA1: dict[str, Any] = {
    "apiVersion": "raven.openyurt.io/v1beta1",
    "kind": "Gateway",
    "metadata": {"name": "gw-hz", "resourceVersion": "42", "uid": "u-1",
                 "creationTimestamp": "2024-01-01T00:00:00Z"},
    "spec": {
        "nodeSelector": {"matchLabels": {"raven.openyurt.io/gateway": "gw-hz"}},
        "proxyConfig": {"Replicas": 1, "proxyHTTPPort": "10255,9445",
                        "proxyHTTPSPort": "10250,9100"},
        "tunnelConfig": {"Replicas": 1},
        "endpoints": [
            {"nodeName": "hz-1", "type": "tunnel", "port": 4500, "underNAT": True,
             "natType": "Symmetric", "publicIP": "203.0.113.7", "publicPort": 31000,
             "config": {"k": "v"}},
            {"nodeName": "hz-1", "type": "proxy", "port": 10262, "underNAT": True},
        ],
        "exposeType": "",
    },
    "status": {
        "nodes": [{"nodeName": "hz-1", "privateIP": "192.168.0.1",
                   "subnets": ["10.244.1.0/24"]}],
        "activeEndpoints": [{"nodeName": "hz-1", "type": "tunnel", "port": 4500,
                             "underNAT": True, "publicIP": "203.0.113.7",
                             "config": {"public-key": "abc="}}],
    },
}

OPENYURT_V1ALPHA1: dict[str, Any] = {
    "apiVersion": "raven.openyurt.io/v1alpha1",
    "kind": "Gateway",
    "metadata": {"name": "gw-old"},
    "spec": {
        "endpoints": [{"nodeName": "old-1", "underNAT": False, "publicIP": "198.51.100.9",
                       "config": {"x": "y"}}],
        "exposeType": "LoadBalancer",
    },
    "status": {
        "nodes": [{"nodeName": "old-1", "privateIP": "10.0.0.1", "subnets": ["10.1.0.0/24"]}],
        "activeEndpoint": {"nodeName": "old-1", "publicIP": "198.51.100.9"},
    },
}


def valid_gateway(**spec: Any) -> dict[str, Any]:
    obj = {
        "apiVersion": V1BETA1, "kind": "Gateway", "metadata": {"name": "gw-hz"},
        "spec": {"endpoints": [{"nodeName": "hz-1", "type": "tunnel", "port": 4500},
                               {"nodeName": "hz-2", "type": "tunnel"}]},
    }
    obj["spec"].update(spec)
    return obj


# ---------------------------------------------------------------------------------------------
# Parsing and rendering


def test_openyurt_v1beta1_parses_and_round_trips_unchanged() -> None:
    gw = Gateway.from_k8s(OPENYURT_V1BETA1)
    assert gw.name == "gw-hz"
    assert gw.spec.tunnel_config == TunnelConfig(replicas=1)
    assert gw.spec.proxy_config is not None and gw.spec.proxy_config.http_port == "10255,9445"
    first = gw.spec.endpoints[0]
    assert (first.node_name, first.type, first.port, first.under_nat, first.nat_type,
            first.public_ip, first.public_port) == (
        "hz-1", "tunnel", 4500, True, "Symmetric", "203.0.113.7", 31000)
    assert first.config == {"k": "v"}
    assert gw.status.nodes == (NodeInfo("hz-1", "192.168.0.1", ("10.244.1.0/24",)),)
    assert gw.status.active_endpoints[0].public_key == "abc="
    rendered = gw.to_k8s()
    expected = copy.deepcopy(OPENYURT_V1BETA1)
    del expected["spec"]["exposeType"]  # "" is omitted, as Go's omitempty does
    assert rendered == expected
    assert gateway_problems(OPENYURT_V1BETA1) == []


def test_unknown_fields_survive_a_round_trip_at_every_level() -> None:
    obj = copy.deepcopy(OPENYURT_V1BETA1)
    obj["futureTop"] = {"a": 1}
    obj["metadata"]["labels"] = {"team": "edge"}
    obj["spec"]["futureSpec"] = [1, 2]
    obj["spec"]["tunnelConfig"]["mode"] = "x"
    obj["spec"]["proxyConfig"]["extra"] = True
    obj["spec"]["endpoints"][0]["priority"] = 7
    obj["status"]["nodes"][0]["zone"] = "a"
    obj["status"]["activeEndpoints"][0]["since"] = "t"
    obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "R",
                                    "observedGeneration": 3}]
    obj["status"]["futureStatus"] = "s"
    rendered = Gateway.from_k8s(obj).to_k8s()
    for path in (("futureTop",), ("metadata", "labels"), ("spec", "futureSpec"),
                 ("spec", "tunnelConfig", "mode"), ("spec", "proxyConfig", "extra"),
                 ("status", "futureStatus")):
        a, b = rendered, obj
        for key in path:
            a, b = a[key], b[key]
        assert a == b, path
    assert rendered["spec"]["endpoints"][0]["priority"] == 7
    assert rendered["status"]["nodes"][0]["zone"] == "a"
    assert rendered["status"]["activeEndpoints"][0]["since"] == "t"
    assert rendered["status"]["conditions"][0]["observedGeneration"] == 3
    assert Gateway.from_k8s(rendered) == Gateway.from_k8s(obj)


def test_models_are_hashable_and_compare_by_value() -> None:
    a = Gateway.from_k8s(OPENYURT_V1BETA1)
    b = Gateway.from_k8s(copy.deepcopy(OPENYURT_V1BETA1))
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1


def test_frozen_map_cannot_be_changed_through_what_it_returns() -> None:
    m = FrozenMap({"a": {"b": 1}})
    inner = m["a"]
    inner["b"] = 2
    assert m["a"] == {"b": 1}


def test_v1alpha1_is_converted_the_way_openyurt_converts_it() -> None:
    gw = Gateway.from_k8s(OPENYURT_V1ALPHA1)
    assert gw.spec.tunnel_config == TunnelConfig(replicas=1)
    assert gw.spec.proxy_config is not None and gw.spec.proxy_config.replicas == 1
    ep = gw.spec.endpoints[0]
    assert (ep.type, ep.port, ep.public_ip, ep.config) == (
        "tunnel", 4500, "198.51.100.9", {"x": "y"})
    assert [e.node_name for e in gw.status.active_endpoints] == ["old-1"]
    assert gw.status.active_endpoints[0].type == "tunnel"
    beta = convert_gateway(OPENYURT_V1ALPHA1, "v1beta1")
    assert beta["apiVersion"] == V1BETA1
    assert beta["spec"]["tunnelConfig"] == {"Replicas": 1}
    assert beta["spec"]["endpoints"][0]["port"] == 4500
    assert beta["status"]["activeEndpoints"][0]["nodeName"] == "old-1"
    assert gateway_problems(beta) == []


def test_v1beta1_converts_to_v1alpha1_with_a_single_active_endpoint() -> None:
    alpha = convert_gateway(OPENYURT_V1BETA1, V1ALPHA1)
    assert alpha["apiVersion"] == V1ALPHA1
    assert "tunnelConfig" not in alpha["spec"] and "proxyConfig" not in alpha["spec"]
    assert all("type" not in e and "port" not in e for e in alpha["spec"]["endpoints"])
    assert alpha["status"]["activeEndpoint"]["nodeName"] == "hz-1"
    assert "activeEndpoints" not in alpha["status"]
    assert alpha["metadata"] == OPENYURT_V1BETA1["metadata"]
    back = convert_gateway(alpha, "raven.openyurt.io/v1beta1")
    assert back["status"]["activeEndpoints"][0]["nodeName"] == "hz-1"


def test_converting_to_the_same_version_is_an_unchanged_copy() -> None:
    out = convert_gateway(OPENYURT_V1BETA1, V1BETA1)
    assert out == OPENYURT_V1BETA1 and out is not OPENYURT_V1BETA1


def test_converting_to_an_unknown_version_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match=r"v2.*use one of"):
        convert_gateway(OPENYURT_V1BETA1, "v2")


def test_from_k8s_refuses_wrong_types_with_every_problem() -> None:
    obj = valid_gateway(tunnelConfig={"Replicas": "one"})
    obj["spec"]["endpoints"][0]["underNAT"] = "yes"
    with pytest.raises(ValidationError) as caught:
        Gateway.from_k8s(obj)
    text = str(caught.value)
    assert 'spec.tunnelConfig.Replicas: "one" is a string; it must be an integer' in text
    assert 'spec.endpoints[0].underNAT: "yes" is a string; it must be true or false' in text


def test_tunnel_replicas_defaults_to_one() -> None:
    assert GatewaySpec().tunnel_replicas == 1
    assert GatewaySpec(tunnel_config=TunnelConfig(0)).tunnel_replicas == 1
    assert GatewaySpec(tunnel_config=TunnelConfig(3)).tunnel_replicas == 3


def test_endpoint_default_ports() -> None:
    assert Endpoint("a").effective_port == 4500
    assert Endpoint("a", type="proxy").effective_port == 10262
    assert Endpoint("a", port=51820).effective_port == 51820


# ---------------------------------------------------------------------------------------------
# Validation: every rule, one row each. (mutation, expected message fragment)


def _endpoint(i: int, **fields: Any):  # type: ignore[no-untyped-def]
    def mutate(obj: dict[str, Any]) -> None:
        obj["spec"]["endpoints"][i].update(fields)
    return mutate


def _spec(**fields: Any):  # type: ignore[no-untyped-def]
    def mutate(obj: dict[str, Any]) -> None:
        obj["spec"].update(fields)
    return mutate


def _top(**fields: Any):  # type: ignore[no-untyped-def]
    def mutate(obj: dict[str, Any]) -> None:
        obj.update(fields)
    return mutate


def _status(**fields: Any):  # type: ignore[no-untyped-def]
    def mutate(obj: dict[str, Any]) -> None:
        obj["status"] = fields
    return mutate


INVALID = [
    ("empty nodeName", _endpoint(1, nodeName=""),
     "Gateway gw-hz: spec.endpoints[1].nodeName: is empty; name the node"),
    ("publicIP not an IP", _endpoint(1, publicIP="1.2.3"),
     'Gateway gw-hz: spec.endpoints[1].publicIP: "1.2.3" is not an IP address; use an IPv4 or '
     "IPv6 address or leave it empty"),
    ("bad type", _endpoint(0, type="vpn"),
     'Gateway gw-hz: spec.endpoints[0].type: "vpn" is not an endpoint type; use tunnel or proxy'),
    ("missing type", _endpoint(0, type=None),
     'spec.endpoints[0].type: "" is not an endpoint type'),
    ("bad exposeType", _spec(exposeType="NodePort"),
     'Gateway gw-hz: spec.exposeType: "NodePort" is not an expose type; use PublicIP, '
     "LoadBalancer or leave it empty"),
    ("underNAT disagrees", _endpoint(1, underNAT=True),
     "Gateway gw-hz: spec.endpoints[1].underNAT: is true but spec.endpoints[0] says false; "
     "every endpoint of a Gateway must agree on underNAT"),
    ("exposed under NAT",
     lambda o: (o["spec"].update(exposeType="PublicIP"),
                [e.update(underNAT=True) for e in o["spec"]["endpoints"]]),
     "Gateway gw-hz: spec.endpoints[0].underNAT: is true but the Gateway is exposed (exposeType "
     "PublicIP); set underNAT to false or clear exposeType"),
    ("negative tunnel replicas", _spec(tunnelConfig={"Replicas": -1}),
     "Gateway gw-hz: spec.tunnelConfig.Replicas: -1 is out of range; use an integer 0 or more"),
    ("negative proxy replicas", _spec(proxyConfig={"Replicas": -2}),
     "Gateway gw-hz: spec.proxyConfig.Replicas: -2 is out of range"),
    ("proxy replicas above proxy endpoints", _spec(proxyConfig={"Replicas": 2}),
     "Gateway gw-hz: spec.proxyConfig.Replicas: 2 is more than the 0 proxy endpoint(s) in "
     "spec.endpoints; lower it or add proxy endpoints"),
    ("duplicate endpoint", _endpoint(1, nodeName="hz-1"),
     "Gateway gw-hz: spec.endpoints[1]: node 'hz-1' is already a tunnel endpoint at "
     "spec.endpoints[0]; list each node once per type"),
    ("port out of range", _endpoint(0, port=70000),
     "Gateway gw-hz: spec.endpoints[0].port: 70000 is out of range; use an integer between 0 "
     "and 65535"),
    ("port as a string", _endpoint(0, port="4500"),
     'spec.endpoints[0].port: "4500" is a string; it must be an integer'),
    ("config value not a string", _endpoint(0, config={"mtu": 1400}),
     "spec.endpoints[0].config.mtu: 1400 is an integer; every value must be a string"),
    ("endpoints not a list", _spec(endpoints={"nodeName": "x"}),
     "Gateway gw-hz: spec.endpoints: is a map; it must be a list"),
    ("endpoint not a map", _spec(endpoints=["hz-1"]),
     "Gateway gw-hz: spec.endpoints[0]: is a string; each endpoint must be a map"),
    ("wrong apiVersion", _top(apiVersion="raven.openyurt.io/v2"),
     'Gateway gw-hz: apiVersion: "raven.openyurt.io/v2" is not a Gateway version; use '
     "raven.openyurt.io/v1beta1"),
    ("wrong kind", _top(kind="Gatway"),
     "Gateway gw-hz: kind: \"Gatway\" is not 'Gateway'"),
    ("missing name", _top(metadata={}),
     "Gateway (unnamed): metadata.name: is missing; give the Gateway a name"),
    ("bad name", _top(metadata={"name": "GW_hz"}),
     'Gateway GW_hz: metadata.name: "GW_hz" is not a DNS-1123 subdomain'),
    ("status subnet not a CIDR",
     _status(nodes=[{"nodeName": "hz-1", "privateIP": "10.0.0.1", "subnets": ["10.244.1.1/24"]}]),
     'Gateway gw-hz: status.nodes[0].subnets[0]: "10.244.1.1/24" is not a CIDR network'),
    ("status privateIP not an IP",
     _status(nodes=[{"nodeName": "hz-1", "privateIP": "node-1", "subnets": []}]),
     'Gateway gw-hz: status.nodes[0].privateIP: "node-1" is not an IP address'),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_every_validation_rule(mutate: Any, expected: str) -> None:
    obj = valid_gateway()
    assert gateway_problems(obj) == []
    mutate(obj)
    problems = gateway_problems(obj)
    assert any(expected in p for p in problems), problems


VALID = [
    ("one node as tunnel and proxy",
     _spec(endpoints=[{"nodeName": "a", "type": "tunnel"}, {"nodeName": "a", "type": "proxy"}])),
    ("more than one tunnel replica (OpenYurt caps at 1; we allow more)",
     _spec(tunnelConfig={"Replicas": 2})),
    ("exposed and not under NAT", _spec(exposeType="LoadBalancer")),
    ("IPv6 publicIP", _endpoint(0, publicIP="2001:db8::1")),
    ("no endpoints at all", _spec(endpoints=[])),
    ("proxy replicas 1 with no proxy endpoint (OpenYurt checks only above 1)",
     _spec(proxyConfig={"Replicas": 1})),
    ("v1alpha1", lambda o: o.clear() or o.update(copy.deepcopy(OPENYURT_V1ALPHA1))),
]


@pytest.mark.parametrize("mutate", [m for _, m in VALID], ids=[i for i, _ in VALID])
def test_valid_gateways(mutate: Any) -> None:
    obj = valid_gateway()
    mutate(obj)
    assert gateway_problems(obj) == []


def test_every_problem_is_listed_not_only_the_first() -> None:
    obj = valid_gateway(exposeType="x")
    obj["spec"]["endpoints"][0].update(publicIP="nope", type="x")
    obj["spec"]["endpoints"][1].update(nodeName="")
    assert len(gateway_problems(obj)) == 4


@pytest.mark.parametrize("doc", [None, 3, "text", [1, 2], {"kind": "Gateway"},
                                 {"kind": "Gateway", "metadata": [1]},
                                 {"kind": "Gateway", "metadata": {"name": 7}, "spec": []},
                                 {"kind": "Gateway", "metadata": {"name": "g"}, "status": "x"}])
def test_non_gateway_documents_are_problems_not_exceptions(doc: Any) -> None:
    problems = gateway_problems(doc)
    assert problems and all(p.startswith("Gateway") for p in problems)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["nodeName", "type", "port", "underNAT", "publicIP", "config",
                         "Replicas", "subnets", "x", "name", "labels", "addresses",
                         "conditions", "podCIDRs", "endpoints", "nodes"]), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(doc=JSON)
def test_validation_never_raises_on_any_document(doc: Any) -> None:
    assert all(isinstance(p, str) for p in gateway_problems(doc))
    assert all(isinstance(p, str) for p in gateway_problems({"kind": "Gateway", "metadata": doc}))


@settings(max_examples=300, deadline=None)
@given(spec=JSON, status=JSON)
def test_validation_never_raises(spec: Any, status: Any) -> None:
    obj = {"apiVersion": V1BETA1, "kind": "Gateway", "metadata": {"name": "g"},
           "spec": spec, "status": status}
    problems = gateway_problems(obj)
    assert all(p.startswith("Gateway g: ") for p in problems)
    if not problems:
        assert Gateway.from_k8s(obj).name == "g"


# ---------------------------------------------------------------------------------------------
# Across Gateways


def _gw(name: str, nodes: list[tuple[str, str]], endpoints: tuple[str, ...] = ()) -> Gateway:
    return Gateway(
        name,
        spec=GatewaySpec(endpoints=tuple(Endpoint(n) for n in endpoints)),
        status=GatewayStatus(nodes=tuple(NodeInfo(n, "10.0.0.1", (s,)) for n, s in nodes)),
    )


def test_fleet_without_conflicts_has_no_problems() -> None:
    gws = [_gw("a", [("a1", "10.244.0.0/24")], ("a1",)), _gw("b", [("b1", "10.244.1.0/24")])]
    assert fleet_problems(gws) == []


def test_fleet_node_named_by_two_gateways() -> None:
    gws = [_gw("a", [("n1", "10.244.0.0/24")]), _gw("b", [], ("n1",))]
    assert fleet_problems(gws) == [
        "Gateway b: spec.endpoints[0]: node 'n1' also belongs to Gateway a; a node can be in one "
        "pool only (fix the endpoints or the node label raven.openyurt.io/gateway)"
    ]


def test_fleet_node_label_conflicting_with_another_gateway() -> None:
    gws = [_gw("a", [], ("n1",))]
    node = Node("n1", labels=FrozenMap({"raven.openyurt.io/gateway": "b"}))
    problems = fleet_problems(gws, [node])
    assert len(problems) == 1 and "node 'n1' also belongs to Gateway a" in problems[0]


def test_fleet_overlapping_subnets_between_pools() -> None:
    gws = [_gw("a", [("a1", "10.244.0.0/16")]), _gw("b", [("b1", "10.244.7.0/24")]),
           _gw("c", [("c1", "10.245.0.0/24")])]
    assert fleet_problems(gws) == [
        "Gateway b: status.nodes subnets: 10.244.7.0/24 overlaps 10.244.0.0/16 of Gateway a; "
        "pod subnets of different pools must not overlap (give the nodes distinct podCIDRs)"
    ]


def test_fleet_same_subnet_twice_in_one_pool_is_fine() -> None:
    gws = [_gw("a", [("a1", "10.244.0.0/24"), ("a2", "10.244.0.0/24")])]
    assert fleet_problems(gws) == []


def test_fleet_endpoint_naming_a_missing_node() -> None:
    gws = [_gw("a", [], ("a1", "a9"))]
    problems = fleet_problems(gws, [Node("a1")])
    assert problems == ["Gateway a: spec.endpoints[1].nodeName: no node named 'a9'; name an "
                        "existing node"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 255), st.integers(16, 26)),
                max_size=12))
def test_fleet_overlap_matches_brute_force(entries: list[tuple[int, int, int]]) -> None:
    import ipaddress
    subnets = [(f"p{pool}", str(ipaddress.ip_network(f"10.{third}.0.0/{plen}", strict=False)))
               for pool, third, plen in entries]
    gws = [_gw(p, [(f"{p}-{i}", s) for i, (q, s) in enumerate(subnets) if q == p])
           for p in sorted({p for p, _ in subnets})]
    brute = any(
        pa != pb and ipaddress.ip_network(sa).overlaps(ipaddress.ip_network(sb))
        for pa, sa in subnets for pb, sb in subnets
    )
    assert bool(fleet_problems(gws)) == brute


# ---------------------------------------------------------------------------------------------
# Node


NODE = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {"name": "hz-1", "labels": {"raven.openyurt.io/gateway": "gw-hz"},
                 "annotations": {"raven.openyurt.io/wireguard-public-key": "k="},
                 "uid": "x"},
    "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
    "status": {"addresses": [{"type": "Hostname", "address": "hz-1"},
                             {"type": "InternalIP", "address": "192.168.0.1"},
                             {"type": "ExternalIP", "address": "203.0.113.1"}],
               "conditions": [{"type": "MemoryPressure", "status": "False"},
                              {"type": "Ready", "status": "True"}]},
}


def test_node_facts() -> None:
    node = Node.from_k8s(NODE)
    assert node.name == "hz-1"
    assert node.internal_ips == ("192.168.0.1",) and node.internal_ip == "192.168.0.1"
    assert node.external_ip == "203.0.113.1"
    assert node.pod_cidrs == ("10.244.1.0/24", "fd00:1::/64")
    assert node.gateway == "gw-hz" and node.public_key == "k=" and node.ready


def test_node_not_ready_and_unknown() -> None:
    obj = copy.deepcopy(NODE)
    obj["status"]["conditions"][1]["status"] = "Unknown"
    assert not Node.from_k8s(obj).ready


def test_node_round_trip_keeps_other_fields() -> None:
    node = Node.from_k8s(NODE)
    rendered = node.to_k8s()
    assert Node.from_k8s(rendered) == node
    assert rendered["metadata"]["uid"] == "x"
    assert {"type": "Hostname", "address": "hz-1"} in rendered["status"]["addresses"]
    assert {"type": "MemoryPressure", "status": "False"} in rendered["status"]["conditions"]


@settings(max_examples=100, deadline=None)
@given(metadata=JSON, spec=JSON, status=JSON)
def test_node_parsing_never_raises_anything_but_validation_errors(metadata: Any, spec: Any,
                                                                  status: Any) -> None:
    try:
        Node.from_k8s({"metadata": metadata, "spec": spec, "status": status})
    except ValidationError as exc:
        assert exc.problems


def test_node_without_name_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"metadata\.name"):
        Node.from_k8s({"metadata": {}})


def test_network_finds_pools() -> None:
    net = Network.of([_gw("b", [("b1", "10.0.1.0/24")]), _gw("a", [("a1", "10.0.0.0/24")])])
    assert [g.name for g in net.gateways] == ["a", "b"]
    assert net.pool_of("b1") is net.gateway("b")
    assert net.pool_of("zz") is None


NAME = st.builds(lambda a, n: f"{a}-{n}", st.sampled_from(["gw", "hz", "node", "a.b"]),
                 st.integers(0, 999))
ENDPOINTS = st.builds(
    Endpoint, node_name=NAME, type=st.sampled_from(["tunnel", "proxy"]),
    port=st.integers(0, 65535), under_nat=st.booleans(), nat_type=st.sampled_from(["", "cone"]),
    public_ip=st.sampled_from(["", "203.0.113.1", "2001:db8::1"]),
    public_port=st.integers(0, 65535),
    config=st.dictionaries(st.sampled_from(["public-key", "k"]), st.text(max_size=4)).map(
        FrozenMap),
)
GATEWAYS = st.builds(
    Gateway, name=NAME,
    spec=st.builds(GatewaySpec, tunnel_config=st.none() | st.builds(TunnelConfig,
                                                                    st.integers(0, 5)),
                   endpoints=st.lists(ENDPOINTS, max_size=4).map(tuple),
                   expose_type=st.sampled_from(["", "PublicIP"])),
    status=st.builds(GatewayStatus,
                     nodes=st.lists(st.builds(NodeInfo, NAME, st.sampled_from(["", "10.0.0.1"]),
                                              st.lists(st.sampled_from(["10.1.0.0/24",
                                                                        "fd00::/64"]),
                                                       max_size=2).map(tuple)),
                                    max_size=3).map(tuple),
                     active_endpoints=st.lists(ENDPOINTS, max_size=2).map(tuple),
                     node_count=st.none() | st.integers(0, 9)),
    metadata=st.builds(lambda n: FrozenMap({"name": n}), NAME),
)


@settings(max_examples=200, deadline=None)
@given(GATEWAYS)
def test_render_then_parse_is_the_identity(gw: Gateway) -> None:
    gw = replace(gw, metadata=FrozenMap({"name": gw.name}))
    assert Gateway.from_k8s(gw.to_k8s()) == gw
    assert Gateway.from_k8s(convert_gateway(gw.to_k8s(), "v1beta1")) == gw


def test_frozen_map_hash_ignores_key_order_and_tolerates_mixed_keys() -> None:
    a = FrozenMap({"x": {1: "a", "b": [1, {"c": 2}]}, "y": 1})
    b = FrozenMap({"y": 1, "x": {"b": [1, {"c": 2}], 1: "a"}})
    assert a == b and hash(a) == hash(b)
    assert FrozenMap({"a": 1}) == {"a": 1}
