"""raven.topology with IPv4, IPv6 and dual-stack pools (issue 15): per-family VTEPs, routes,
neighbours and rules; IPv6 underlays; everything that cannot be planned is a note naming the pool,
never a failed plan; and hypothesis invariants over random mixed fleets for every role.

`fleets()` and `plans()` are shared with test_plan_contract.py, which feeds the same plans to the
data plane's own encoders.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.desired import FdbEntry, NeighEntry, NodeState, Role, Route, Rule
from raven.model import (
    Endpoint,
    FrozenMap,
    Gateway,
    GatewaySpec,
    GatewayStatus,
    Node,
    NodeInfo,
    gateway_problems,
)
from raven.topology import (
    VTEP6_FROM_V4,
    VTEP6_FROM_V6,
    VTEP6_NETWORK,
    VTEP_NETWORK,
    PlanOptions,
    plan_node,
    vtep6_for,
    vtep_collisions,
    vtep_for,
)

# ---------------------------------------------------------------------------------------------
# Fleet builder


@dataclass(frozen=True)
class N:
    name: str
    ip: str  # underlay
    subnets: tuple[str, ...]


@dataclass(frozen=True)
class P:
    name: str
    nodes: tuple[N, ...]
    nat: bool = False
    public_ip: str = ""
    active: bool = True  # the first node is the active gateway
    has_key: bool = True
    created: str = ""


def key_of(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def gw(p: P) -> Gateway:
    active: tuple[Endpoint, ...] = ()
    if p.active:
        config = FrozenMap({"public-key": key_of(p.name)} if p.has_key else {})
        active = (Endpoint(p.nodes[0].name, under_nat=p.nat, public_ip=p.public_ip, port=4500,
                           config=config),)
    metadata = {"name": p.name, **({"creationTimestamp": p.created} if p.created else {})}
    return Gateway(
        p.name,
        spec=GatewaySpec(endpoints=tuple(Endpoint(n.name, under_nat=p.nat) for n in p.nodes)),
        status=GatewayStatus(nodes=tuple(NodeInfo(n.name, n.ip, n.subnets) for n in p.nodes),
                             active_endpoints=active),
        metadata=FrozenMap(metadata),
    )


def subnets_of(family: str, i: int, j: int) -> tuple[str, ...]:
    v4, v6 = f"10.{i}.{j}.0/24", str(ipaddress.ip_network(f"fd00:{i}:{j}::/64"))
    return {"v4": (v4,), "v6": (v6,), "dual": (v4, v6)}[family]


def v6(net: str) -> bool:
    return ":" in net


def family(address_or_cidr: str) -> int:
    return 6 if ":" in address_or_cidr else 4


# ---------------------------------------------------------------------------------------------
# VTEP identity


def test_ipv6_vtep_from_an_ipv4_underlay_embeds_the_address() -> None:
    assert vtep6_for("192.0.2.1") == "fd72:6176:656e:4::c000:201"
    assert vtep6_for("10.0.0.1") != vtep6_for("26.0.0.1")  # unlike the 28-bit IPv4 VTEP


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**32 - 2), st.integers(1, 2**32 - 2))
def test_ipv6_vtep_from_ipv4_is_injective_and_in_its_prefix(a: int, b: int) -> None:
    va, vb = (vtep6_for(str(ipaddress.IPv4Address(x))) for x in (a, b))
    assert ipaddress.IPv6Address(va) in VTEP6_FROM_V4
    assert (va == vb) == (a == b)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**128 - 1))
def test_ipv6_vtep_from_an_ipv6_underlay_is_stable_and_in_its_own_prefix(value: int) -> None:
    ip = str(ipaddress.IPv6Address(value))
    assert vtep6_for(ip) == vtep6_for(ipaddress.IPv6Address(value).exploded)
    assert ipaddress.IPv6Address(vtep6_for(ip)) in VTEP6_FROM_V6
    assert ipaddress.IPv4Address(vtep_for(ip)[0]) in VTEP_NETWORK


def test_an_ipv6_vtep_collision_is_reported() -> None:
    problems = vtep_collisions([("a", "2001:db8::1"), ("b", "2001:db8:0:0::1")])
    assert any(p.startswith("IPv6 VTEP address collision: a (2001:db8::1), b (2001:db8:0:0::1)")
               for p in problems)
    assert vtep_collisions([("a", "2001:db8::1"), ("b", "2001:db8::2")]) == []


# ---------------------------------------------------------------------------------------------
# Roles with dual-stack and IPv6-only pools


def dual_fleet() -> list[Gateway]:
    return [
        gw(P("cloud", (N("c1", "192.0.2.1", ("10.244.0.0/24", "fd00:244::/64")),
                       N("c2", "192.0.2.2", ("10.244.1.0/24", "fd00:244:1::/64"))),
             public_ip="203.0.113.1", created="2024-01-01T00:00:00Z")),
        gw(P("edge", (N("e1", "198.51.100.1", ("10.245.0.0/24", "fd00:245::/64")),
                      N("e2", "198.51.100.2", ("10.245.1.0/24",))), nat=True,
             created="2024-01-02T00:00:00Z")),
        gw(P("six", (N("s1", "2001:db8:6::1", ("fd00:246::/64",)),
                     N("s2", "2001:db8:6::2", ("fd00:246:1::/64",))),
             public_ip="2001:DB8:FFFF::0001", created="2024-01-03T00:00:00Z")),
    ]


def test_dual_stack_member_routes_each_family_via_the_vtep_of_that_family() -> None:
    state = plan_node(dual_fleet(), "c2")
    assert state.role is Role.MEMBER and state.vxlan is not None
    gw4, gw_mac = vtep_for("192.0.2.1")
    gw6 = vtep6_for("192.0.2.1")
    assert state.vxlan.vtep_ip == vtep_for("192.0.2.2")[0]
    assert state.vxlan.vtep_ip6 == vtep6_for("192.0.2.2")
    # the node's own (IPv4) address as the source of its own IPv4 packets; IPv6: the kernel's
    assert set(state.routes) == {
        Route("10.245.0.0/24", 9027, "raven0", gw4, 1420, "192.0.2.2"),
        Route("10.245.1.0/24", 9027, "raven0", gw4, 1420, "192.0.2.2"),
        Route("fd00:245::/64", 9027, "raven0", gw6, 1420),
        Route("fd00:246::/64", 9027, "raven0", gw6, 1420),
        Route("fd00:246:1::/64", 9027, "raven0", gw6, 1420),
    }
    assert [r.dst for r in state.routes] == sorted(r.dst for r in state.routes)
    assert set(state.neighbours) == {NeighEntry(gw4, gw_mac), NeighEntry(gw6, gw_mac)}
    assert state.fdb == (FdbEntry(gw_mac, "192.0.2.1"),)
    assert {r.family for r in state.rules} == {4, 6}
    assert ("net.ipv6.conf.all.forwarding", "1") in state.sysctls
    assert state.firewall is not None
    assert set(state.firewall.remote_subnets) == {r.dst for r in state.routes}
    assert "fd00:244:1::/64" in state.firewall.local_subnets


def test_dual_stack_gateway_peers_carry_both_families_and_dial_ipv6_in_brackets() -> None:
    state = plan_node(dual_fleet(), "c1")
    assert state.role is Role.ACTIVE_GATEWAY and state.wireguard is not None
    peers = {p.pool: p for p in state.wireguard.peers}
    assert peers["edge"].allowed_ips == ("10.245.0.0/24", "10.245.1.0/24", "fd00:245::/64")
    # The public address is written in canonical form, bracketed, with the port.
    assert peers["six"].endpoint == "[2001:db8:ffff::1]:4500"
    assert peers["six"].allowed_ips == ("fd00:246:1::/64", "fd00:246::/64")
    c2_mac = vtep_for("192.0.2.2")[1]
    assert set(state.neighbours) == {NeighEntry(vtep_for("192.0.2.2")[0], c2_mac),
                                     NeighEntry(vtep6_for("192.0.2.2"), c2_mac)}
    assert {r.dst for r in crossing(state)} == {
        "10.245.0.0/24", "10.245.1.0/24", "fd00:245::/64", "fd00:246::/64", "fd00:246:1::/64"}
    assert all(r.dev == "raven-wg0" and r.gateway is None for r in crossing(state))
    # from the tunnel to the member c2's pods: each family via c2's VTEP of that family
    assert {r for r in state.routes if r not in crossing(state)} == {
        Route("10.244.1.0/24", 9027, "raven0", vtep_for("192.0.2.2")[0]),
        Route("fd00:244:1::/64", 9027, "raven0", vtep6_for("192.0.2.2"))}
    assert set(state.rules) >= {Rule(100, 9027, family=4, iif="raven-wg0"),
                                Rule(100, 9027, family=6, iif="raven-wg0")}


def test_ipv6_only_pool_on_an_ipv6_underlay() -> None:
    state = plan_node(dual_fleet(), "s2")
    assert state.role is Role.MEMBER and state.vxlan is not None
    assert state.vxlan.local_ip == "2001:db8:6::2"
    assert state.vxlan.mtu == 1500 - 50 - 20  # an IPv6 outer header is 20 bytes longer
    assert state.fdb == (FdbEntry(vtep_for("2001:db8:6::1")[1], "2001:db8:6::1"),)
    # An IPv6-only pool routes only the IPv6 subnets; the IPv4 ones are named in a note.
    assert {r.dst for r in state.routes} == {"fd00:244::/64", "fd00:244:1::/64", "fd00:245::/64"}
    assert {r.gateway for r in state.routes} == {vtep6_for("2001:db8:6::1")}
    assert any(n.startswith("Gateway cloud: IPv4 subnet(s) 10.244.0.0/24, 10.244.1.0/24 not "
                            "routed by pool six: pool six has no IPv4 pod subnet") for n in
               state.notes)
    gateway = plan_node(dual_fleet(), "s1")
    assert gateway.wireguard is not None
    edge = next(p for p in gateway.wireguard.peers if p.pool == "edge")
    assert edge.endpoint is None and edge.allowed_ips == ("fd00:245::/64",)


def test_node_object_with_dual_stack_pod_cidrs() -> None:
    node = Node.from_k8s({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "c3", "labels": {"raven.openyurt.io/gateway": "cloud"}},
        "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24", "fd00:244:3::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "2001:db8::3"},
                                 {"type": "InternalIP", "address": "192.0.2.3"}]},
    })
    assert node.pod_cidrs == ("10.244.3.0/24", "fd00:244:3::/64")
    state = plan_node(dual_fleet(), node)
    assert state.vxlan is not None and state.vxlan.local_ip == "192.0.2.3"  # IPv4 preferred
    assert state.firewall is not None
    assert {"10.244.3.0/24", "fd00:244:3::/64"} <= set(state.firewall.local_subnets)


def test_a_bad_ipv6_status_subnet_gets_an_ipv6_example() -> None:
    obj = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
           "metadata": {"name": "gw-a"},
           "status": {"nodes": [{"nodeName": "a1", "privateIP": "2001:db8::5",
                                 "subnets": ["10.1.0.0/24", "fd00:1::5/64"]}]}}
    assert gateway_problems(obj) == [
        'Gateway gw-a: status.nodes[0].subnets[1]: "fd00:1::5/64" is not a CIDR network; use '
        "e.g. fd00:10:244:1::/64 (host bits zero)"]


def test_a_members_own_unlisted_ipv6_podcidr_does_not_make_it_route_what_its_gateway_drops(
) -> None:
    fleet = dual_fleet()
    fleet[1] = gw(P("edge", (N("e1", "198.51.100.1", ("10.245.0.0/24",)),
                             N("e2", "198.51.100.2", ("10.245.1.0/24",))), nat=True,
                    created="2024-01-02T00:00:00Z"))
    node = Node("e3", internal_ips=("198.51.100.3",), pod_cidrs=("fd00:245:3::/64",),
                labels=FrozenMap({"raven.openyurt.io/gateway": "edge"}))
    member, gateway = plan_node(fleet, node), plan_node(fleet, "e1")
    assert member.role is Role.MEMBER
    assert {r.dst for r in member.routes} == {r.dst for r in crossing(gateway)}
    assert all(family(r.dst) == 4 for r in member.routes)


# ---------------------------------------------------------------------------------------------
# What cannot be planned is a note naming the pool; the rest is planned


def test_ipv4_only_fleet_with_one_dual_stack_pool_keeps_every_ipv4_route() -> None:
    # The fleet: one pool gains IPv6; no node of the IPv4 pools may lose anything.
    fleet = [
        gw(P("a", (N("a1", "192.0.2.1", ("10.1.0.0/24",)), N("a2", "192.0.2.2", ("10.1.1.0/24",))),
             public_ip="203.0.113.1")),
        gw(P("b", (N("b1", "198.51.100.1", ("10.2.0.0/24",)),), public_ip="203.0.113.2")),
    ]
    before = {n: plan_node(fleet, n) for n in ("a1", "a2", "b1")}
    fleet.append(gw(P("v", (N("v1", "198.18.7.1", ("10.7.0.0/24", "fd00:7::/64")),),
                      public_ip="203.0.113.7")))
    for name, old in before.items():
        new = plan_node(fleet, name)
        assert set(old.routes) < set(new.routes)
        assert all(r.dst == "10.7.0.0/24" for r in set(new.routes) - set(old.routes))
        assert new.vxlan == old.vxlan and new.vxlan is not None and new.vxlan.vtep_ip6 is None
        assert any("fd00:7::/64 not routed" in n for n in new.notes)


def test_mixed_underlay_families_in_one_pool_are_explained() -> None:
    fleet = [gw(P("m", (N("m1", "192.0.2.1", ("10.1.0.0/24",)),
                        N("m2", "2001:db8::2", ("10.1.1.0/24",)),
                        N("m3", "192.0.2.3", ("10.1.2.0/24",))), public_ip="203.0.113.1"))]
    member = plan_node(fleet, "m2")
    assert member.role is Role.ALONE and member.pool == "m"
    assert any("VXLAN cannot join them" in n and "Gateway m" in n for n in member.notes)
    gateway = plan_node(fleet, "m1")
    assert {f.dst for f in gateway.fdb} == {"192.0.2.3"}
    assert any("member m2 has an IPv6 underlay address" in n for n in gateway.notes)


def test_a_dual_stack_node_uses_the_underlay_family_of_its_gateway() -> None:
    node = Node("s3", internal_ips=("192.0.2.33", "2001:db8:6::3"),
                labels=FrozenMap({"raven.openyurt.io/gateway": "six"}))
    state = plan_node(dual_fleet(), node)
    assert state.role is Role.MEMBER and state.vxlan is not None
    assert state.vxlan.local_ip == "2001:db8:6::3"


def test_ipv6_is_not_planned_below_its_minimum_mtu_and_ipv4_still_is() -> None:
    opts = PlanOptions(underlay_mtu=1340)  # overlay 1260 < 1280
    state = plan_node(dual_fleet(), "c2", opts)
    assert {r.dst for r in state.routes} == {"10.245.0.0/24", "10.245.1.0/24"}
    assert state.vxlan is not None and state.vxlan.vtep_ip6 is None
    assert any("below IPv6's minimum 1280" in n and n.startswith("Gateway six:")
               for n in state.notes)


def test_a_relay_below_the_ipv6_mtu_forwards_no_ipv6_for_others() -> None:
    fleet = [gw(P("r", (N("r1", "192.0.2.1", ("10.1.0.0/24",)),), public_ip="203.0.113.1")),
             *(gw(P(f"n{i}", (N(f"n{i}-1", f"198.51.100.{i}", (f"fd00:{i}::/64",)),), nat=True))
               for i in (1, 2))]
    assert {family(r.dst) for r in plan_node(fleet, "r1").routes} == {6}  # it forwards them
    state = plan_node(fleet, "r1", PlanOptions(underlay_mtu=1340))
    assert state.routes == ()
    assert any("fd00:1::/64 not routed" in n and "below IPv6's minimum" in n for n in state.notes)


def test_a_member_sharing_its_gateways_ipv4_vtep_still_routes_ipv6() -> None:
    # 172.x and 188.x differ only in the top four bits: one IPv4 VTEP, distinct IPv6 VTEPs.
    fleet = dual_fleet()
    fleet[0] = gw(P("cloud", (N("c1", "172.16.0.1", ("10.244.0.0/24", "fd00:244::/64")),
                              N("c2", "188.16.0.1", ("10.244.1.0/24", "fd00:244:1::/64"))),
                    public_ip="203.0.113.1", created="2024-01-01T00:00:00Z"))
    state = plan_node(fleet, "c2")
    assert {family(r.dst) for r in state.routes} == {6}
    assert any("share the IPv4 VTEP" in n and "10.245.0.0/24" in n for n in state.notes)


# ---------------------------------------------------------------------------------------------
# Properties over random mixed fleets


@st.composite
def fleets(draw: st.DrawFn, max_pools: int = 5) -> tuple[list[P], PlanOptions]:
    pools = []
    for i in range(draw(st.integers(1, max_pools))):
        fam = draw(st.sampled_from(["v4", "v6", "dual"]))
        underlay = draw(st.sampled_from(["v4", "v4", "v6", "v4-collide", "mixed"]))
        nodes = []
        for j in range(draw(st.integers(1, 3))):
            ip = {"v4": f"192.168.{i}.{j + 1}", "v6": f"2001:db8:{i}::{j + 1}",
                  "v4-collide": f"{172 + 16 * j}.16.{i}.1",  # differ in the top 4 bits only
                  "mixed": f"2001:db8:{i}::{j + 1}" if j == 1 else f"192.168.{i}.{j + 1}",
                  }[underlay]
            subnets = subnets_of(fam, i, j)
            if fam == "dual" and draw(st.booleans()):
                subnets = subnets[:1]  # a node of a dual-stack pool without an IPv6 podCIDR
            nodes.append(N(f"p{i}-n{j}", ip, subnets))
        nat = draw(st.booleans())
        public = draw(st.sampled_from(["", f"203.0.113.{i + 1}", f"2001:db8:ff::{i + 1}"]))
        pools.append(P(
            f"p{i}", tuple(nodes), nat=nat, public_ip=public if public or nat else "",
            active=draw(st.sampled_from([True, True, True, False])),
            has_key=draw(st.sampled_from([True, True, True, False])),
            created=f"2024-01-{i + 1:02d}T00:00:00Z" if draw(st.booleans()) else "",
        ))
    mtu = draw(st.sampled_from([1500, 1500, 1340, 9000]))
    return pools, PlanOptions(underlay_mtu=mtu)


def crossing(state: NodeState) -> list[Route]:
    """The routes that carry traffic to other pools: all of a member's; a gateway's into the
    tunnel, not those delivering from the tunnel to its members over the VXLAN device."""
    if state.role is not Role.ACTIVE_GATEWAY or state.vxlan is None:
        return list(state.routes)
    return [r for r in state.routes if r.dev != state.vxlan.name]


def plans(pools: list[P], opts: PlanOptions) -> dict[str, NodeState]:
    """Every node's plan (every role), plus a node in no pool."""
    gws = [gw(p) for p in pools]
    names = [n.name for p in pools for n in p.nodes] + ["stranger"]
    return {name: plan_node(gws, name, opts) for name in names}


