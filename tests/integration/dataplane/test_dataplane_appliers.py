"""Each applier creates, updates and deletes; a second apply writes nothing. Real kernel, checked
with `ip -json`, `bridge -json fdb`, `nft -j` and sysctl, never with our own readers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from dp_states import VXLAN_MTU, WG_MTU, alone, member, vtep

from raven.dataplane import DataplaneError
from raven.desired import FdbEntry, NeighEntry, Route, Rule

pytestmark = pytest.mark.root


def test_member_state_is_created_and_second_apply_writes_nothing(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3, remote=("10.2.0.0/16", "10.3.0.0/24"))
    first = dp.apply(state)
    assert first.writes > 0

    link = node.link("raven0")
    info = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "vxlan"
    assert (info["id"], info["port"], info["local"]) == (200, 4472, "192.0.2.1")
    assert info.get("learning") is False
    assert link["mtu"] == VXLAN_MTU and link["address"] == vtep(1)[1]
    assert "UP" in link["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in node.ip_json("addr", "show", "dev", "raven0")[0]
             ["addr_info"] if a["family"] == "inet"}
    assert addrs == {("100.96.0.1", 24)}

    assert [(e["mac"], e["dst"]) for e in node.fdb("raven0")] == [(vtep(3)[1], "192.0.2.3")]
    assert "permanent" in node.fdb("raven0")[0]["state"]
    assert [(n["dst"], n["lladdr"]) for n in node.neighbours("raven0")] == [vtep(3)]

    routes = {r["dst"]: r for r in node.routes(9027)}
    assert set(routes) == {"10.2.0.0/16", "10.3.0.0/24"}
    for r in routes.values():
        assert r["gateway"] == "100.96.0.3" and r["dev"] == "raven0"
        assert "onlink" in r["flags"]
        assert r["metrics"] == [{"mtu": WG_MTU}] or {"mtu": WG_MTU} in r["metrics"]
    ours = [r for r in node.rules() if r.get("table") == "9027"]
    assert len(ours) == 1
    assert (ours[0]["priority"], ours[0]["fwmark"], ours[0]["fwmask"]) == (100, "0x40", "0x40")
    assert node.sysctl("net.ipv4.conf.raven0.rp_filter") == "0"
    assert node.sysctl("net.ipv4.conf.raven0.accept_local") == "1"

    again = dp.apply(state)
    assert again.writes == 0, again.changes
    assert again.changes == ()


def test_mutable_attributes_fixed_in_place_immutable_ones_recreate(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3)
    dp.apply(state)
    index = node.link("raven0")["ifindex"]

    smaller = replace(state, vxlan=replace(state.vxlan, mtu=1400))
    result = dp.apply(smaller)
    assert result.writes == 1, result.changes  # one link change, no recreate
    assert node.link("raven0")["mtu"] == 1400

    smaller = replace(smaller, vxlan=replace(smaller.vxlan, mac="02:52:00:00:09:09"))
    result = dp.apply(smaller)
    # The kernel flushes even permanent neighbours on a MAC change; the same apply restores it.
    assert "vxlan raven0: set mac 02:52:00:00:09:09" in result.changes
    assert [(n["dst"], n["lladdr"]) for n in node.neighbours("raven0")] == [vtep(3)]
    link = node.link("raven0")
    assert (link["ifindex"], link["mtu"], link["address"]) == (index, 1400, "02:52:00:00:09:09")
    assert dp.apply(smaller).writes == 0

    other_vni = replace(smaller, vxlan=replace(smaller.vxlan, vni=201))
    result = dp.apply(other_vni)
    assert any("recreate" in c and "vni 200 -> 201" in c for c in result.changes)
    link = node.link("raven0")
    assert link["ifindex"] != index and link["linkinfo"]["info_data"]["id"] == 201
    # Everything that hung off the old device is back on the new one.
    assert len(node.fdb("raven0")) == 1 and len(node.neighbours("raven0")) == 1
    assert {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"}
    assert dp.apply(other_vni).writes == 0


def test_existing_correct_device_is_adopted_without_writes(node) -> None:
    state = member(1, gateway=3)
    with node.dataplane() as first:
        first.apply(state)
    index = node.link("raven0")["ifindex"]
    # A new process (agent restart) finds everything right: nothing is written, nothing fails.
    dp = node.dataplane()
    result = dp.apply(state)
    assert result.writes == 0, result.changes
    assert node.link("raven0")["ifindex"] == index


def test_entries_routes_and_rules_update_and_delete(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3, remote=("10.2.0.0/16", "10.3.0.0/24"))
    dp.apply(state)
    gw4_ip, gw4_mac = vtep(4)
    moved = replace(
        state,
        fdb=(FdbEntry(mac=gw4_mac, dst="192.0.2.4"),),
        neighbours=(NeighEntry(ip=gw4_ip, mac=gw4_mac),),
        routes=(Route(dst="10.2.0.0/16", table=9027, dev="raven0", gateway=gw4_ip, mtu=1300),
                Route(dst="10.4.0.0/24", table=9027, dev="raven0", gateway=gw4_ip, mtu=1300)),
        rules=(Rule(priority=101, table=9027, fwmark=0x40, fwmask=0x40),),
    )
    result = dp.apply(moved)
    assert result.writes > 0
    assert [(e["mac"], e["dst"]) for e in node.fdb("raven0")] == [(gw4_mac, "192.0.2.4")]
    assert [(n["dst"], n["lladdr"]) for n in node.neighbours("raven0")] == [(gw4_ip, gw4_mac)]
    routes = {r["dst"]: r for r in node.routes(9027)}
    assert set(routes) == {"10.2.0.0/16", "10.4.0.0/24"}
    assert all(r["gateway"] == gw4_ip for r in routes.values())
    assert {"mtu": 1300} in routes["10.2.0.0/16"]["metrics"]
    assert [r["priority"] for r in node.rules() if r.get("table") == "9027"] == [101]
    assert dp.apply(moved).writes == 0

    dp.apply(alone())
    assert node.link("raven0") is None
    assert node.routes(9027) == []
    assert [r for r in node.rules() if r.get("table") == "9027"] == []
    assert ("inet", "raven") not in node.nft_tables()


def test_foreign_device_with_our_name_is_an_error_not_deleted(node) -> None:
    node.ip("link", "add", "raven0", "type", "veth", "peer", "name", "raven0p")
    dp = node.dataplane()
    with pytest.raises(DataplaneError, match="raven0 exists and is a veth"):
        dp.apply(member(1, gateway=3))
    assert node.link("raven0")["linkinfo"]["info_kind"] == "veth"
    node.ip("link", "del", "raven0")


def test_missing_namespace_is_a_clear_error(tmp_path) -> None:
    from raven.dataplane import Dataplane, DataplaneSettings

    with pytest.raises(DataplaneError, match=r"rvt-dp-absent.*does not exist"):
        Dataplane(DataplaneSettings(netns="rvt-dp-absent", state_dir=tmp_path))


def test_bad_backend_setting_names_the_field(tmp_path) -> None:
    from raven.dataplane import DataplaneSettings

    with pytest.raises(DataplaneError, match=r"wireguard_backend.*auto, kernel, userspace"):
        DataplaneSettings(state_dir=tmp_path, wireguard_backend="fast")


def test_ipv6_subnet_via_an_ipv4_vtep_is_refused_clearly(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3)
    v6 = Route(dst="fd00:2::/64", table=9027, dev="raven0", gateway=vtep(3)[0], mtu=WG_MTU)
    # Refused with a clear reason in `skipped`, and the IPv4 half still applied.
    bad = replace(state, routes=(*state.routes, v6))
    result = dp.apply(bad)
    (reason,) = result.skipped
    assert "cannot route an IPv6 subnet through an IPv4" in reason and "IPv4 applied" in reason
    assert {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"}
    again = dp.apply(bad)  # refused before any write: the steady state churns nothing
    assert (again.writes, again.changes, again.skipped) == (0, (), (reason,))
    # Device routes (the gateway side) work for IPv6 and are diffed like IPv4 ones.
    v6_dev = Route(dst="fd00:2::/64", table=9027, dev="raven0")
    state = replace(state, routes=(*state.routes, v6_dev),
                    rules=(*state.rules, Rule(priority=100, table=9027, fwmark=0x40,
                                              fwmask=0x40, family=6)))
    dp.apply(state)
    (route,) = node.ip_json("-6", "route", "show", "table", "9027")
    assert (route["dst"], route["dev"]) == ("fd00:2::/64", "raven0")
    assert [r["priority"] for r in node.ip_json("-6", "rule", "show")
            if r.get("table") == "9027"] == [100]
    assert dp.apply(state).writes == 0


def test_route_source_is_written_and_a_foreign_one_refused_by_name(node) -> None:
    node.ip("link", "add", "u0", "type", "veth", "peer", "name", "u1")
    node.ip("addr", "add", "192.0.2.1/24", "dev", "u0")
    dp = node.dataplane()
    state = member(1, gateway=3, src="192.0.2.1")
    dp.apply(state)
    (route,) = node.routes(9027)
    assert route["prefsrc"] == "192.0.2.1"
    assert dp.apply(state).writes == 0  # read back equal
    # A source that is not an address of the node: the kernel refuses it; the error says why.
    with pytest.raises(DataplaneError, match="only a local address as a route's source"):
        dp.apply(member(1, gateway=3, src="192.0.2.9"))
