"""raven.topology: each role of the planner, VTEP identity, relays, and hypothesis properties."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.desired import FdbEntry, NeighEntry, Role, Route, Rule
from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, Node, NodeInfo
from raven.topology import PlanOptions, plan_node, vtep6_for, vtep_collisions, vtep_for


@dataclass(frozen=True)
class PoolSpec:
    name: str
    nodes: tuple[tuple[str, str, str], ...]  # (name, underlay IP, podCIDR)
    nat: bool = False
    public_ip: str = ""
    active: str | None = ""  # "" = first node; None = no active endpoint
    key: str | None = ""  # "" = derived from the name; None = no key yet
    created: str = ""


def gateway(p: PoolSpec) -> Gateway:
    active_name = p.nodes[0][0] if p.active == "" else p.active
    key = f"{p.name}-key=" if p.key == "" else p.key
    active = ()
    if active_name is not None:
        config = FrozenMap({"public-key": key} if key else {})
        active = (Endpoint(active_name, under_nat=p.nat, public_ip=p.public_ip, port=4500,
                           config=config),)
    metadata = {"name": p.name}
    if p.created:
        metadata["creationTimestamp"] = p.created
    return Gateway(
        p.name,
        spec=GatewaySpec(endpoints=tuple(Endpoint(n, under_nat=p.nat) for n, _, _ in p.nodes)),
        status=GatewayStatus(nodes=tuple(NodeInfo(n, ip, (s,)) for n, ip, s in p.nodes),
                             active_endpoints=active),
        metadata=FrozenMap(metadata),
    )


def three_pools() -> list[Gateway]:
    return [
        gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),
                                   ("c2", "192.0.2.2", "10.244.1.0/24")),
                         public_ip="203.0.113.1", created="2024-01-01T00:00:00Z")),
        gateway(PoolSpec("hz", (("h1", "198.51.100.1", "10.245.0.0/24"),
                                ("h2", "198.51.100.2", "10.245.1.0/24")), nat=True,
                         created="2024-01-02T00:00:00Z")),
        gateway(PoolSpec("sh", (("s1", "198.18.0.1", "10.246.0.0/24"),), nat=True,
                         created="2024-01-03T00:00:00Z")),
    ]


# ---------------------------------------------------------------------------------------------
# Roles


def test_member_plan() -> None:
    state = plan_node(three_pools(), "c2")
    gw_vtep, gw_mac = vtep_for("192.0.2.1")
    my_vtep, my_mac = vtep_for("192.0.2.2")
    assert state.role is Role.MEMBER and state.pool == "cloud"
    assert state.vxlan is not None
    assert (state.vxlan.name, state.vxlan.vni, state.vxlan.port, state.vxlan.local_ip,
            state.vxlan.vtep_ip, state.vxlan.mac, state.vxlan.mtu) == (
        "raven0", 200, 4472, "192.0.2.2", my_vtep, my_mac, 1450)
    assert state.fdb == (FdbEntry(gw_mac, "192.0.2.1"),)
    assert state.neighbours == (NeighEntry(gw_vtep, gw_mac),)
    # the node's own address as preferred source: its own packets leave with it, not the VTEP's
    assert state.routes == tuple(
        Route(s, 9027, "raven0", gateway=gw_vtep, mtu=1420, src="192.0.2.2")
        for s in ("10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/24"))
    # no selector, no mark chains: every lookup consults 9027 (only remote subnets)
    assert state.rules == (Rule(priority=100, table=9027),)
    assert state.wireguard is None
    assert state.firewall is not None and not state.firewall.marks
    assert state.firewall.local_subnets == ("10.244.0.0/24", "10.244.1.0/24")
    assert state.firewall.remote_subnets == ("10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/24")


def test_public_gateway_plan_and_relay() -> None:
    state = plan_node(three_pools(), "c1")
    assert state.role is Role.ACTIVE_GATEWAY
    assert state.wireguard is not None
    assert (state.wireguard.name, state.wireguard.listen_port, state.wireguard.mtu) == (
        "raven-wg0", 4500, 1420)
    peers = {p.pool: p for p in state.wireguard.peers}
    assert set(peers) == {"hz", "sh"}
    # Both peers are under NAT: no endpoint (learned from their handshake); we are public: no
    # keepalive.
    assert peers["hz"].endpoint is None and peers["hz"].keepalive == 0
    assert peers["hz"].allowed_ips == ("10.245.0.0/24", "10.245.1.0/24")
    c2_vtep, c2_mac = vtep_for("192.0.2.2")
    # into the tunnel by 9028; out of it to the member c2's pods over VXLAN by 9027
    assert state.routes == (
        *(Route(s, 9028, "raven-wg0") for s in ("10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/24")),
        Route("10.244.1.0/24", 9027, "raven0", gateway=c2_vtep))
    # no selector, no mark chains: every lookup consults 9028 (only remote subnets); only
    # packets from the tunnel consult 9027 (only the members' pod subnets)
    assert state.rules == (Rule(100, 9028), Rule(100, 9027, iif="raven-wg0"))
    assert state.firewall is not None and not state.firewall.marks
    assert ("net.ipv4.ip_forward", "1") in state.sysctls
    assert ("net.ipv4.conf.raven-wg0.rp_filter", "0") in state.sysctls
    assert state.fdb == (FdbEntry(c2_mac, "192.0.2.2"),)
    assert state.neighbours == (NeighEntry(c2_vtep, c2_mac),)
    assert any("relays between the undialable pools hz, sh" in n for n in state.notes)


def test_gateway_delivers_from_the_tunnel_to_each_member_over_vxlan() -> None:
    # c3 lists the gateway's own subnet (left to main), c4 one c2 lists too (c2 keeps it)
    gws = three_pools()
    gws[0] = gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),
                                        ("c2", "192.0.2.2", "10.244.1.0/24"),
                                        ("c3", "192.0.2.3", "10.244.0.0/25"),
                                        ("c4", "192.0.2.4", "10.244.1.0/24"),
                                        ("c5", "192.0.2.5", "10.244.5.0/24")),
                              public_ip="203.0.113.1", created="2024-01-01T00:00:00Z"))
    state = plan_node(gws, "c1")
    delivery = [r for r in state.routes if r.table == 9027]
    assert delivery == [Route("10.244.1.0/24", 9027, "raven0", gateway=vtep_for("192.0.2.2")[0]),
                        Route("10.244.5.0/24", 9027, "raven0", gateway=vtep_for("192.0.2.5")[0])]
    assert Rule(100, 9027, iif="raven-wg0") in state.rules
    assert any("10.244.1.0/24 is listed by members c2 and c4" in n and "goes to c2" in n
               for n in state.notes)
    # a member routes nothing of its own pool (that stays with the CNI)
    assert all(r.table == 9027 and not r.dst.startswith("10.244.")
               for r in plan_node(gws, "c5").routes)


def test_gateway_with_nothing_routed_into_the_tunnel_delivers_nothing() -> None:
    state = plan_node(three_pools()[1:], "h1")
    assert state.routes == () and all(not r.iif for r in state.rules)


def test_nat_gateway_reaches_the_other_nat_pool_through_the_relay() -> None:
    state = plan_node(three_pools(), "h1")
    assert state.wireguard is not None
    (peer,) = state.wireguard.peers
    assert peer.pool == "cloud" and peer.endpoint == "203.0.113.1:4500"
    assert peer.keepalive == 25  # we are under NAT
    assert peer.relays_for == ("sh",)
    assert peer.allowed_ips == ("10.244.0.0/24", "10.244.1.0/24", "10.246.0.0/24")
    assert any("relayed through cloud" in n for n in state.notes)


def test_alone_when_in_no_pool() -> None:
    state = plan_node(three_pools(), "stranger")
    assert state.role is Role.ALONE and state.pool is None
    assert (state.vxlan, state.wireguard, state.firewall, state.routes, state.rules,
            state.fdb, state.sysctls) == (None, None, None, (), (), (), ())


def test_alone_when_the_pool_has_no_active_gateway() -> None:
    gws = three_pools()
    gws[1] = replace(gws[1], status=replace(gws[1].status, active_endpoints=()))
    state = plan_node(gws, "h2")
    assert state.role is Role.ALONE and state.pool == "hz"
    assert any("no active tunnel endpoint" in n for n in state.notes)
    # ...and the other pools stop routing its subnets.
    assert "10.245.0.0/24" not in plan_node(gws, "c2").firewall.remote_subnets  # type: ignore


def test_alone_when_the_active_endpoint_is_not_a_member() -> None:
    gws = [gateway(PoolSpec("a", (("a1", "192.0.2.1", "10.0.0.0/24"),), active="ghost"))]
    state = plan_node(gws, "a1")
    assert state.role is Role.ALONE
    assert any("ghost is not in status.nodes" in n for n in state.notes)


def test_node_object_supplies_its_own_facts_and_label() -> None:
    gws = three_pools()
    me = Node("c3", internal_ips=("192.0.2.3",), pod_cidrs=("10.244.3.0/24",),
              labels=FrozenMap({"raven.openyurt.io/gateway": "cloud"}))
    state = plan_node(gws, me)
    assert state.role is Role.MEMBER and state.vxlan is not None
    assert state.vxlan.local_ip == "192.0.2.3"
    assert state.firewall is not None and "10.244.3.0/24" in state.firewall.local_subnets


def test_options_change_names_ports_and_mtus() -> None:
    opts = PlanOptions(vxlan_device="ov0", vxlan_vni=7, vxlan_table=100, wireguard_device="wgx",
                       wireguard_port=51820, wireguard_table=101, underlay_mtu=9000,
                       fwmark=0x1000, rule_priority=50, keepalive=10)
    member = plan_node(three_pools(), "c2", opts)
    assert member.vxlan is not None and member.vxlan.mtu == 8950 and member.vxlan.vni == 7
    assert {r.mtu for r in member.routes} == {8920} and {r.table for r in member.routes} == {100}
    assert member.rules == (Rule(50, 100),)
    gw = plan_node(three_pools(), "h1", opts)
    assert gw.wireguard is not None and gw.wireguard.listen_port == 51820
    assert gw.wireguard.mtu == 8920 and gw.wireguard.peers[0].keepalive == 10


def test_ipv6_public_address_is_bracketed() -> None:
    gws = [gateway(PoolSpec("a", (("a1", "192.0.2.1", "10.0.0.0/24"),), public_ip="2001:db8::1")),
           gateway(PoolSpec("b", (("b1", "192.0.2.9", "10.0.1.0/24"),), nat=True))]
    state = plan_node(gws, "b1")
    assert state.wireguard is not None
    assert state.wireguard.peers[0].endpoint == "[2001:db8::1]:4500"


def test_public_port_is_dialled_when_set() -> None:
    gws = three_pools()
    ep = replace(gws[0].status.active_endpoints[0], public_port=31000)
    gws[0] = replace(gws[0], status=replace(gws[0].status, active_endpoints=(ep,)))
    state = plan_node(gws, "h1")
    assert state.wireguard is not None
    assert state.wireguard.peers[0].endpoint == "203.0.113.1:31000"


def test_peer_without_a_public_key_is_skipped_with_a_note() -> None:
    gws = three_pools()
    gws.append(gateway(PoolSpec("new", (("n1", "198.18.5.1", "10.247.0.0/24"),),
                                public_ip="203.0.113.5", key=None)))
    state = plan_node(gws, "c1")
    assert state.wireguard is not None
    assert "new" not in {p.pool for p in state.wireguard.peers}
    assert "10.247.0.0/24" not in {r.dst for r in state.routes}
    assert any("has no public key" in n for n in state.notes)


def test_no_relay_when_no_public_gateway_exists() -> None:
    gws = three_pools()[1:]
    state = plan_node(gws, "h1")
    assert state.role is Role.ACTIVE_GATEWAY
    assert state.wireguard is not None and state.wireguard.peers == ()
    assert state.routes == ()
    assert any("unreachable" in n for n in state.notes)


def test_remote_subnet_overlapping_a_local_one_is_never_routed() -> None:
    gws = three_pools()
    gws.append(gateway(PoolSpec("bad", (("b1", "198.18.9.1", "10.244.0.0/16"),),
                                public_ip="203.0.113.9")))
    state = plan_node(gws, "c2")
    assert "10.244.0.0/16" not in {r.dst for r in state.routes}
    assert any("overlaps pool cloud" in n for n in state.notes)


def test_duplicate_remote_subnet_is_routed_once_to_the_first_pool() -> None:
    gws = three_pools()
    gws.append(gateway(PoolSpec("zz", (("z1", "198.18.9.1", "10.246.0.0/24"),),
                                public_ip="203.0.113.9")))
    state = plan_node(gws, "c1")
    assert [r.dst for r in state.routes].count("10.246.0.0/24") == 1
    assert state.wireguard is not None
    owners = [p.pool for p in state.wireguard.peers if "10.246.0.0/24" in p.allowed_ips]
    assert owners == ["sh"]


def test_standby_endpoints_are_noted() -> None:
    gws = three_pools()
    eps = (*gws[0].status.active_endpoints, Endpoint("c2", public_ip="203.0.113.2"))
    gws[0] = replace(gws[0], status=replace(gws[0].status, active_endpoints=eps))
    assert plan_node(gws, "c2").role is Role.MEMBER
    assert any("c2 are standby" in n for n in plan_node(gws, "c1").notes)


def test_ipv6_subnets_are_routed_via_the_ipv6_vtep_with_an_ipv6_rule() -> None:
    # Once this asserted `fd00:7::/64 via <IPv4 VTEP>`, which the data plane refuses (Linux has
    # no IPv6 route through an IPv4 next hop) and which failed every member's whole apply.
    gws = three_pools()
    gws[0] = gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),
                                        ("c2", "192.0.2.2", "fd00:1::/64")),
                              public_ip="203.0.113.1", created="2024-01-01T00:00:00Z"))
    gws.append(gateway(PoolSpec("v6", (("v1", "198.18.7.1", "fd00:7::/64"),),
                                public_ip="203.0.113.7")))
    state = plan_node(gws, "c2")
    assert {r.family for r in state.rules} == {4, 6}
    assert Route("fd00:7::/64", 9027, "raven0", gateway=vtep6_for("192.0.2.1"),
                 mtu=1420) in state.routes
    assert state.vxlan is not None and state.vxlan.vtep_ip6 == vtep6_for("192.0.2.2")


def test_ipv6_subnets_are_not_routed_into_an_ipv4_only_pool_and_a_note_says_why() -> None:
    gws = three_pools()
    gws.append(gateway(PoolSpec("v6", (("v1", "198.18.7.1", "fd00:7::/64"),),
                                public_ip="203.0.113.7")))
    for node in ("c2", "h1"):
        state = plan_node(gws, node)
        assert "fd00:7::/64" not in {r.dst for r in state.routes}
        assert {r.family for r in state.rules} == {4}
        assert state.vxlan is not None and state.vxlan.vtep_ip6 is None
        assert ("net.ipv6.conf.all.forwarding", "1") not in state.sysctls
        assert [n for n in state.notes if n.startswith(
            "Gateway v6: IPv6 subnet(s) fd00:7::/64 not routed")
            and f"pool {state.pool} has no IPv6 pod subnet" in n]
    # ...and every IPv4 subnet of the other pools is still routed.
    assert {r.dst for r in plan_node(gws, "c2").routes} == {
        "10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/24"}
    assert {r.dst for r in plan_node(gws, "h1").routes if r.table == 9028} == {
        "10.244.0.0/24", "10.244.1.0/24", "10.246.0.0/24"}


def test_the_relay_gateway_routes_the_families_it_forwards_for_others() -> None:
    # cloud (IPv4 only) relays wg->wg between the undialable pools; once two of them have IPv6
    # subnets, it routes those into the tunnel too, while its members still route only IPv4.
    gws = three_pools()
    gws.append(gateway(PoolSpec("v6", (("v1", "198.18.7.1", "fd00:7::/64"),),
                                public_ip="203.0.113.7")))
    assert "fd00:7::/64" not in {r.dst for r in plan_node(gws, "c1").routes}
    gws += [gateway(PoolSpec(f"nat{i}", ((f"n{i}", f"198.18.8.{i}", f"fd00:8:{i}::/64"),),
                             nat=True)) for i in (1, 2)]
    state = plan_node(gws, "c1")
    assert {Route("fd00:8:1::/64", 9028, "raven-wg0"), Route("fd00:8:2::/64", 9028, "raven-wg0")
            } <= set(state.routes)
    assert "fd00:7::/64" not in {r.dst for r in state.routes}  # dialable: nobody relays it
    assert ("net.ipv6.conf.all.forwarding", "1") in state.sysctls
    assert {r.family for r in state.rules} == {4, 6}
    member = plan_node(gws, "c2")
    assert {r.dst for r in member.routes} == {"10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/24"}
    assert any("fd00:8:1::/64 not routed on node c2" in n for n in member.notes)


# ---------------------------------------------------------------------------------------------
# VTEP identity


def test_vtep_is_a_function_of_the_address_only() -> None:
    assert vtep_for("10.1.2.3") == vtep_for("10.1.2.3") == ("250.1.2.3", "0e:52:0a:01:02:03")
    assert vtep_for("192.168.1.1") == ("240.168.1.1", "0e:52:c0:a8:01:01")


def raven_vtep(ip: str) -> str:
    """OpenYurt Raven's scheme: 240 + the last three octets."""
    return "240." + ".".join(ip.split(".")[1:])