def check_families(state: NodeState) -> None:
    """No planned object mixes families, and every IPv6 object on the VXLAN device sits on a
    device with an IPv6 VTEP (IPv4 likewise)."""
    vx = state.vxlan
    if vx is None:
        assert state.role is Role.ALONE and not (state.routes or state.neighbours or state.fdb)
        return
    assert ipaddress.ip_address(vx.vtep_ip) in VTEP_NETWORK
    device_families = {4} | ({6} if vx.vtep_ip6 else set())
    if vx.vtep_ip6 is not None:
        assert vx.vtep_ip6 == vtep6_for(vx.local_ip) and vx.vtep6_prefixlen == 128
    for route in state.routes:
        if route.gateway is not None:
            assert family(route.gateway) == family(route.dst), route
        if route.dev == vx.name:
            assert route.gateway is not None and family(route.dst) in device_families, route
            vtep_net = VTEP_NETWORK if family(route.dst) == 4 else VTEP6_NETWORK
            assert ipaddress.ip_address(route.gateway) in vtep_net, route
    for neigh in state.neighbours:
        assert family(neigh.ip) in device_families, neigh
    for fdb in state.fdb:
        assert family(fdb.dst) == family(vx.local_ip), fdb
    routed_families = {family(r.dst) for r in crossing(state)}
    assert {r.family for r in state.rules} == {4} | routed_families
    assert (vx.vtep_ip6 is not None) == (6 in routed_families)
    assert (("net.ipv6.conf.all.forwarding", "1") in state.sysctls) == (6 in routed_families)
    assert state.firewall is not None
    assert sorted(state.firewall.remote_subnets) == sorted(r.dst for r in crossing(state))
    if state.wireguard is not None:
        allowed = [s for peer in state.wireguard.peers for s in peer.allowed_ips]
        assert sorted(allowed) == sorted(r.dst for r in crossing(state))
        for peer in state.wireguard.peers:
            if peer.endpoint is not None:
                host, _, port = peer.endpoint.rpartition(":")
                assert int(port) == 4500
                bracketed = host.startswith("[") and host.endswith("]")
                assert bracketed == (ipaddress.ip_address(host.strip("[]")).version == 6)


