"""The pure diffs of every data-plane applier, without root: desired + live -> changes."""

from __future__ import annotations

import base64
import ipaddress
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.dataplane import DataplaneError, DataplaneSettings
from raven.dataplane.appliers import neighbours, routes, rules, sysctls, vxlan
from raven.dataplane.appliers.routes import route_index
from raven.dataplane.families import ipv4_half
from raven.dataplane.firewall import (
    LiveFirewall,
    chain_specs,
    judge,
    masquerade_risk,
    plan_firewall,
    skeleton,
    skeleton_specs,
)
from raven.dataplane.links import LinkFacts, VxlanFacts
from raven.dataplane.nftnl import (
    NFT_SET_INTERVAL,
    LiveTable,
    comment_of,
    comment_userdata,
    decode_elements,
    interval_keys,
    table_messages,
)
from raven.dataplane.wireguard import device
from raven.dataplane.wireguard.model import LiveDevice, LivePeer, split_peers
from raven.desired import (
    FdbEntry,
    Firewall,
    NeighEntry,
    NodeState,
    Role,
    Route,
    Rule,
    VxlanDevice,
    WireGuardDevice,
    WireGuardPeer,
)
from raven.settings import OverlaySettings

KEY_A = base64.b64encode(bytes(range(1, 33))).decode()
KEY_B = base64.b64encode(bytes(range(2, 34))).decode()

# --- links and addresses ------------------------------------------------------------------------

WANT_VX = VxlanDevice(name="raven0", vni=200, port=4472, local_ip="192.0.2.1",
                      vtep_ip="100.96.0.1", vtep_prefixlen=24, mac="02:52:00:00:02:01", mtu=1450)


def vx_link(**changes: object) -> LinkFacts:
    facts = {"vni": 200, "port": 4472, "local": "192.0.2.1", "learning": False}
    link = {"index": 7, "name": "raven0", "kind": "vxlan", "mtu": 1450,
            "mac": "02:52:00:00:02:01", "up": True}
    for key, value in changes.items():
        (facts if key in facts else link)[key] = value
    return LinkFacts(**link, vxlan=VxlanFacts(**facts))  # type: ignore[arg-type]


def test_vxlan_diff_create_fix_recreate_delete() -> None:
    created = vxlan.diff(WANT_VX, "raven0", vxlan.VxlanLive(None))
    assert created.create == WANT_VX and created.delete is None
    assert created.addresses_add == (("100.96.0.1", 24),)
    assert ("up", True) in created.fix and created.lines[0].startswith("vxlan raven0: create")

    right = vxlan.VxlanLive(vx_link(), frozenset({("100.96.0.1", 24)}))
    assert vxlan.diff(WANT_VX, "raven0", right).empty()

    fixed = vxlan.diff(WANT_VX, "raven0", vxlan.VxlanLive(
        vx_link(mtu=1400, up=False), frozenset({("100.96.0.1", 24), ("198.18.0.1", 24)})))
    assert fixed.create is None and fixed.delete is None and fixed.index == 7
    assert dict(fixed.fix) == {"mtu": 1450, "up": True}
    assert fixed.addresses_del == (("198.18.0.1", 24),) and fixed.addresses_add == ()

    recreated = vxlan.diff(WANT_VX, "raven0", vxlan.VxlanLive(
        vx_link(vni=201), frozenset({("100.96.0.1", 24)})))
    assert recreated.delete == 7 and recreated.create == WANT_VX
    assert any("recreate (vni 201 -> 200)" in line for line in recreated.lines)
    assert recreated.addresses_add == (("100.96.0.1", 24),)  # the new device has none

    deleted = vxlan.diff(None, "raven0", right)
    assert deleted.delete == 7 and deleted.lines == ("vxlan raven0: delete",)
    assert vxlan.diff(None, "raven0", vxlan.VxlanLive(None)).empty()


def test_vxlan_diff_refuses_a_foreign_link_with_our_name() -> None:
    veth = LinkFacts(index=3, name="raven0", kind="veth", mtu=1500, mac="", up=True)
    with pytest.raises(DataplaneError, match="raven0 exists and is a veth"):
        vxlan.diff(WANT_VX, "raven0", vxlan.VxlanLive(veth))