def test_ravens_scheme_collides_on_the_first_octet_and_ours_does_not() -> None:
    a, b = "10.0.0.1", "11.0.0.1"
    assert raven_vtep(a) == raven_vtep(b)
    assert vtep_for(a)[0] != vtep_for(b)[0] and vtep_for(a)[1] != vtep_for(b)[1]
    assert vtep_collisions([("n1", a), ("n2", b)]) == []


def test_collisions_are_reported_and_appear_in_the_plan() -> None:
    # 10.x and 26.x differ only in the top four bits: our 28-bit scheme collides, and says so.
    problems = vtep_collisions([("n1", "10.0.0.1"), ("n2", "26.0.0.1")])
    assert problems == ["VTEP address collision: n1 (10.0.0.1), n2 (26.0.0.1) all map to "
                        "250.0.0.1; their addresses differ only in the top 4 bits (or the hash); "
                        "renumber one of them"]
    gws = [gateway(PoolSpec("a", (("n1", "10.0.0.1", "10.9.0.0/24"),
                                  ("n2", "26.0.0.1", "10.9.1.0/24"))))]
    assert any("VTEP address collision" in n for n in plan_node(gws, "n1").notes)


def test_broadcast_vtep_is_reported() -> None:
    assert vtep_for("15.255.255.255")[0] == "255.255.255.255"
    assert "broadcast" in vtep_collisions([("n", "15.255.255.255")])[0]