def check_every_subnet_routed_once_or_noted(state: NodeState, pools: list[P]) -> None:
    if state.role is Role.ALONE:
        return
    dsts = [r.dst for r in crossing(state)]
    assert len(dsts) == len(set(dsts))
    notes = "\n".join(state.notes)
    for p in pools:
        if p.name == state.pool or not p.active:
            continue
        pool_unreachable = any(n.startswith(f"Gateway {p.name}:") and (
            "unreachable" in n or "no tunnel to it" in n) for n in state.notes)
        for s in {s for n in p.nodes for s in n.subnets}:
            assert dsts.count(s) == 1 or s in notes or pool_unreachable, (p.name, s)
            if s in dsts:  # ...and never both routed and reported as left out
                assert not any(s in n and "not routed" in n for n in state.notes), (p.name, s)


@settings(max_examples=120, deadline=None)
@given(fleets())
def test_mixed_fleet_invariants_for_every_role(fleet: tuple[list[P], PlanOptions]) -> None:
    pools, opts = fleet
    for state in plans(pools, opts).values():
        check_families(state)
        check_every_subnet_routed_once_or_noted(state, pools)
        if opts.tunnel_mtu < 1280:  # Linux has no IPv6 on such a device: never planned
            assert all(family(r.dst) == 4 for r in state.routes)


