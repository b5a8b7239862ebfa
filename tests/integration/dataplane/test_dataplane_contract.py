"""The appliers' contract on a real kernel: a malformed WireGuard peer is skipped and reported while
the others are applied (`wg show` as oracle), `observe()` reads and never writes (`ip`, `nft -j`,
`wg` show the drift still there afterwards), and our netlink-built nftables table is what
`nft -f` makes of the skeleton script (`nft list` of both compared)."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from conftest import run
from dp_states import gateway, member

from raven.dataplane import DataplaneError
from raven.dataplane.firewall import skeleton
from raven.dataplane.wireguard.keys import KEY_FILE
from raven.desired import WireGuardPeer

pytestmark = pytest.mark.root

KEY_P = base64.b64encode(bytes(range(1, 33))).decode()
KEY_Q = base64.b64encode(bytes(range(2, 34))).decode()


def peer(key: str, pool: str, subnet: str) -> WireGuardPeer:
    return WireGuardPeer(public_key=key, endpoint="198.51.100.2:4500", allowed_ips=(subnet,),
                         keepalive=25, pool=pool)


def test_malformed_peer_is_skipped_and_the_others_are_applied(node) -> None:
    dp = node.dataplane()
    bad = peer("short", "gw-broken", "10.3.0.0/16")  # e.g. a Node annotation "short"
    state = gateway(None, members=(), remote=("10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"),
                    peers=(peer(KEY_P, "gw-p", "10.2.0.0/16"), bad,
                           peer(KEY_Q, "gw-q", "10.4.0.0/16")))
    result = dp.apply(state)

    dump = node.wg_dump()
    assert set(dump) == {KEY_P, KEY_Q}  # a set: wireguard-go's print order is not ours
    assert dump[KEY_P]["allowed_ips"] == "10.2.0.0/16"
    assert dump[KEY_Q]["allowed_ips"] == "10.4.0.0/16"
    (skipped,) = result.skipped
    assert "'gw-broken'" in skipped and "'short'" in skipped and "32-byte" in skipped
    # Everything else of the plan is in the kernel too.
    assert {r["dst"] for r in node.routes(9028)} == {"10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"}

    again = dp.apply(state)
    assert again.writes == 0, again.changes
    assert again.skipped == result.skipped  # reported on every apply, for events/conditions
    status = dp.observe()
    assert status.drift == () and status.skipped == result.skipped
    assert {p.public_key for p in status.peers} == {KEY_P, KEY_Q}

    # The annotation is fixed: the peer appears, the others are untouched.
    key_r = base64.b64encode(bytes(range(3, 35))).decode()
    fixed = replace(state, wireguard=replace(state.wireguard, peers=tuple(sorted(
        (*[p for p in state.wireguard.peers if p is not bad],
         replace(bad, public_key=key_r))))))
    result = dp.apply(fixed)
    assert result.skipped == () and result.writes == 1, result.changes
    dump = node.wg_dump()
    assert set(dump) == {KEY_P, KEY_Q, key_r} and dump[key_r]["allowed_ips"] == "10.3.0.0/16"


def test_observe_reports_drift_and_writes_nothing(node) -> None:
    dp = node.dataplane()
    state = gateway(1, members=(2,), remote=("10.2.0.0/16", "10.3.0.0/24"),
                    peers=(peer(KEY_P, "gw-p", "10.2.0.0/16"),
                           peer(KEY_Q, "gw-q", "10.3.0.0/24")))
    dp.apply(state)
    assert dp.apply(state).writes == 0  # every cache warm
    assert dp.observe().drift == ()

    node.ip("route", "del", "10.2.0.0/16", "table", "9028")
    node.exec("nft", "delete", "element", "inet", "raven", "remote4", "{ 10.3.0.0/24 }")
    node.wg("set", "raven-wg0", "peer", KEY_Q, "remove")  # nothing notifies this one
    before = (node.routes(9028), node.nft("list", "set", "inet", "raven", "remote4"),
              node.wg_dump(), node.rules(), node.fdb("raven0"))

    drift = dp.observe().drift
    assert "route replace 10.2.0.0/16 table 9028 dev raven-wg0" in drift
    assert "nft remote4 add 1 elements" in drift
    assert any(line.startswith(f"wireguard peer {KEY_Q} add") for line in drift)
    assert len(drift) == 3, drift
    # observe() wrote nothing: the kernel is exactly as the foreign changes left it.
    assert (node.routes(9028), node.nft("list", "set", "inet", "raven", "remote4"),
            node.wg_dump(), node.rules(), node.fdb("raven0")) == before
    assert dp.observe().drift == drift  # and reads give the same answer again

    # The next apply changes exactly what observe reported.
    result = dp.apply(state)
    assert sorted(result.changes) == sorted(drift) and result.writes == 3
    assert {r["dst"] for r in node.routes(9028)} == {"10.2.0.0/16", "10.3.0.0/24"}
    assert set(node.wg_dump()) == {KEY_P, KEY_Q}
    assert dp.observe().drift == ()


def test_observe_with_the_key_file_gone_creates_no_key_and_keeps_the_identity(node) -> None:
    """observe() never loads the key from disk: loading makes a new key when the file is gone
    (a write, and a new identity under the peers' feet). It compares with the applied key."""
    dp = node.dataplane()
    state = gateway(None, members=(), remote=("10.2.0.0/16",),
                    peers=(peer(KEY_P, "gw-p", "10.2.0.0/16"),))
    dp.apply(state)
    key_file = node.state_dir / KEY_FILE
    applied = key_file.read_text().strip()
    assert node.wg("show", "raven-wg0", "private-key").strip() == applied

    key_file.unlink()
    files = sorted(p.relative_to(node.state_dir) for p in node.state_dir.rglob("*"))
    status = dp.observe()
    assert not key_file.exists()  # no new key written
    assert sorted(p.relative_to(node.state_dir) for p in node.state_dir.rglob("*")) == files
    assert status.wireguard and status.drift == ()  # compared with the key the device has
    assert node.wg("show", "raven-wg0", "private-key").strip() == applied


FOREIGN_NAT = ("table ip nat { chain POSTROUTING { type nat hook postrouting priority srcnat; "
               "policy accept; }; }\n")


@pytest.mark.parametrize(("marks", "snat"), [(True, False), (True, True), (False, False)],
                         ids=["member", "member-foreign-nat", "gateway"])
def test_netlink_table_is_what_nft_makes_of_the_skeleton_script(make_node, marks, snat) -> None:
    ours, reference = make_node(), make_node()
    if snat:  # another table's postrouting nat chain (iptables-nft's, say): the SNAT chain
        run("ip", "netns", "exec", ours.ns, "nft", "-f", "-", input=FOREIGN_NAT)
    state = member(1, gateway=3, remote=("10.2.0.0/16", "10.3.0.0/24", "10.3.0.0/25"))
    state = replace(state, firewall=replace(state.firewall, marks=marks))
    ours.dataplane().apply(state)
    script = skeleton(state.firewall, snat)[0]
    script += "add element inet raven remote4 { 10.2.0.0/16, 10.3.0.0/24 }\n"
    run("ip", "netns", "exec", reference.ns, "nft", "-f", "-", input=script)

    def listing(node) -> str:
        return run("ip", "netns", "exec", node.ns, "nft", "list", "table", "inet",
                   "raven").stdout

    assert listing(ours) == listing(reference)
    assert "10.3.0.0/25" not in listing(ours)  # nested subnets collapse into the wider one
    assert ("priority srcnat - 10" in listing(ours)) == snat
    assert ("type route hook output" in listing(ours)) == marks


def test_plan_with_other_overlay_names_is_refused_before_any_write(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3)
    other = replace(state, vxlan=replace(state.vxlan, name="ov0"))
    with pytest.raises(DataplaneError, match=r"'ov0'.*overlay.vxlan_device is 'raven0'"):
        dp.apply(other)
    assert node.link("ov0") is None and node.link("raven0") is None
    assert ("inet", "raven") not in node.nft_tables()