WANT_VX6 = replace(WANT_VX, vtep_ip6="fd72:6176:656e:4::c000:201", vtep6_prefixlen=128)
BOTH = frozenset({("100.96.0.1", 24), ("fd72:6176:656e:4::c000:201", 128)})


def test_vxlan_diff_adds_and_removes_the_ipv6_vtep() -> None:
    created = vxlan.diff(WANT_VX6, "raven0", vxlan.VxlanLive(None))
    assert set(created.addresses_add) == BOTH
    assert not created.enable_ipv6  # a new device: apply() checks the inherited value

    v4_only = vxlan.VxlanLive(vx_link(), frozenset({("100.96.0.1", 24)}), ipv6_disabled=False)
    added = vxlan.diff(WANT_VX6, "raven0", v4_only)
    assert added.addresses_add == (("fd72:6176:656e:4::c000:201", 128),)
    assert added.addresses_del == () and not added.enable_ipv6
    assert added.lines == ("address add fd72:6176:656e:4::c000:201/128 dev raven0",)

    dual = vxlan.VxlanLive(vx_link(), BOTH, ipv6_disabled=False)
    assert vxlan.diff(WANT_VX6, "raven0", dual).empty()
    removed = vxlan.diff(WANT_VX, "raven0", dual)  # the plan stops routing IPv6
    assert removed.addresses_del == (("fd72:6176:656e:4::c000:201", 128),)
    assert removed.addresses_add == ()


def test_vxlan_diff_enables_ipv6_on_our_device_only_when_it_wants_ipv6() -> None:
    # The kernel removed the IPv6 VTEP when disable_ipv6 went to 1 on raven0.
    off = vxlan.VxlanLive(vx_link(), frozenset({("100.96.0.1", 24)}), ipv6_disabled=True)
    changes = vxlan.diff(WANT_VX6, "raven0", off)
    assert changes.enable_ipv6
    assert changes.lines[0] == "sysctl net.ipv6.conf.raven0.disable_ipv6 1 -> 0"
    assert changes.addresses_add == (("fd72:6176:656e:4::c000:201", 128),)
    assert vxlan.diff(WANT_VX, "raven0", off).empty()  # IPv4-only: IPv6 stays as the host has it


def test_vxlan_diff_recreates_when_the_underlay_family_changes() -> None:
    v6_underlay = replace(WANT_VX, local_ip="2001:db8::1")
    live = vxlan.VxlanLive(vx_link(), frozenset({("100.96.0.1", 24)}))
    changes = vxlan.diff(v6_underlay, "raven0", live)
    assert changes.delete == 7 and changes.create == v6_underlay
    assert any("local 192.0.2.1 -> 2001:db8::1" in line for line in changes.lines)
    same = vxlan.VxlanLive(vx_link(local="2001:db8::1"), frozenset({("100.96.0.1", 24)}))
    assert vxlan.diff(v6_underlay, "raven0", same).empty()


def test_ipv4_half_drops_every_ipv6_object_and_nothing_else() -> None:
    state = NodeState(
        node="m1", role=Role.MEMBER, pool="a", vxlan=WANT_VX6,
        fdb=(FdbEntry("02:52:00:00:02:03", "192.0.2.3"),),
        neighbours=(NeighEntry("100.96.0.3", "02:52:00:00:02:03"),
                    NeighEntry("fd72:6176:656e:4::c000:203", "02:52:00:00:02:03")),
        routes=(Route("10.2.0.0/16", 9027, "raven0", "100.96.0.3", 1420),
                Route("fd00:2::/64", 9027, "raven0", "fd72:6176:656e:4::c000:203", 1420)),
        rules=(Rule(100, 9027, 0x40, 0x40, 4), Rule(100, 9027, 0x40, 0x40, 6)),
        firewall=Firewall("raven", 0x40, 0x40, ("10.1.0.0/16", "fd00:1::/64"),
                          ("10.2.0.0/16", "fd00:2::/64")),
        sysctls=(("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")),
    )
    half = ipv4_half(state)
    assert half.vxlan == WANT_VX and half.fdb == state.fdb
    assert half.neighbours == state.neighbours[:1] and half.routes == state.routes[:1]
    assert half.rules == state.rules[:1] and half.sysctls == state.sysctls[:1]
    assert half.firewall is not None
    assert half.firewall.remote_subnets == ("10.2.0.0/16",)
    assert half.firewall.local_subnets == ("10.1.0.0/16",)
    assert ipv4_half(half) == half  # an IPv4-only plan is its own half: apply() then raises