IPV4 = st.integers(1, 2**32 - 2).map(lambda i: str(ipaddress.IPv4Address(i)))


@settings(deadline=None)  # timing varies on a shared 2-core machine
@given(IPV4, IPV4)
def test_vtep_mac_is_injective_and_address_collides_only_on_the_top_bits(a: str, b: str) -> None:
    (va, ma), (vb, mb) = vtep_for(a), vtep_for(b)
    assert ipaddress.IPv4Address(va) in ipaddress.IPv4Network("240.0.0.0/4")
    assert int(ma.split(":")[0], 16) & 0b11 == 0b10  # locally administered unicast
    assert (ma == mb) == (a == b)
    xor = int(ipaddress.IPv4Address(a)) ^ int(ipaddress.IPv4Address(b))
    assert (va == vb) == (xor & 0x0FFFFFFF == 0)
    broadcast = "255.255.255.255" in (va, vb)
    # Two differently named nodes that share a VTEP (or even an address) are always reported.
    assert bool(vtep_collisions([("x", a), ("y", b)])) == (va == vb or broadcast)


@settings(deadline=None)  # timing varies on a shared 2-core machine
@given(st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i))))
def test_vtep_for_ipv6_is_stable(ip: str) -> None:
    assert vtep_for(ip) == vtep_for(ip)
    assert ipaddress.IPv4Address(vtep_for(ip)[0]) in ipaddress.IPv4Network("240.0.0.0/4")


