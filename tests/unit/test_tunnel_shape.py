"""raven.tunnel_shape: an active gateway's plan split into its node part and its tunnel namespace
(docs/tunnel-namespace.md), and everything else left exactly as planned without the switch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raven import route_placement
from raven.desired import Role, Route
from raven.topology import PlanOptions, plan_node, vtep_for
from raven.tunnel_shape import shape, veth_pair
from tests.unit.test_topology import PoolSpec, gateway, three_pools

ON = replace(PlanOptions(), tunnel_namespace=True)
REMOTE_OF_CLOUD = ("10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/24")


def ipv6_pools() -> list:
    """Two pools whose pods have IPv6 subnets: their gateways route IPv6 into the tunnel."""
    return [
        gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "fd00:1::/64"),
                                   ("c2", "192.0.2.2", "fd00:2::/64")),
                         public_ip="203.0.113.1")),
        gateway(PoolSpec("hz", (("h1", "198.51.100.1", "fd00:3::/64"),), nat=True)),
    ]


@pytest.mark.parametrize("node", ["c1", "c2", "h1", "h2", "s1"])
def test_switch_off_plans_are_todays(node: str) -> None:
    """Off by default, and off means the module leaves the plan of every role as it is (the
    very object), and a plan the planner makes has no tunnel part."""
    assert PlanOptions().tunnel_namespace is False
    plain = plan_node(three_pools(), node)
    assert plain.tunnel is None and plain.veth is None
    assert shape(plain, PlanOptions()) is plain
    assert shape(plain, ON) is plain or plain.role is Role.ACTIVE_GATEWAY


@pytest.mark.parametrize("node", ["c2", "h2"])
def test_members_are_unchanged_with_the_switch_on(node: str) -> None:
    assert plan_node(three_pools(), node, ON) == plan_node(three_pools(), node)


def test_gateway_node_part_has_no_tunnel_devices_and_no_delivery_rule() -> None:
    before = plan_node(three_pools(), "c1")
    assert any(r.iif == "raven-wg0" for r in before.rules)  # what the shape removes
    state = plan_node(three_pools(), "c1", ON)
    veth = veth_pair(ON)
    assert state.role is Role.ACTIVE_GATEWAY and state.pool == "cloud"
    assert (state.vxlan, state.wireguard, state.fdb, state.neighbours) == (None, None, (), ())
    assert state.veth == veth
    assert (veth.name, veth.peer, veth.address, veth.peer_address, veth.prefixlen,
            veth.mtu) == ("raven-tun0", "raven-tun1", "169.254.77.1", "169.254.77.2", 30, 1500)
    # the remote pools via the veth's far end, locked to the tunnel's MTU, sourced from the
    # node's own address (not the veth's), behind the selector-less rule as planned
    assert state.routes == tuple(Route(s, 9028, "raven-tun0", "169.254.77.2", 1420, "192.0.2.1")
                                 for s in REMOTE_OF_CLOUD)
    assert [(r.table, r.iif, r.fwmark) for r in state.rules] == [(9028, "", 0)]
    assert state.firewall == before.firewall
    sysctls = dict(state.sysctls)
    assert sysctls["net.ipv4.ip_forward"] == "1"
    assert sysctls["net.ipv4.conf.raven-tun0.rp_filter"] == "0"
    assert not any(".raven0." in k or ".raven-wg0." in k for k in sysctls)


def test_gateway_tunnel_part_holds_the_devices_and_routes_without_a_rule() -> None:
    before = plan_node(three_pools(), "c1")
    inside = plan_node(three_pools(), "c1", ON).tunnel
    assert inside is not None
    assert (inside.vxlan, inside.wireguard, inside.fdb, inside.neighbours) == (
        before.vxlan, before.wireguard, before.fdb, before.neighbours)
    assert inside.rules == () and inside.firewall is None
    assert inside.tunnel is None and inside.veth is None
    c2_vtep = vtep_for("192.0.2.2")[0]
    assert set(inside.routes) == {
        *(Route(s, 254, "raven-wg0") for s in REMOTE_OF_CLOUD),
        Route("10.244.1.0/24", 254, "raven0", c2_vtep),  # delivery to member c2
        Route("0.0.0.0/0", 254, "raven-tun1", "169.254.77.1"),  # everything else: the node
    }
    sysctls = dict(inside.sysctls)
    assert sysctls["net.ipv4.ip_forward"] == "1"
    assert sysctls["net.ipv4.conf.all.rp_filter"] == "0"
    for dev in ("raven0", "raven-wg0", "raven-tun1"):
        assert sysctls[f"net.ipv4.conf.{dev}.rp_filter"] == "0"
        assert sysctls[f"net.ipv4.conf.{dev}.accept_local"] == "1"


def test_gateway_without_members_is_shaped_too() -> None:
    """The shape follows the role, not the member count: the last member leaving (or the
    first joining) changes routes inside the tunnel namespace, never where the devices are."""
    with_member = plan_node(three_pools(), "c1", ON)
    pools = three_pools()
    pools[0] = gateway(PoolSpec("cloud", (("c1", "192.0.2.1", "10.244.0.0/24"),),
                                public_ip="203.0.113.1"))
    alone = plan_node(pools, "c1", ON)
    for state in (with_member, alone):
        assert state.tunnel is not None and state.veth == with_member.veth
        assert state.tunnel.vxlan == with_member.tunnel.vxlan
        assert state.vxlan is None and state.wireguard is None
    assert [r for r in alone.tunnel.routes if r.dev == "raven0"] == []
    assert [r for r in with_member.tunnel.routes if r.dev == "raven0"] != []


def test_placement_moves_the_node_routes_to_main_and_leaves_no_rule() -> None:
    """With nothing contesting them, the node's routes go to main and the node keeps no rule at
    all: neither namespace is in policy-routing mode."""
    placed = route_placement.place(plan_node(three_pools(), "c1", ON), [], ON)
    assert placed.rules == ()
    assert {r.table for r in placed.routes} == {254}
    assert placed.tunnel is not None and placed.tunnel.rules == ()


def test_placement_keeps_the_selectorless_rule_when_main_contests() -> None:
    placed = route_placement.place(plan_node(three_pools(), "c1", ON), ["10.245.0.0/24"], ON)
    assert [(r.table, r.iif) for r in placed.rules] == [(9028, "")]
    assert {r.table for r in placed.routes} == {9028}


def test_ipv6_gateway_keeps_todays_shape_with_a_note() -> None:
    plain = plan_node(ipv6_pools(), "c1")
    assert any(":" in r.dst and r.table == 9028 for r in plain.routes)  # routes IPv6 indeed
    state = plan_node(ipv6_pools(), "c1", ON)
    assert state.tunnel is None and state.veth is None
    assert replace(state, notes=()) == replace(plain, notes=())
    assert any("tunnel namespace not used" in n for n in state.notes)


def test_plan_serialises_with_its_tunnel_part() -> None:
    data = plan_node(three_pools(), "c1", ON).to_json()
    assert data["veth"]["peer"] == "raven-tun1"
    assert data["tunnel"]["wireguard"]["name"] == "raven-wg0"
    assert data["tunnel"]["tunnel"] is None
