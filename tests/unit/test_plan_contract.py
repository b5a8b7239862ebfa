"""The planner's output is accepted by the data plane's own pure encoders and diffs.

The planner and the data plane were once tested each against itself: the planner test expected
`fd00:7::/64 via 240.0.2.1`, the data-plane test expected its refusal, and a fleet with one
IPv6 pool failed every member's whole apply. Here every plan of random IPv4 / IPv6 / dual-stack
fleets, for every role, goes through the functions the appliers call (route and rule requests,
neighbour and FDB requests, the pure diffs, the nftables plan, the WireGuard encoders). They are
called, never re-implemented: when the data plane tightens a check, these tests follow it.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from test_topology_dualstack import P, dual_fleet, family, fleets, plans

from raven.dataplane import rtnl
from raven.dataplane.appliers import neighbours, routes, rules, vxlan
from raven.dataplane.errors import DataplaneError
from raven.dataplane.firewall import plan_firewall, skeleton
from raven.dataplane.wireguard import genl, uapi
from raven.dataplane.wireguard.model import LiveDevice, canonical_endpoint, diff_device
from raven.desired import NodeState, Route
from raven.topology import PlanOptions, plan_node, vtep_for

PRIVATE_KEY = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="  # 32 bytes of 0x01
IFINDEX = 7


def accept(state: NodeState) -> None:
    """Feed one plan to every pure data-plane function that consumes it; any refusal raises."""
    index = routes.route_index(state.routes)  # strict: a route listed twice raises
    assert routes.diff(index, {}).add == tuple(sorted(
        ((r.dst, r.table, r.dev, r.gateway, r.mtu, r.src) for r in state.routes), key=str))
    for route in state.routes:
        rtnl.route_request(route, IFINDEX)
    for rule in state.rules:
        rtnl.rule_request(rule)
    assert Counter(rules.diff(state.rules, Counter()).add) == Counter(state.rules)
    changes = neighbours.diff(state.fdb, state.neighbours, neighbours.NeighLive())
    assert set(changes.fdb_add) == set(state.fdb)
    assert set(changes.neigh_add) == set(state.neighbours)
    for entry in state.fdb:
        rtnl.fdb_request(entry, IFINDEX)
    for neigh in state.neighbours:
        rtnl.neigh_request(neigh, IFINDEX)
    if state.vxlan is not None:
        created = vxlan.diff(state.vxlan, state.vxlan.name, vxlan.VxlanLive(None))
        assert created.create == state.vxlan
        assert (state.vxlan.vtep_ip, state.vxlan.vtep_prefixlen) in created.addresses_add
    if state.firewall is not None:
        skeleton(state.firewall)
        plan = plan_firewall(state.firewall, None)
        # Each subnet lands in the nft set of its own family (remote4 / remote6).
        for version, subnets in plan.want.items():
            assert all(family(s) == version for s in subnets)
        assert {v for v, s in plan.want.items() if s} == {
            family(s) for s in state.firewall.remote_subnets}
    if state.wireguard is not None:
        write, _ = diff_device(PRIVATE_KEY, state.wireguard.listen_port, state.wireguard.peers,
                               LiveDevice(None, 0))
        genl.encode_set(state.wireguard.name, write)
        uapi.encode_set(write)
        for peer in state.wireguard.peers:
            if peer.endpoint is not None:
                assert canonical_endpoint(peer.endpoint) == peer.endpoint


def test_the_encoder_refuses_what_the_planner_used_to_plan() -> None:
    # The check below has teeth: the old plan is refused by the same function.
    old = Route("fd00:7::/64", 9027, "raven0", gateway=vtep_for("192.0.2.1")[0], mtu=1420)
    with pytest.raises(DataplaneError, match="IPv6 subnet through an IPv4 next hop"):
        rtnl.route_request(old, IFINDEX)


@pytest.mark.parametrize("node", ["c1", "c2", "e1", "e2", "s1", "s2", "nobody"])
def test_dual_stack_fleet_is_accepted_for_every_node(node: str) -> None:
    accept(plan_node(dual_fleet(), node))


@settings(max_examples=100, deadline=None)
@given(fleets())
def test_every_plan_of_mixed_fleets_is_accepted_by_the_data_plane(
        fleet: tuple[list[P], PlanOptions]) -> None:
    for state in plans(*fleet).values():
        accept(state)


def test_the_vxlan_diff_adds_the_ipv6_vtep() -> None:
    state = plan_node(dual_fleet(), "c2")
    assert state.vxlan is not None and state.vxlan.vtep_ip6 is not None
    created = vxlan.diff(state.vxlan, state.vxlan.name, vxlan.VxlanLive(None))
    assert (state.vxlan.vtep_ip6, 128) in created.addresses_add