# ---------------------------------------------------------------------------------------------
# Properties over random fleets


@st.composite
def fleets(draw: st.DrawFn, max_pools: int = 6) -> list[PoolSpec]:
    count = draw(st.integers(1, max_pools))
    pools = []
    for i in range(count):
        size = draw(st.integers(1, 4))
        nodes = tuple((f"p{i}-n{j}", f"192.168.{i}.{j + 1}", f"10.{i}.{j}.0/24")
                      for j in range(size))
        nat = draw(st.booleans())
        has_ip = draw(st.booleans()) or not nat
        pools.append(PoolSpec(
            name=f"p{i}", nodes=nodes, nat=nat,
            public_ip=f"203.0.113.{i + 1}" if has_ip else "",
            active=draw(st.sampled_from(["", "", "", None])),
            created=f"2024-01-{i + 1:02d}T00:00:00Z" if draw(st.booleans()) else "",
        ))
    return pools


def all_nodes(pools: list[PoolSpec]) -> list[str]:
    return [n for p in pools for n, _, _ in p.nodes]


@settings(max_examples=60, deadline=None)
@given(fleets(), st.randoms(use_true_random=False))
def test_same_inputs_in_any_order_give_an_equal_plan(pools: list[PoolSpec],
                                                     rnd: random.Random) -> None:
    gws = [gateway(p) for p in pools]
    shuffled = []
    for g in rnd.sample(gws, len(gws)):
        nodes = list(g.status.nodes)
        rnd.shuffle(nodes)
        shuffled.append(replace(g, status=replace(g.status, nodes=tuple(nodes))))
    for name in all_nodes(pools):
        a, b = plan_node(gws, name), plan_node(shuffled, name)
        assert a == b
        assert a.notes == b.notes