# --- sysctls ----------------------------------------------------------------------------------


def test_sysctl_diff_and_the_implicit_src_valid_mark() -> None:
    state = NodeState(node="n", role=Role.MEMBER, pool="a", vxlan=WANT_VX,
                      firewall=Firewall("raven", 0x40, 0x40, (), ()),
                      sysctls=(("net.ipv4.ip_forward", "1"),))
    wanted = sysctls.wanted(state)
    assert wanted == (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.raven0.src_valid_mark", "1"))
    changes = sysctls.diff(wanted, {"net.ipv4.ip_forward": "1",
                                    "net.ipv4.conf.raven0.src_valid_mark": None})
    assert changes.writes == (("net.ipv4.conf.raven0.src_valid_mark", "1"),)
    assert sysctls.diff(wanted, dict(wanted)).empty()
    # No mark chains (an active gateway): nothing implicit.
    unmarked = replace(state, firewall=replace(state.firewall, marks=False))
    assert sysctls.wanted(unmarked) == state.sysctls


# --- FDB and neighbours ---------------------------------------------------------------------


def test_neighbour_diff_replaces_same_mac_or_ip_and_deletes_the_rest() -> None:
    want_fdb = (FdbEntry("02:52:00:00:02:03", "192.0.2.3"),)
    want_neigh = (NeighEntry("100.96.0.3", "02:52:00:00:02:03"),)
    live = neighbours.NeighLive(
        fdb=frozenset({FdbEntry("02:52:00:00:02:03", "192.0.2.9"),
                       FdbEntry("02:52:00:00:02:04", "192.0.2.4")}),
        neighbours=frozenset({NeighEntry("100.96.0.3", "02:52:00:00:02:09")}))
    changes = neighbours.diff(want_fdb, want_neigh, live)
    # Same MAC elsewhere: replaced by the add (no delete first, no window without an entry).
    assert changes.fdb_del == (FdbEntry("02:52:00:00:02:04", "192.0.2.4"),)
    assert changes.fdb_add == want_fdb
    assert changes.neigh_del == () and changes.neigh_add == want_neigh
    same = neighbours.NeighLive(frozenset(want_fdb), frozenset(want_neigh))
    assert neighbours.diff(want_fdb, want_neigh, same).empty()


# --- routes and rules -------------------------------------------------------------------------


def test_route_diff_adds_deletes_and_replaces_in_place() -> None:
    live = route_index([Route("10.2.0.0/16", 9027, "raven0", "100.96.0.3", 1420),
                        Route("10.9.0.0/24", 9027, "raven0", "100.96.0.3", 1420)], strict=False)
    want = route_index((Route("10.2.0.0/16", 9027, "raven0", "100.96.0.4", 1420),
                        Route("10.3.0.0/24", 9027, "raven0", "100.96.0.4", 1420)))
    changes = routes.diff(want, live)
    assert changes.delete == (("10.9.0.0/24", 9027, "raven0", "100.96.0.3", 1420, None),)
    # 10.2.0.0/16 moves to another next hop: replaced, never deleted first
    assert set(changes.add) == {("10.2.0.0/16", 9027, "raven0", "100.96.0.4", 1420, None),
                                ("10.3.0.0/24", 9027, "raven0", "100.96.0.4", 1420, None)}
    assert "route replace 10.3.0.0/24 table 9027 dev raven0 via 100.96.0.4 mtu 1420" in \
        changes.lines
    assert changes.want is want
    assert routes.diff(want, want).empty()
    with pytest.raises(DataplaneError, match="same route twice"):
        route_index((Route("10.2.0.0/16", 9027, "raven0"), Route("10.2.0.0/16", 9027, "raven0")))


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 40), max_size=12), st.sets(st.integers(0, 40), max_size=12))
def test_route_diff_applied_to_live_gives_desired(want_ids: set[int], live_ids: set[int]) -> None:
    def route(i: int) -> Route:
        return Route(f"10.{i}.0.0/16", 9028, "raven-wg0", None, 1420 if i % 3 else None)

    want = route_index(tuple(map(route, sorted(want_ids))))
    live = route_index(list(map(route, sorted(live_ids))), strict=False)
    changes = routes.diff(want, live)
    kernel: dict[tuple[str, int], tuple[object, ...]] = {}  # a kernel table: one route a place
    for shape, dsts in live.items():
        kernel.update({(dst, shape[0]): (dst, *shape) for dst in dsts})
    for key in changes.delete:
        kernel.pop((key[0], key[1]))
    for key in changes.add:
        kernel[(key[0], key[1])] = key
    assert set(kernel.values()) == {(d, *s) for s, ds in want.items() for d in ds}
    assert changes.empty() == (want_ids == live_ids)


