"""A member's routes in the main table (raven.route_placement): the kernel holds them as routes
of our protocol and metric, with no policy rule; another's route for the same prefix is never
touched (not by an apply, not by a move back to the rule, not by cleanup), and the move between
main and table 9027 leaves exactly one shape. Oracle: `ip -json route/rule`, never our reads."""

from __future__ import annotations

import pytest
from dp_states import gateway, member

from raven import constants
from raven.desired import WireGuardPeer
from raven.route_placement import place
from raven.settings import OverlaySettings

pytestmark = pytest.mark.root

PROTO = str(constants.ROUTE_PROTOCOL)
METRIC = constants.MAIN_ROUTE_METRIC


def in_main(state):
    """The planner's member shape (selector-less rule, table 9027) placed in main."""
    return place(state, [], OverlaySettings())


PEER = WireGuardPeer(public_key="xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                     endpoint="198.51.100.2:4500", allowed_ips=("10.2.0.0/16",), keepalive=25)


def main_routes(node, proto: str | None = None) -> list[dict]:
    extra = ["proto", proto] if proto else []
    return [r for r in node.ip_json("route", "show", "table", "main", *extra)
            if r["dst"].startswith("10.2.")]


def our_rules(node) -> list[dict]:
    return [r for r in node.rules() if r.get("table") not in ("local", "main", "default")]


def test_member_routes_in_main_carry_our_protocol_and_metric_and_no_rule(node) -> None:
    dp = node.dataplane()
    state = in_main(member(1, gateway=3, marked=False))
    assert [r.table for r in state.routes] == [254] and state.rules == ()
    dp.apply(state)
    routes = main_routes(node)
    assert [(r["dst"], r.get("protocol"), r.get("metric"), r["dev"]) for r in routes] == [
        ("10.2.0.0/16", PROTO, METRIC, "raven0")]
    assert our_rules(node) == []
    assert node.routes(9027) == []
    assert dp.apply(state).writes == 0  # what it reads back is what it wrote


def test_anothers_route_for_the_same_prefix_is_never_touched(node) -> None:
    """A CNI's route (metric 0) for our prefix wins over ours and survives every write of ours:
    apply, the move to table 9027 behind the rule, the move back, and cleanup."""
    dp = node.dataplane()
    planned = member(1, gateway=3, marked=False)
    dp.apply(in_main(planned))
    node.ip("route", "add", "blackhole", "10.2.0.0/16", "proto", "static")
    theirs = [r for r in main_routes(node) if r.get("protocol") == "static"]
    assert len(theirs) == 1 and theirs[0].get("metric", 0) == 0
    assert len(main_routes(node)) == 2  # both: ours at our metric, theirs winning at 0

    # The agent's next plan sees it and goes back to the rule (raven.route_placement).
    contested = place(planned, dp.foreign_main_routes(), OverlaySettings())
    assert contested.rules == planned.rules and contested.routes == planned.routes
    dp.apply(contested)
    assert main_routes(node) == theirs  # ours left main; theirs stayed
    assert {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"}
    assert [r["priority"] for r in our_rules(node)] == [100]

    dp.apply(in_main(planned))  # and back, while theirs is still there
    assert sorted((r.get("protocol"), r.get("metric", 0)) for r in main_routes(node)) == [
        (PROTO, METRIC), ("static", 0)]
    assert our_rules(node) == [] and node.routes(9027) == []

    dp.cleanup()
    assert main_routes(node) == theirs


def test_cleanup_of_a_new_process_finds_our_routes_in_main(node) -> None:
    """`raven agent cleanup` runs in a process that never applied: main is in its scope."""
    node.dataplane().apply(in_main(member(1, gateway=3, marked=False)))
    assert [r.get("protocol") for r in main_routes(node)] == [PROTO]
    node.dataplane().cleanup()
    assert main_routes(node) == []


def test_an_old_agents_rule_and_table_move_to_main_in_one_apply(node) -> None:
    dp = node.dataplane()
    old = member(1, gateway=3, marked=False)
    dp.apply(old)
    assert [r["priority"] for r in our_rules(node)] == [100]
    dp.apply(in_main(old))
    assert our_rules(node) == [] and node.routes(9027) == []
    assert [(r["dst"], r.get("protocol")) for r in main_routes(node)] == [("10.2.0.0/16", PROTO)]


def test_foreign_main_routes_are_read_from_the_kernel(node) -> None:
    dp = node.dataplane()
    dp.apply(in_main(member(1, gateway=3, marked=False)))
    node.ip("route", "add", "10.7.0.0/24", "dev", "raven0")
    node.ip("route", "add", "blackhole", "10.8.0.0/24")
    node.ip("-6", "route", "add", "blackhole", "fd00:8::/64")
    foreign = dp.foreign_main_routes()
    assert {"10.7.0.0/24", "10.8.0.0/24", "fd00:8::/64"} <= set(foreign)
    assert "10.2.0.0/16" not in foreign  # ours
    kernel = {r["dst"] for r in node.ip_json("route", "show", "table", "main")} - {"10.2.0.0/16"}
    assert kernel <= set(foreign)


def test_the_monitor_hears_main_only_where_it_concerns_ours(node) -> None:
    """A CNI's route per pod in main wakes nothing; a foreign route inside a subnet we route
    (it may contest ours), a route of our protocol, and the IPv6 equivalents do. Rules to main
    are never ours. Negative checks without sleeps: notifications arrive in order, so every
    change is followed by a marker in table 9027 and read until the marker's event."""
    from raven.dataplane.drift import ROUTE, EventStream
    from raven.route_placement import Cover

    node.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
    events = EventStream(netns_name=node.ns, own_ports=set, devices=set,
                         tables=lambda: {constants.MAIN_TABLE, 9027},
                         inside_ours=lambda p: bool(Cover(["10.2.0.0/16", "fd00:2::/48"])
                                                    .around(p)))
    markers = iter(f"10.66.{n}.0/24" for n in range(100))

    def heard(*change: str) -> list[tuple[str, str]]:
        node.ip(*change)
        marker = next(markers)
        node.ip("route", "add", "blackhole", marker, "table", "9027", "proto", "static")
        seen: list[tuple[str, str]] = []
        for _ in range(300):
            seen += events.drain(0.1)
            if (ROUTE, "route in table 9027 added/changed") in seen:
                return [e for e in seen if e != (ROUTE, "route in table 9027 added/changed")]
        raise AssertionError(f"the marker {marker} was never heard; heard {seen}")

    try:
        main_added = (ROUTE, "route in table 254 added/changed")
        assert heard("route", "add", "blackhole", "10.77.0.5/32", "proto", "static") == []
        assert heard("route", "add", "blackhole", "10.0.0.0/8", "proto", "static") == []
        assert heard("rule", "add", "priority", "200", "lookup", "main") == []
        assert heard("route", "add", "blackhole", "10.2.7.0/24", "proto", "static") == [
            main_added]
        assert heard("route", "add", "blackhole", "10.2.0.0/16", "proto", "static") == [
            main_added]
        assert heard("route", "add", "blackhole", "10.88.0.0/24", "proto", PROTO) == [
            main_added]
        assert heard("route", "del", "blackhole", "10.2.7.0/24") == [
            (ROUTE, "route in table 254 deleted")]
        assert heard("-6", "route", "add", "blackhole", "fd00:2:0:5::/64", "proto",
                     "static") == [main_added]
        assert heard("-6", "route", "add", "blackhole", "fd00:9::/64", "proto", "static") == []
    finally:
        events.close()


def test_a_gateways_tunnel_routes_in_main_and_the_failover_replaces_them_in_place(node) -> None:
    """An active gateway's routes into the tunnel go in main (protocol 82, metric 9027, via
    raven-wg0) and only its `iif raven-wg0` delivery rule stays; demoted to a member, the same
    keys are replaced in place by the member's routes over raven0, and the rule goes."""
    dp = node.dataplane()
    gw = in_main(gateway(1, members=(2,), peers=(PEER,), deliver={2: "10.1.2.0/24"}))
    assert {r.table for r in gw.routes} == {254, 9027}
    dp.apply(gw)
    assert [(r["dst"], r.get("protocol"), r.get("metric"), r["dev"])
            for r in main_routes(node)] == [("10.2.0.0/16", PROTO, METRIC, "raven-wg0")]
    assert [(r.get("iif"), r["table"]) for r in our_rules(node)] == [("raven-wg0", "9027")]
    assert [r["dst"] for r in node.routes(9027)] == ["10.1.2.0/24"]
    assert node.routes(9028) == []
    assert dp.apply(gw).writes == 0

    dp.apply(in_main(member(1, gateway=3, marked=False)))
    assert [(r["dst"], r.get("protocol"), r.get("metric"), r["dev"])
            for r in main_routes(node)] == [("10.2.0.0/16", PROTO, METRIC, "raven0")]
    assert our_rules(node) == [] and node.routes(9027) == []