@settings(max_examples=60, deadline=None)
@given(fleets())
def test_remote_subnets_routed_exactly_once_and_local_never(pools: list[PoolSpec]) -> None:
    gws = [gateway(p) for p in pools]
    for p in pools:
        local = {s for _, _, s in p.nodes}
        for name in all_nodes([p]):
            state = plan_node(gws, name)
            # a gateway's table 9027 delivers from the tunnel to its members: local by design
            delivery = [r.dst for r in state.routes
                        if state.role is Role.ACTIVE_GATEWAY and r.table == 9027]
            dsts = [r.dst for r in state.routes if r.dst not in delivery]
            assert len(dsts) == len(set(dsts)) and len(delivery) == len(set(delivery))
            assert not local & set(dsts)
            assert set(delivery) <= local
            if state.wireguard is not None:
                allowed = [s for peer in state.wireguard.peers for s in peer.allowed_ips]
                assert len(allowed) == len(set(allowed)) and not local & set(allowed)
                assert sorted(allowed) == sorted(dsts)
            if state.firewall is not None:
                assert sorted(state.firewall.remote_subnets) == sorted(dsts)


def _dialable(p: PoolSpec) -> bool:
    return not p.nat and bool(p.public_ip)


@settings(max_examples=80, deadline=None)
@given(fleets())
def test_every_pair_connected_directly_or_through_exactly_one_relay(pools: list[PoolSpec]) -> None:
    gws = [gateway(p) for p in pools]
    live = [p for p in pools if p.active is not None]
    plans = {p.name: plan_node(gws, p.nodes[0][0]) for p in live}
    any_dialable = any(_dialable(p) for p in live)
    for a in live:
        wg = plans[a.name].wireguard
        assert wg is not None
        for b in live:
            if a is b:
                continue
            subnet = b.nodes[0][2]
            carriers = [peer for peer in wg.peers if subnet in peer.allowed_ips]
            if _dialable(a) or _dialable(b):
                assert [c.pool for c in carriers] == [b.name]
                assert b.name not in carriers[0].relays_for
            elif any_dialable:
                assert len(carriers) == 1
                relay = carriers[0].pool
                assert b.name in carriers[0].relays_for
                relay_pool = next(p for p in live if p.name == relay)
                assert _dialable(relay_pool)
                relay_wg = plans[relay].wireguard
                assert relay_wg is not None
                assert {a.name, b.name} <= {peer.pool for peer in relay_wg.peers}
            else:
                assert carriers == []