def test_rule_diff_counts_duplicates() -> None:
    rule = Rule(priority=100, table=9027, fwmark=0x40, fwmask=0x40)
    other = Rule(priority=101, table=9027, fwmark=0x40, fwmask=0x40)
    changes = rules.diff((rule,), Counter({rule: 2, other: 1}))
    assert Counter(changes.delete) == Counter({rule: 1, other: 1}) and changes.add == ()
    assert rules.diff((rule, other), Counter()).add == (rule, other)
    assert rules.diff((rule,), Counter({rule: 1})).empty()


def test_rule_diff_replaces_the_old_fwmark_rule_by_the_selectorless_one() -> None:
    # The upgrade from the marked shape: the marked rules go, the plain ones come.
    plain4, plain6 = Rule(100, 9027), Rule(100, 9027, family=6)
    marked4, marked6 = Rule(100, 9027, 0x40, 0x40), Rule(100, 9027, 0x40, 0x40, 6)
    changes = rules.diff((plain4, plain6), Counter({marked4: 1, marked6: 1}))
    assert changes.delete == (marked4, marked6) and changes.add == (plain4, plain6)
    assert "rule add lookup 9027 priority 100" in changes.lines
    assert "rule del -6 fwmark 0x40/0x40 lookup 9027 priority 100" in changes.lines


def test_rule_diff_never_lets_a_wildcard_delete_hit_a_rule_that_stays() -> None:
    # The kernel deletes the FIRST rule matching the attributes sent; a rule without a mark is
    # sent without one, so its delete could remove a marked rule of the same place instead.
    plain, marked = Rule(100, 9027), Rule(100, 9027, 0x40, 0x40)
    changes = rules.diff((marked,), Counter({plain: 1, marked: 1}))
    # every rule of the place goes (the marked one first, by exact match), the wanted comes back
    assert changes.delete == (marked, plain) and changes.add == (marked,)
    # deleting both: marked ones first, so the wildcard delete finds only the plain one left
    both = rules.diff((), Counter({plain: 1, marked: 1}))
    assert both.delete == (marked, plain) and both.add == ()
    # an input device is a selector the delete matches exactly, like a mark
    # another place is not disturbed
    elsewhere = rules.diff((Rule(101, 9027, 0x40, 0x40),),
                           Counter({plain: 1, Rule(101, 9027, 0x40, 0x40): 1}))
    assert elsewhere.delete == (plain,) and elsewhere.add == ()


def test_rule_diff_turns_a_member_into_a_gateway_and_back() -> None:
    # member: `lookup 9027`; gateway: `iif raven-wg0 lookup 9027` at the same place
    member, gateway = Rule(100, 9027), Rule(100, 9027, iif="raven-wg0")
    to_gw = rules.diff((Rule(100, 9028), gateway), Counter({member: 1}))
    assert to_gw.delete == (member,) and set(to_gw.add) == {Rule(100, 9028), gateway}
    assert "rule add iif raven-wg0 lookup 9027 priority 100" in to_gw.lines
    # back: the iif rule is deleted by exact match, the plain one added
    back = rules.diff((member,), Counter({gateway: 1, Rule(100, 9028): 1}))
    assert set(back.delete) == {gateway, Rule(100, 9028)} and back.add == (member,)


SOME_RULES = [Rule(100, 9027), Rule(100, 9027, 0x40, 0x40), Rule(100, 9027, 0x80, 0x80),
              Rule(100, 9027, family=6), Rule(100, 9028), Rule(100, 9027, iif="raven-wg0"),
              Rule(100, 9027, family=6, iif="raven-wg0")]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(SOME_RULES), max_size=5),
       st.lists(st.sampled_from(SOME_RULES), max_size=5),
       st.randoms(use_true_random=False))
