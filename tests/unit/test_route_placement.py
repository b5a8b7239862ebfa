"""raven.route_placement: a member's routes go to main without a rule unless main holds a route
that would win over one of them there."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven import constants
from raven.desired import Role, Route, Rule
from raven.route_placement import Cover, contested, place
from raven.settings import OverlaySettings
from raven.topology import plan_node
from tests.unit.test_topology import PoolSpec, gateway
from tests.unit.test_topology_dualstack import dual_fleet

OPTIONS = OverlaySettings()


def two_pools() -> list:
    return [
        gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),
                                   ("c2", "192.0.2.2", "10.244.1.0/24")),
                         public_ip="203.0.113.1")),
        gateway(PoolSpec("edge", (("e1", "198.51.100.1", "10.244.10.0/24"),
                                  ("e2", "198.51.100.2", "10.244.11.0/24")),
                         public_ip="203.0.113.2")),
    ]


def member_plan(dualstack: bool = False):
    """Seen from a member of the cloud pool: its routes to the edge pool go via its gateway's
    VTEP in table 9027, behind the selector-less member rule."""
    return plan_node(dual_fleet(), "c2") if dualstack else plan_node(two_pools(), "c2")


def test_the_planner_still_puts_member_routes_behind_the_rule() -> None:
    """place() starts from this shape; a change here must be looked at there too."""
    state = member_plan()
    assert state.role == Role.MEMBER
    assert {r.table for r in state.routes} == {constants.VXLAN_TABLE}
    assert Rule(constants.RULE_PRIORITY, constants.VXLAN_TABLE) in state.rules


def test_uncontested_member_routes_go_to_main_and_the_rule_goes() -> None:
    state = member_plan()
    placed = place(state, ["0.0.0.0/0", "10.0.0.0/24", "10.244.2.3/32", "10.0.0.0/8"], OPTIONS)
    assert [r.dst for r in placed.routes] == [r.dst for r in state.routes]
    assert {r.table for r in placed.routes} == {constants.MAIN_TABLE}
    # Everything but the table is as planned: device, next hop, MTU, source.
    assert [replace(r, table=constants.VXLAN_TABLE) for r in placed.routes] == list(state.routes)
    assert placed.rules == ()
    assert "table main (metric 9027), no rule for them" in placed.notes[-1]


@pytest.mark.parametrize("foreign", [
    "10.244.10.0/24",    # the same prefix (flannel host-gw routes every node's subnet)
    "10.244.11.128/25",  # a more specific one inside ours
    "10.244.10.7/32",    # a host route inside ours
])
def test_a_foreign_route_that_would_win_keeps_the_rule(foreign: str) -> None:
    state = member_plan()
    placed = place(state, ["0.0.0.0/0", foreign], OPTIONS)
    assert placed.routes == state.routes and placed.rules == state.rules
    assert f"table main also routes {foreign}" in placed.notes[-1]
    assert "stay in table 9027 behind a policy rule" in placed.notes[-1]


def test_less_specific_and_other_family_routes_do_not_contest() -> None:
    assert contested(["10.244.10.0/24"], ["10.244.0.0/16", "0.0.0.0/0", "::/0",
                                          "fd00::/8", "not a cidr"]) == []
    assert contested(["fd00:10::/64"], ["fd00:10::1/128", "10.244.10.0/24"]) == [
        ("fd00:10::/64", "fd00:10::1/128")]


def test_dual_stack_moves_both_families_and_one_contested_family_keeps_every_rule() -> None:
    state = member_plan(dualstack=True)
    families = {r.family for r in state.rules}
    assert families == {4, 6}
    placed = place(state, [], OPTIONS)
    assert {r.table for r in placed.routes} == {constants.MAIN_TABLE} and placed.rules == ()
    kept = place(state, ["fd00:245::/64"], OPTIONS)
    assert kept.routes == state.routes and kept.rules == state.rules


def test_a_gateways_tunnel_routes_go_to_main_and_its_delivery_rule_stays() -> None:
    """The gateway's routes into the tunnel (table 9028) move to main and their selector-less
    rule goes; what comes out of the tunnel for its members still needs `iif raven-wg0 lookup
    9027` (only a rule can select on the input device), and table 9027 stays the delivery
    table."""
    gw = plan_node(two_pools(), "c1")
    assert gw.role == Role.ACTIVE_GATEWAY
    tunnel = [r for r in gw.routes if r.table == constants.WIREGUARD_TABLE]
    delivery = [r for r in gw.routes if r.table == constants.VXLAN_TABLE]
    assert tunnel and delivery
    assert Rule(constants.RULE_PRIORITY, constants.WIREGUARD_TABLE) in gw.rules
    placed = place(gw, ["0.0.0.0/0", "10.244.1.0/24"], OPTIONS)  # the CNI's route to c2: ours
    assert [replace(r, table=constants.WIREGUARD_TABLE) for r in placed.routes
            if r.table == constants.MAIN_TABLE] == tunnel
    assert [r for r in placed.routes if r.table == constants.VXLAN_TABLE] == delivery
    assert placed.rules == tuple(r for r in gw.rules if r.iif == "raven-wg0")
    assert placed.rules and all(r.table == constants.VXLAN_TABLE for r in placed.rules)
    assert "the rule for traffic from raven-wg0 stays" in placed.notes[-1]


def test_a_contested_gateway_keeps_both_rules() -> None:
    gw = plan_node(two_pools(), "c1")
    placed = place(gw, ["10.244.10.0/24"], OPTIONS)  # flannel host-gw: a remote node's subnet
    assert placed.routes == gw.routes and placed.rules == gw.rules
    assert "stay in table 9028 behind a policy rule" in placed.notes[-1]


def test_a_member_and_a_gateway_write_their_tunnel_routes_under_the_same_keys() -> None:
    """A failover replaces each route in main in place (device and next hop change): same
    prefixes, same table, same metric, and no rule to write on either side."""
    member = place(plan_node(two_pools(), "c2"), [], OPTIONS)
    gw = place(plan_node(two_pools(), "c1"), [], OPTIONS)
    assert ({r.dst for r in member.routes if r.table == constants.MAIN_TABLE}
            == {r.dst for r in gw.routes if r.table == constants.MAIN_TABLE})


def test_a_node_alone_is_left_as_planned() -> None:
    alone = plan_node([], "c9")
    assert alone.role == Role.ALONE
    assert place(alone, [], OPTIONS) is alone


def test_a_member_without_remote_routes_is_left_alone() -> None:
    state = member_plan()
    bare = replace(state, routes=(), rules=())
    assert place(bare, [], OPTIONS) is bare


def test_a_first_plan_without_remote_routes_writes_no_rule() -> None:
    """A node's first plan, before the remote pools are known (no routes yet), gets no rule:
    one rule written once would keep its namespace in policy-routing mode for good, after its
    routes went to main (seen in the lab: a member's first plan, 0 remote subnets, `rule add
    lookup 9027`)."""
    planned = plan_node([gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),
                                                    ("c2", "192.0.2.2", "10.244.1.0/24"))))],
                        "c2")
    assert planned.role == Role.MEMBER and not planned.routes
    assert [(r.table, r.iif) for r in planned.rules] == [(9027, "")]  # the planner's rule
    placed = place(planned, [], OPTIONS)
    assert placed.rules == ()
    assert any("no routes to the remote pools yet" in n for n in placed.notes)
    # an active gateway without remote pools alike
    alone_gw = plan_node([gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),)))],
                         "c1")
    assert alone_gw.role == Role.ACTIVE_GATEWAY
    assert place(alone_gw, [], OPTIONS).rules == ()


def test_other_routes_and_rules_of_a_member_are_kept() -> None:
    """Only the member's table-9027 routes and its selector-less rule move: anything else the
    plan holds stays where it is."""
    state = member_plan()
    extra_route = Route("192.0.2.0/24", 9100, "raven0")
    extra_rule = Rule(200, 9100)
    state = replace(state, routes=(*state.routes, extra_route), rules=(*state.rules, extra_rule))
    placed = place(state, [], OPTIONS)
    assert extra_route in placed.routes and placed.rules == (extra_rule,)


def _brute(ours: list[str], foreign: list[str]) -> set[tuple[str, str]]:
    out = set()
    for f in foreign:
        fn = ipaddress.ip_network(f)
        for o in ours:
            on = ipaddress.ip_network(o)
            if fn.version == on.version and fn.subnet_of(on):  # type: ignore[arg-type]
                out.add((o, str(fn)))
    return out


_v4 = st.builds(lambda a, n: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}",
                                                      strict=False)),
                st.integers(0, 2**32 - 1), st.integers(0, 32))


@settings(max_examples=300, deadline=None)
@given(st.lists(_v4, max_size=8, unique=True), st.lists(_v4, max_size=8))
def test_contested_is_what_comparing_every_pair_finds(ours: list[str], foreign: list[str]) -> None:
    """The supernet lookup finds exactly the pairs a comparison of every pair finds."""
    assert set(contested(ours, foreign)) == _brute(ours, foreign)


def test_cover_finds_every_subnet_of_ours_around_a_prefix_widest_first() -> None:
    cover = Cover(["10.2.0.0/16", "10.2.7.0/24", "fd00:2::/48", "not a cidr"])
    assert cover.around("10.2.7.9/32") == ["10.2.0.0/16", "10.2.7.0/24"]
    assert cover.around("10.2.0.0/16") == ["10.2.0.0/16"]
    assert cover.around("10.0.0.0/8") == []  # wider than ours: it loses to ours in main
    assert cover.around("10.3.0.0/24") == []
    assert cover.around("fd00:2:0:5::/64") == ["fd00:2::/48"]
    assert cover.around("10.2.0.0/16-broken") == []