@settings(max_examples=80, deadline=None)
@given(fleets(max_pools=5), st.booleans(), st.booleans(), st.text("abcxyz", min_size=1,
                                                                   max_size=3))
def test_adding_an_unrelated_gateway_never_moves_a_relay(
    pools: list[PoolSpec], nat: bool, public: bool, suffix: str
) -> None:
    # Every Gateway of a real cluster has a creationTimestamp; a new one is the newest.
    pools = [replace(p, created=f"2024-01-{i + 1:02d}T00:00:00Z") for i, p in enumerate(pools)]
    newcomer = PoolSpec(f"a-{suffix}", (("new-1", "192.168.99.1", "10.99.0.0/24"),), nat=nat,
                        public_ip="203.0.113.99" if public or not nat else "",
                        created="2025-06-01T00:00:00Z")
    before = [gateway(p) for p in pools]
    after = [*before, gateway(newcomer)]

    def carriers(gws: list[Gateway]) -> dict[tuple[str, str], str]:
        out = {}
        for p in pools:
            if p.active is None:
                continue
            wg = plan_node(gws, p.nodes[0][0]).wireguard
            assert wg is not None
            for peer in wg.peers:
                for relayed in peer.relays_for:
                    out[(p.name, relayed)] = peer.pool
        return out

    assert carriers(before).items() <= carriers(after).items()