def test_rule_diff_applied_like_the_kernel_gives_desired(want: list[Rule], live: list[Rule],
                                                        rng: object) -> None:
    """A model of the kernel's rule list: deletes match the first rule whose attributes equal
    the ones sent (mark or input device left out = any); whatever order the live rules are
    in, the result is the desired multiset."""
    kernel = list(live)
    rng.shuffle(kernel)  # type: ignore[attr-defined]
    changes = rules.diff(tuple(want), Counter(live))
    for rule in changes.delete:
        hit = next(i for i, r in enumerate(kernel)
                   if (r.priority, r.table, r.family) == (rule.priority, rule.table, rule.family)
                   and (not (rule.fwmark or rule.fwmask)
                        or (r.fwmark, r.fwmask) == (rule.fwmark, rule.fwmask))
                   and (not rule.iif or r.iif == rule.iif))
        del kernel[hit]
    kernel += changes.add
    assert Counter(kernel) == Counter(want)


# --- nftables -------------------------------------------------------------------------------

FW = Firewall(table="raven", mark=0x40, mark_mask=0x40, local_subnets=("10.1.0.0/16",),
              remote_subnets=("10.2.0.0/16", "fd00:2::/64"))


GW_FW = replace(FW, marks=False)  # an active gateway's: no mark chains


def live_table(fingerprint: str, snat: bool = False, fw: Firewall = GW_FW,
               **changes: object) -> LiveTable:
    sets, rule_specs = skeleton_specs(fw, snat)
    values: dict[str, object] = {
        "sets": {s.name: NFT_SET_INTERVAL for s in sets},
        "chains": frozenset(c.name for c in chain_specs(fw.marks, snat)),
        "rules": tuple((r.chain, fingerprint) for r in rule_specs),
        "others": 0,
        "elements": {"remote4": ({"10.2.0.0/16"}, True), "remote6": (set(), True)},
    }
    values.update(changes)
    return LiveTable(**values)  # type: ignore[arg-type]


def test_firewall_judge_accepts_only_our_skeleton() -> None:
    fingerprint = skeleton(GW_FW)[1]
    ours = judge(live_table(fingerprint), fingerprint, marks=False)
    assert ours == LiveFirewall(True, {4: frozenset({"10.2.0.0/16"}), 6: frozenset()})
    assert judge(None, fingerprint) is None
    snat_fp = skeleton(GW_FW, snat=True)[1]
    with_snat = live_table(snat_fp, snat=True)
    assert judge(with_snat, snat_fp, snat=True, marks=False) == ours
    member_fp = skeleton(FW)[1]
    assert judge(live_table(member_fp, fw=FW), member_fp) == ours  # mark chains, no SNAT
    for broken in (
        live_table(fingerprint, others=1),  # a counter or flowtable someone added
        # the old shape: mark chains (and the SNAT chain) when no SNAT is wanted
        live_table(fingerprint, chains=frozenset({"prerouting", "output", "postrouting"}),
                   rules=(("prerouting", "raven:0000000000000000"),)),
        live_table(fingerprint, chains=frozenset({"postrouting"})),  # an empty extra chain
        with_snat,  # the SNAT chain when nothing can masquerade any more
        live_table(fingerprint, sets={"remote4": NFT_SET_INTERVAL}),
        live_table(fingerprint, elements={"remote4": ({"10.2.0.0/16"}, False),
                                          "remote6": (set(), True)}),  # a range, not a prefix
    ):
        judged = judge(broken, fingerprint, marks=False)
        assert judged is not None and not judged.fingerprint_ok, broken
    for broken in (
        live_table(fingerprint),  # no SNAT chain where one is wanted
        live_table("raven:0000000000000000", snat=True),  # an older skeleton
        live_table(snat_fp, snat=True, rules=with_snat.rules[1:]),  # a rule deleted
    ):
        judged = judge(broken, snat_fp, snat=True, marks=False)
        assert judged is not None and not judged.fingerprint_ok, broken
    # a member's table without its mark chains (a gateway's shape) is not a member's
    judged = judge(live_table(fingerprint), member_fp)
    assert judged is not None and not judged.fingerprint_ok