@settings(max_examples=60, deadline=None)
@given(fleets())
def test_a_member_routes_only_what_its_gateway_routes(fleet: tuple[list[P], PlanOptions]) -> None:
    pools, opts = fleet
    states = plans(pools, opts)
    for p in pools:
        gateway = states[p.nodes[0].name]
        # the gateway delivers from the tunnel only to subnets its members list, each via the
        # VTEP of the member that lists it
        vteps = {n.name: {vtep_for(n.ip)[0], vtep6_for(n.ip)} for n in p.nodes[1:]}
        for r in gateway.routes:
            if r not in crossing(gateway):
                assert any(r.dst in n.subnets and r.gateway in vteps[n.name]
                           for n in p.nodes[1:]), r
        for n in p.nodes[1:]:
            member = states[n.name]
            if member.role is Role.MEMBER:
                assert gateway.role is Role.ACTIVE_GATEWAY
                assert {r.dst for r in member.routes} <= {r.dst for r in crossing(gateway)}



def test_the_generator_reaches_every_role_and_family() -> None:
    seen: set[object] = set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(fleets())
    def collect(fleet: tuple[list[P], PlanOptions]) -> None:
        states = plans(*fleet)
        for s in states.values():
            seen.add(s.role)
            seen.update(f"route-v{family(r.dst)}" for r in s.routes)
            if s.wireguard is not None and any(p.relays_for for p in s.wireguard.peers):
                seen.add("relayed")
            if any("not routed" in n for n in s.notes):
                seen.add("noted")

    collect()
    assert seen >= {Role.MEMBER, Role.ACTIVE_GATEWAY, Role.ALONE, "route-v4", "route-v6",
                    "relayed", "noted"}


@settings(max_examples=40, deadline=None)
@given(fleets(), st.randoms(use_true_random=False))
def test_mixed_fleets_plan_the_same_in_any_input_order(fleet: tuple[list[P], PlanOptions],
                                                        rnd: random.Random) -> None:
    pools, opts = fleet
    gws = [gw(p) for p in pools]
    shuffled = []
    for g in rnd.sample(gws, len(gws)):
        nodes = [replace(n, subnets=tuple(rnd.sample(n.subnets, len(n.subnets))))
                 for n in g.status.nodes]
        rnd.shuffle(nodes)
        shuffled.append(replace(g, status=replace(g.status, nodes=tuple(nodes))))
    for name in [n.name for p in pools for n in p.nodes]:
        a, b = plan_node(gws, name, opts), plan_node(shuffled, name, opts)
        assert a == b and a.notes == b.notes
