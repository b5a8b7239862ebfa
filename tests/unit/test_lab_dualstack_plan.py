"""Dual-stack and IPv6 underlays in the lab, without root: validation, plan, wiring, objects.

- Bad dual-stack input is refused as Kubernetes refuses it (more than two pod networks, two of
  one family, podCIDR differing from podCIDRs[0]) or as the lab cannot build it (IPv6 pods
  below IPv6's minimum MTU, an IPv6-only pool next to an IPv4-only one), each message naming
  the pool, the node, the field and the fix.
- The plan gives every pod one address per pod network of its node, inside that network; IPv6
  underlays stay in 2001:db8::/32; IPv4-only topologies plan exactly what they always did.
- The wiring routes each pod family between nodes whatever the underlay family is.
- The probe's ICMPv6 packets are what scapy (an independent encoder) builds and reads.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest

from raven.errors import ValidationError
from raven.lab import build, cluster, kubelet, ping
from raven.lab.icmp import echo_request6, parse_reply6
from raven.lab.plan import plan_from_json, plan_lab, plan_to_json
from raven.lab.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]

DUAL = {
    "name": "ds",
    "pools": [
        {"name": "cloud", "underlay": "dual", "nodes": [
            {"name": "c1", "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"],
             "gatewayCandidate": True},
            {"name": "c2", "podCIDRs": ["fd00:10:244:1::/64", "10.244.1.0/24"]},
        ]},
        {"name": "edge", "nat": "cone", "nodes": [
            {"name": "e1", "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"],
             "gatewayCandidate": True},
            {"name": "e2", "podCIDR": "fd00:10:244:3::/64"},
        ]},
    ],
}


def node_set(path: str, value: object, doc: dict | None = None) -> dict:
    """Copy of DUAL with field `path` ('pool.node.field' as indexes and key) set."""
    out = copy.deepcopy(doc or DUAL)
    pool, node, key = path.split(".")
    out["pools"][int(pool)]["nodes"][int(node)][key] = value
    return out


def problems(doc: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_topology(doc)
    return info.value.problems


BAD = [
    ("two IPv4", node_set("0.0.podCIDRs", ["10.244.0.0/24", "10.245.0.0/24"]),
     ["pool 'cloud' node 'c1'", "'podCIDRs'", "both IPv4", "one network per family"]),
    ("two IPv6", node_set("0.0.podCIDRs", ["fd00:1::/64", "fd00:2::/64"]),
     ["node 'c1'", "both IPv6", "one IPv4 and one IPv6"]),
    ("three", node_set("0.0.podCIDRs", ["10.9.0.0/24", "fd00:9::/64", "10.8.0.0/24"]),
     ["node 'c1'", "'podCIDRs'", "3 networks", "at most two"]),
    ("empty", node_set("0.0.podCIDRs", []), ["node 'c1'", "'podCIDRs'", "an empty list"]),
    ("not a list", node_set("0.0.podCIDRs", "10.244.0.0/24"),
     ["node 'c1'", "'podCIDRs'", "must be a list", "got a string"]),
    ("entry garbage", node_set("0.0.podCIDRs", ["10.244.0.0/24", "fd00::zz/64"]),
     ["node 'c1'", "'podCIDRs[1]'", "not a valid IPv4 or IPv6 network"]),
    ("entry host bits", node_set("0.0.podCIDRs", ["10.244.0.0/24", "fd00::1/64"]),
     ["node 'c1'", "'podCIDRs[1]'", "host bits"]),
    ("podCIDR differs", node_set("0.0.podCIDR", "10.244.9.0/24"),
     ["node 'c1'", "'podCIDR'", "differs from podCIDRs[0]", "drop 'podCIDR'"]),
    ("v6 too small", node_set("0.0.podCIDRs", ["10.244.0.0/24", "fd00::/127"]),
     ["node 'c1'", "'podCIDRs[1]'", "too small", "/126"]),
    ("v6 room", node_set("1.1.pods", 5, node_set("1.1.podCIDR", "fd00:10:244:3::/126")),
     ["node 'e2'", "room for 2 pods, 5 asked"]),
    ("v6 link-local", node_set("0.0.podCIDRs", ["10.244.0.0/24", "fe80:1::/64"]),
     ["node 'c1'", "link-local"]),
    ("v6 multicast", node_set("0.0.podCIDRs", ["10.244.0.0/24", "ff05::/64"]),
     ["node 'c1'", "multicast"]),
    ("v6 mapped", node_set("0.0.podCIDRs", ["10.244.0.0/24", "::ffff:10.0.0.0/120"]),
     ["node 'c1'", "IPv4-mapped"]),
    ("v6 in the lab underlay", node_set("0.0.podCIDRs", ["10.244.0.0/24", "2001:db8:7::/64"]),
     ["node 'c1'", "IPv6 underlay", "2001:db8::/32"]),
    ("v6 in the VTEP range", node_set("0.0.podCIDRs", ["10.244.0.0/24", "fd72:6176:656e:9::/64"]),
     ["node 'c1'", "VTEP"]),
    ("v6 overlap across nodes", node_set("1.1.podCIDR", "fd00:10:244::/56"),
     ["node 'e2'", "overlaps", "node 'c1'"]),
    ("underlay unknown", {**DUAL, "pools": [{**DUAL["pools"][0], "underlay": "ipv5"},
                                            DUAL["pools"][1]]},
     ["pool 'cloud'", "'underlay'", "ipv5", "ipv4, ipv6, dual"]),
    ("ipv6-only beside ipv4-only", {**DUAL, "pools": [{**DUAL["pools"][0], "underlay": "ipv6"},
                                                      DUAL["pools"][1]]},
     ["pool 'edge'", "'underlay'", "pool 'cloud'", "IPv6-only", "underlay: dual"]),
    ("v6 pods under a small MTU", {**DUAL, "pools": [{**DUAL["pools"][0], "underlayMTU": 1300},
                                                     DUAL["pools"][1]]},
     ["pool 'cloud' node 'c1'", "underlayMTU >= 1360", "1300"]),
]


@pytest.mark.parametrize(("doc", "fragments"), [(c[1], c[2]) for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_dual_stack_input_names_the_node_and_the_fix(doc: dict, fragments: list[str]
                                                         ) -> None:
    found = problems(doc)
    assert any(all(f in p for f in fragments) for p in found), found


def test_valid_dual_stack_forms() -> None:
    topo = parse_topology(node_set("0.0.podCIDR", "10.244.0.0/24"))  # == podCIDRs[0]: fine
    c1, c2 = topo.pools[0].nodes
    assert [str(c) for c in c1.cidrs()] == ["10.244.0.0/24", "fd00:10:244::/64"]
    assert str(c2.pod_cidr) == "fd00:10:244:1::/64"  # IPv6-primary keeps its order
    assert topo.pools[0].underlay == "dual" and topo.pools[1].underlay == "ipv4"
    assert [str(c) for c in topo.pools[1].nodes[1].cidrs()] == ["fd00:10:244:3::/64"]


def test_plan_gives_each_pod_an_address_per_pod_network() -> None:
    plan = plan_lab(parse_topology(DUAL), "rvt-ds")
    for _, node, pod in plan.pods():
        assert len(pod.addresses()) == len(node.cidrs()) and pod.ip == pod.addresses()[0]
        for ip, cidr, gateway in zip(pod.addresses(), node.cidrs(), node.gateways(), strict=True):
            net = ipaddress.ip_network(cidr)
            assert ipaddress.ip_address(ip) in net and ip != gateway
            assert ipaddress.ip_address(gateway) == net.network_address + 1
    cloud, edge = plan.pools
    assert cloud.lan == "198.18.1.0/24" and cloud.lan6 == "2001:db8:1:1::/64"
    assert [n.underlay_ips() for n in cloud.nodes] == [
        ("198.18.1.10", "2001:db8:1:1::10"), ("198.18.1.11", "2001:db8:1:1::11")]
    assert edge.lan6 == "" and edge.nodes[0].underlay_ip6 == ""
    assert plan.control_plane.ip6 == ""  # nobody needs IPv6 to reach it
    assert plan_from_json(plan_to_json(plan)) == plan


def test_ipv6_underlay_plan_has_no_ipv4_underneath() -> None:
    plan = plan_lab(load_topology(ROOT / "test-topologies" / "ipv6-underlay.yaml"), "rvt-v6")
    cloud = plan.pools[0]
    assert cloud.underlay == "ipv6" and not cloud.has_v4
    assert cloud.lan == cloud.lan6 == "2001:db8:1:1::/64"
    assert all(n.underlay_ips() == (n.underlay_ip6,) for n in cloud.nodes)
    cp = plan.control_plane
    assert cp.ip == cp.ip6 == "2001:db8:1:1::254" and cp.pool == "cloud"
    assert cluster.apiserver_listen_args(plan) == ["--listen", "[2001:db8:1:1::254]:6443"]
    assert cluster.tunnel_family(plan) == "ipv6"


def test_a_dual_stack_control_plane_listens_on_both_families() -> None:
    doc = {"pools": [{"name": "cloud", "underlay": "dual", "nodes": [
        {"name": "c1", "podCIDR": "10.244.0.0/24", "gatewayCandidate": True}]},
        {"name": "e", "underlay": "ipv6", "nat": "cone", "nodes": [
            {"name": "e1", "podCIDR": "10.244.1.0/24", "gatewayCandidate": True}]}]}
    plan = plan_lab(parse_topology(doc), "rvt-cp")
    cp = plan.control_plane
    assert (cp.ip, cp.ip6) == ("198.18.1.254", "2001:db8:1:1::254")
    assert cluster.apiserver_listen_args(plan) == [
        "--listen", "[::]:6443", "--tls-san", cp.ip, "--tls-san", cp.ip6]
    # The public dual-stack pool is dialled at its IPv6 address: the other pool has no IPv4.
    gateway = cluster.gateway_objects(plan)[0]
    assert gateway["spec"]["endpoints"][0]["publicIP"] == "2001:db8:1:1::10"


def test_ipv4_topologies_plan_as_before() -> None:
    for name in ("three-pools", "five-pools", "two-pools", "single-pool"):
        plan = plan_lab(load_topology(ROOT / "test-topologies" / f"{name}.yaml"), "rvt-v4")
        assert not plan.has_v6_underlay and plan.control_plane.ip6 == ""
        for pool, node, pod in plan.pods():
            assert pool.underlay == "ipv4" and node.underlay_ip6 == ""
            assert pod.addresses() == (pod.ip,) and ":" not in pod.ip
        assert all("publicIP" not in e for g in cluster.gateway_objects(plan)
                   for e in g["spec"]["endpoints"])
        json_plan = plan_to_json(plan)
        assert json_plan["internet"]["probes6"] == []


def test_wiring_routes_each_pod_family_whatever_the_underlay() -> None:
    plan = plan_lab(parse_topology(DUAL), "rvt-ds")
    cloud, edge = plan.pools
    # Dual underlay: each family via the other node's address of that family.
    lines = build.node_wiring(cloud, cloud.nodes[0])
    assert "route add fd00:10:244:1::/64 via 2001:db8:1:1::11 dev eth0" in lines
    assert "route add 10.244.1.0/24 via 198.18.1.11 dev eth0" in lines
    # IPv4-only underlay with IPv6 pods: via the other node's fixed link-local address.
    lines = build.node_wiring(edge, edge.nodes[0])
    assert f"address add {build.link_local(edge.nodes[0])}/64 dev eth0 nodad" in lines
    assert f"route add fd00:10:244:3::/64 via {build.link_local(edge.nodes[1])} dev eth0" in lines
    assert build.link_local(edge.nodes[1]) == "fe80::c612:20b"  # 198.18.2.11
    # IPv6-only underlay with IPv4 pods: IPv4 via an IPv6 next hop.
    v6 = plan_lab(load_topology(ROOT / "test-topologies" / "ipv6-underlay.yaml"), "rvt-v6")
    lines = build.node_wiring(v6.pools[0], v6.pools[0].nodes[0])
    assert "route add 10.244.1.0/24 via inet6 2001:db8:1:1::11 dev eth0" in lines
    assert not any(line.startswith("address add 198.") for line in lines)
    # The NAT'd pool with IPv6 underneath gets the IPv6 firewall, the public one none.
    assert "iifname \"wan\" drop" in build.firewall6_ruleset(v6.pools[1])
    assert build.firewall6_ruleset(v6.pools[0]) == ""


def test_kubelet_publishes_pod_networks_and_addresses_per_family() -> None:
    plan = plan_lab(parse_topology(DUAL), "rvt-ds")
    cloud = plan.pools[0]
    obj = kubelet.node_object(cloud, cloud.nodes[1])
    assert obj["spec"] == {"podCIDR": "fd00:10:244:1::/64",
                           "podCIDRs": ["fd00:10:244:1::/64", "10.244.1.0/24"]}
    assert [a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP"] == [
        "198.18.1.11", "2001:db8:1:1::11"]


def test_ping_pairs_every_family_both_pods_have(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_lab(parse_topology(DUAL), "rvt-ds")
    asked: dict[str, list[str]] = {}

    def fake(probes: dict[str, list[str]], tries: int, timeout_s: float) -> dict:
        asked.update(probes)
        return {ns: dict.fromkeys(addresses, 0.1) for ns, addresses in probes.items()}

    monkeypatch.setattr(ping.nsutil, "icmp_probe_many", fake)
    report = ping.ping_all(plan)
    pairs = {(p.src, p.dst, p.family) for p in report.pairs}
    # e2-pod0 is IPv6 only: it has IPv6 pairs with everyone and no IPv4 pair at all.
    assert ("e2-pod0", "c1-pod0", "ipv6") in pairs and ("c1-pod0", "e2-pod0", "ipv6") in pairs
    assert not [p for p in pairs if "e2-pod0" in p[:2] and p[2] == "ipv4"]
    assert ("c1-pod0", "c2-pod0", "ipv4") in pairs and ("c1-pod0", "c2-pod0", "ipv6") in pairs
    assert len(pairs) == len(report.pairs) == 3 * 2 * 2 + 3 * 2  # 3 dual pods, + e2's IPv6
    assert all(p.dst_ip in asked[next(q.netns for _, _, q in plan.pods() if q.name == p.src)]
               for p in report.pairs)


@pytest.mark.parametrize(("ident", "seq"), [(0, 0), (0x1234, 7), (0xFFFF, 0xFFFF)])
def test_icmpv6_echo_is_what_scapy_builds_and_reads(ident: int, seq: int) -> None:
    ours = echo_request6(ident, seq, b"xyz")
    theirs = bytes(ICMPv6EchoRequest(id=ident, seq=seq, data=b"xyz", cksum=0))
    assert ours == theirs  # the kernel fills in the checksum on raw ICMPv6 sockets
    reply = bytes(ICMPv6EchoReply(id=ident, seq=seq, data=b"xyz"))
    assert parse_reply6(reply, "fd00:0:0::2") == ("fd00::2", ident, seq)
    assert parse_reply6(ours, "fd00::2") is None  # a request is not a reply
    assert parse_reply6(reply[:7], "fd00::2") is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "nat": st.sampled_from(["none", "cone", "symmetric"]),
    "underlay": st.sampled_from(["ipv6", "dual"]),
    "pods": st.integers(0, 3),
    "families": st.lists(st.sampled_from(["ipv4", "ipv6", "dual", "dual6"]), min_size=1,
                         max_size=5),
}), min_size=1, max_size=5), st.booleans())
def test_plan_of_any_valid_ipv6_topology(spec: list[dict], v4_allowed: bool) -> None:
    """Unique underlay addresses of both families inside the lab's ranges, every pod address
    in its network, a JSON round trip; IPv6-only pools have no IPv4 anywhere."""
    pools, n = [], 0
    for i, p in enumerate(spec):
        nodes = []
        for j, family in enumerate(p["families"]):
            v4, v6 = f"10.{n // 256}.{n % 256}.0/24", f"fd00:{n:x}::/64"
            cidrs = {"ipv4": [v4], "ipv6": [v6], "dual": [v4, v6], "dual6": [v6, v4]}[family]
            nodes.append({"name": f"p{i}-n{j}", "podCIDRs": cidrs})
            n += 1
        underlay = "dual" if v4_allowed and i == 0 else p["underlay"]
        pools.append({"name": f"p{i}", "nat": p["nat"], "underlay": underlay, "pods": p["pods"],
                      "nodes": nodes})
    plan = plan_lab(parse_topology({"pools": pools}), "rvt-prop6")
    allowed = [ipaddress.ip_network(x) for x in ("198.18.0.0/15", "192.0.2.0/24",
                                                 "2001:db8::/32")]
    underlay = [a for _, node in plan.nodes() for a in node.underlay_ips()]
    for p in plan.pools:  # an IPv6-only pool's primary fields are its IPv6 ones
        underlay += list(dict.fromkeys(a for a in (p.router_lan_ip, p.router_lan_ip6, p.wan_ip,
                                                   p.wan_ip6) if a))
    underlay += list(dict.fromkeys(a for a in (plan.control_plane.ip, plan.control_plane.ip6)
                                   if a))
    assert len(set(underlay)) == len(underlay)
    assert all(any(ipaddress.ip_address(a) in net for net in allowed) for a in underlay)
    for pool, node, pod in plan.pods():
        for ip, cidr in zip(pod.addresses(), node.cidrs(), strict=True):
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)
        if pool.underlay == "ipv6":
            assert all(":" in a for a in node.underlay_ips())
    assert plan_from_json(plan_to_json(plan)) == plan