def test_masquerade_risk_is_any_other_postrouting_nat_chain() -> None:
    chains = [("inet", "raven", "postrouting", "nat", 4),  # ours: never a reason
              ("ip", "filter", "FORWARD", "filter", 2),
              ("ip", "nat", "PREROUTING", "nat", 0)]  # DNAT rewrites no source
    assert masquerade_risk(chains, "raven", []) == ()
    assert masquerade_risk([*chains, ("ip", "nat", "POSTROUTING", "nat", 4)], "raven", []) == (
        "ip nat POSTROUTING",)
    assert masquerade_risk([("inet", "cni", "post", "nat", 4)], "other", ["ip6 nat"]) == (
        "inet cni post", "iptables-legacy ip6 nat")
    assert masquerade_risk([("ip", "raven", "post", "nat", 4)], "raven", []) == (
        "ip raven post",)  # only `inet <ours>` is ours


def test_firewall_plan_builds_the_skeleton_the_risk_asks_for() -> None:
    plan = plan_firewall(FW, None, table="raven")
    assert plan.build == "create" and plan.snat_for == ()
    assert "no identity SNAT" in plan.changes[0]
    plan = plan_firewall(GW_FW, None, table="raven", snat_for=("ip nat POSTROUTING",))
    assert plan.snat_for == ("ip nat POSTROUTING",)
    assert "identity SNAT (could masquerade: ip nat POSTROUTING)" in plan.changes[0]
    stale = LiveFirewall(False, {4: frozenset(), 6: frozenset()})
    assert plan_firewall(FW, stale, table="raven").build == "rebuild"


def test_firewall_plan_deletes_the_table_when_nothing_is_desired() -> None:
    live = LiveFirewall(True, {4: frozenset(), 6: frozenset()})
    plan = plan_firewall(None, live, table="raven")
    assert plan.delete_table and plan.changes == ("nft table inet raven: delete",)
    assert plan_firewall(None, None, table="raven").empty()


def test_table_messages_name_sets_by_id_and_carry_the_fingerprint() -> None:
    sets, rule_specs = skeleton_specs(FW, snat=True)
    fingerprint = skeleton(FW, snat=True)[1]
    requests, ids = table_messages("raven", sets, chain_specs(True, True), rule_specs,
                                   fingerprint, replace=True)
    kinds = [r.msg_type & 0xFF for r in requests]
    # declare, delete, add table; 2 sets; 3 chains; 10 rules
    assert kinds == [0, 2, 0, 9, 9, 3, 3, 3] + [6] * 10
    assert ids == {"remote4": 1, "remote6": 2}
    assert all(comment_userdata(fingerprint) in r.body for r in requests[-10:])
    assert comment_of(comment_userdata(fingerprint)) == fingerprint
    fresh, _ids = table_messages("raven", sets, chain_specs(True, True), rule_specs,
                                 fingerprint, replace=False)
    assert [r.msg_type & 0xFF for r in fresh][:1] == [0] and len(fresh) == len(requests) - 2
    bare, _ids = table_messages("raven", *skeleton_specs(GW_FW)[:1], chain_specs(False, False),
                                (), skeleton(GW_FW)[1], replace=False)
    assert [r.msg_type & 0xFF for r in bare] == [0, 9, 9]  # table and sets, no chain


@settings(max_examples=80, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), max_size=10))
def test_interval_elements_decode_back_to_the_prefixes(raw: set[tuple[int, int]]) -> None:
    # Disjoint prefixes (what collapse() hands over): drop any nested in an earlier one.
    prefixes: list[ipaddress.IPv4Network] = []
    for value, length in sorted(raw, key=lambda r: r[1]):
        net = ipaddress.ip_network((value, length), strict=False)
        if not any(net.overlaps(p) for p in prefixes):
            prefixes.append(net)
    keys = [k for p in prefixes for k in interval_keys(str(p))]
    decoded, exact = decode_elements(keys)
    assert exact and decoded == {str(p) for p in prefixes}


def test_decode_elements_reports_ranges_that_are_not_prefixes() -> None:
    keys = [(bytes([10, 0, 0, 0]), False), (bytes([10, 0, 0, 3]), True)]  # 10.0.0.0-10.0.0.2
    assert decode_elements(keys) == (set(), False)
    top = interval_keys("255.255.255.0/24")
    assert decode_elements(top) == ({"255.255.255.0/24"}, True)
    assert decode_elements(interval_keys("fd00:2::/64")) == ({"fd00:2::/64"}, True)


# --- WireGuard ------------------------------------------------------------------------------


def wg_link(kind: str = "tun", mtu: int = 1420, up: bool = True) -> LinkFacts:
    return LinkFacts(index=9, name="raven-wg0", kind=kind, mtu=mtu, mac="", up=up)