def test_a_newer_public_gateway_with_a_smaller_name_does_not_take_over_the_relay() -> None:
    gws = three_pools()
    newcomer = gateway(PoolSpec("aaa", (("a1", "198.18.8.1", "10.248.0.0/24"),),
                                public_ip="203.0.113.8", created="2025-01-01T00:00:00Z"))
    for fleet in (gws, [*gws, newcomer]):
        wg = plan_node(fleet, "h1").wireguard
        assert wg is not None
        relays = {p.pool for p in wg.peers if p.relays_for}
        assert relays == {"cloud"}


@settings(deadline=None)  # timing varies on a shared 2-core machine
@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.booleans())
def test_fast_cidr_parser_agrees_with_ipaddress(value: int, plen: int, bare: bool) -> None:
    from raven.topology import _cidr

    text = str(ipaddress.IPv4Address(value)) + ("" if bare else f"/{plen}")
    net = ipaddress.ip_network(text, strict=False)
    assert _cidr(text) == (4, int(net.network_address), int(net.broadcast_address), str(net))


def test_non_canonical_subnets_are_canonicalised() -> None:
    gws = three_pools()
    info = replace(gws[2].status.nodes[0], subnets=("10.246.0.7/24",))
    gws[2] = replace(gws[2], status=replace(gws[2].status, nodes=(info,)))
    assert "10.246.0.0/24" in {r.dst for r in plan_node(gws, "c2").routes}


JUNK_IP = st.sampled_from(["", "10.0.0.1/24", "not-an-ip", "300.1.1.1", "10.0.0.1", "fd00::1",
                           "192.0.2.7"])
JUNK_SUBNET = st.sampled_from(["10.1.0.0/24", "10.1.0.9/24", "junk", "", "fd00::/64",
                               "0.0.0.0/0", "10.1.0.0/16"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["n1", "n2", "n3"]),
                          JUNK_IP, st.lists(JUNK_SUBNET, max_size=2), st.booleans(),
                          st.sampled_from(["", "203.0.113.1", "junk", "::1"])), max_size=6))
def test_the_planner_never_raises_on_junk(rows: list) -> None:  # type: ignore[type-arg]
    gws = []
    for pool in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == pool]
        gws.append(Gateway(pool, status=GatewayStatus(
            nodes=tuple(NodeInfo(n, ip, tuple(s)) for _, n, ip, s, _, _ in mine),
            active_endpoints=(Endpoint(mine[0][1], under_nat=mine[0][4], public_ip=mine[0][5],
                                       config=FrozenMap({"public-key": f"{pool}="})),),
        )))
    for name in ("n1", "n2", "n3", "zz"):
        state = plan_node(gws, name)
        assert state.node == name


def test_our_devices_skip_the_reverse_path_lookup_of_policy_routing_mode() -> None:
    # rp_filter 0 and accept_local 1 on raven0 (every role) and raven-wg0 (the gateway): with
    # a rule in the namespace the kernel otherwise does a full reverse FIB lookup per packet
    # arriving on them (fib_validate_source); no other device of the node is ours to change.
    gws = three_pools()
    gw, member = plan_node(gws, "c1"), plan_node(gws, "c2")
    assert gw.role == Role.ACTIVE_GATEWAY and member.role == Role.MEMBER
    for state, devices in ((gw, ("raven0", "raven-wg0")), (member, ("raven0",))):
        ours = {k: v for k, v in state.sysctls if k.startswith("net.ipv4.conf.")}
        assert ours == {**{f"net.ipv4.conf.{d}.rp_filter": "0" for d in devices},
                        **{f"net.ipv4.conf.{d}.accept_local": "1" for d in devices}}