def peer(key: str, pool: str, endpoint: str | None = "198.51.100.2:4500") -> WireGuardPeer:
    return WireGuardPeer(public_key=key, endpoint=endpoint, allowed_ips=("10.2.0.0/16",),
                         pool=pool)


def wg_diff(desired: WireGuardDevice | None, live: device.WgLive) -> device.WgChanges:
    return device.diff(desired, KEY_A, live, ifname="raven-wg0", requested="userspace",
                       userspace=True)


def test_wireguard_diff_skips_malformed_peers_and_keeps_the_others() -> None:
    desired = WireGuardDevice("raven-wg0", 4500, 1420, peers=(
        peer(KEY_B, "gw-good"), peer("short", "gw-short"), peer("AAAA", "gw-3bytes"),
        peer(KEY_A, "gw-bad-endpoint", endpoint="not-an-address:4500")))
    live = device.WgLive(wg_link(), LiveDevice(private_key=KEY_A, listen_port=4500))
    changes = wg_diff(desired, live)
    assert [p.public_key for p in changes.write.peers] == [KEY_B]
    assert len(changes.skipped) == 3
    short, three, endpoint = changes.skipped
    assert "'gw-short'" in short and "'short'" in short and "32-byte" in short
    assert "'gw-3bytes'" in three and "'AAAA'" in three
    assert "'gw-bad-endpoint'" in endpoint and "not-an-address:4500" in endpoint
    assert all("skipped" in s and "the other peers are applied" in s for s in changes.skipped)


def test_split_peers_never_prints_a_preshared_key() -> None:
    bad_psk = WireGuardPeer(public_key=KEY_B, endpoint=None, allowed_ips=(), pool="gw",
                            preshared_key="secret-but-malformed")
    valid, skipped = split_peers((bad_psk,))
    assert valid == () and "secret-but-malformed" not in skipped[0] and "preshared" in skipped[0]


def test_wireguard_diff_device_lifecycle() -> None:
    desired = WireGuardDevice("raven-wg0", 4500, 1420, peers=(peer(KEY_B, "gw"),))
    missing = wg_diff(desired, device.WgLive(None, None))
    assert missing.create and missing.fix_link and len(missing.write.peers) == 1
    in_sync = LiveDevice(KEY_A, 4500, {KEY_B: LivePeer(KEY_B, "198.51.100.2:4500",
                                                       frozenset({"10.2.0.0/16"}), 0, None)})
    assert wg_diff(desired, device.WgLive(wg_link(), in_sync)).empty()
    low = wg_diff(desired, device.WgLive(wg_link(mtu=1300), in_sync))
    assert low.fix_link and low.write.empty() and not low.create
    unreadable = wg_diff(desired, device.WgLive(wg_link(), None))
    assert unreadable.unreadable and not unreadable.empty()
    kernel = wg_diff(desired, device.WgLive(wg_link(kind="wireguard"), in_sync))
    assert kernel.create and "replace kernel device by userspace" in kernel.lines[0]
    removed = wg_diff(None, device.WgLive(wg_link(), in_sync))
    assert removed.remove == 9
    assert wg_diff(None, device.WgLive(None, None, daemon=True)).remove == 0
    assert wg_diff(None, device.WgLive(None, None)).empty()
    with pytest.raises(DataplaneError, match="raven-wg0 exists and is a veth"):
        wg_diff(desired, device.WgLive(wg_link(kind="veth"), None))


# --- settings -------------------------------------------------------------------------------


def test_dataplane_settings_take_the_overlay_names_from_overlay_settings(tmp_path) -> None:
    overlay = OverlaySettings(vxlan_device="ov0", wireguard_device="ovwg", nft_table="ov")
    settings = DataplaneSettings(state_dir=tmp_path, overlay=overlay)
    assert settings.overlay.tables == (overlay.vxlan_table, overlay.wireguard_table)
    with pytest.raises(DataplaneError, match=r"DataplaneSettings.overlay.*OverlaySettings"):
        DataplaneSettings(state_dir=tmp_path, overlay="raven0")  # type: ignore[arg-type]
    with pytest.raises(DataplaneError, match=r"wireguard_backend.*auto, kernel, userspace"):
        DataplaneSettings(state_dir=tmp_path, wireguard_backend="fast")
