"""Drift repair (next apply, and within ~1 s through the netlink monitor) and `raven agent
cleanup` removing only what is ours. Changes are made from outside with `ip`/`bridge`/`nft`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run
from dp_states import gateway, member, vtep

from raven.desired import WireGuardPeer

pytestmark = pytest.mark.root

PEER = WireGuardPeer(public_key="xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                     endpoint="198.51.100.2:4500", allowed_ips=("10.2.0.0/16",), keepalive=25)


def test_next_apply_restores_what_was_changed_from_outside(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3)
    dp.apply(state)
    assert dp.apply(state).writes == 0  # caches warm

    node.ip("route", "del", "10.2.0.0/16", "table", "9027")
    node.ip("rule", "del", "priority", "100")
    node.ip("route", "add", "10.9.0.0/24", "dev", "raven0", "table", "9027")  # stray, in our table
    run("bridge", "-n", node.ns, "fdb", "del", vtep(3)[1], "dev", "raven0", "dst", "192.0.2.3")
    node.ip("link", "set", "raven0", "mtu", "1300")

    result = dp.apply(state)
    assert result.writes >= 5, result.changes
    assert {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"}
    assert [r["priority"] for r in node.rules() if r.get("table") == "9027"] == [100]
    assert [(e["mac"], e["dst"]) for e in node.fdb("raven0")] == [(vtep(3)[1], "192.0.2.3")]
    assert node.link("raven0")["mtu"] == 1450
    assert dp.apply(state).writes == 0


def test_monitor_repairs_drift_within_a_second(node, wait) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3)
    dp.apply(state)
    calls: list[tuple[str, ...]] = []

    def repair(reasons: tuple[str, ...]) -> None:
        calls.append(reasons)
        dp.repair()

    dp.watch_drift(repair)

    node.ip("route", "del", "10.2.0.0/16", "table", "9027")
    assert wait(lambda: {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"})

    run("bridge", "-n", node.ns, "fdb", "del", vtep(3)[1], "dev", "raven0", "dst", "192.0.2.3")
    assert wait(lambda: len(node.fdb("raven0")) == 1)

    node.ip("rule", "del", "priority", "100")
    assert wait(lambda: [r["priority"] for r in node.rules() if r.get("table") == "9027"] == [100])

    node.ip("neigh", "del", vtep(3)[0], "dev", "raven0")
    assert wait(lambda: len(node.neighbours("raven0")) == 1)
    assert any("route in table 9027" in r for c in calls for r in c)

    # Foreign changes elsewhere do not wake the monitor up. First a marker ends what the
    # repairs above may still wake (the kernel reports VXLAN FDB writes with port 0, so our own
    # FDB repair wakes the monitor once more): netlink delivers events in order, so once the
    # marker is repaired every earlier event has been read, and what comes after it is ours.
    node.ip("route", "del", "10.2.0.0/16", "table", "9027")
    assert wait(lambda: {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"})
    seen = len(calls)
    node.ip("route", "add", "198.18.0.0/24", "dev", "lo", "table", "100")
    node.ip("route", "del", "198.18.0.0/24", "dev", "lo", "table", "100")
    node.ip("rule", "add", "fwmark", "0x80", "lookup", "100", "priority", "300")
    # A marker the monitor must see: netlink delivers events in order, so once the monitor has
    # reacted to the marker it has also read (and ignored) the foreign changes made before it.
    # No timed wait decides this check.
    node.ip("route", "del", "10.2.0.0/16", "table", "9027")
    assert wait(lambda: {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/16"})
    woken = [reason for call in calls[seen:] for reason in call]
    assert woken and all("9027" in reason for reason in woken), woken


def test_cli_cleanup_removes_only_ours(node) -> None:
    # Foreign objects of every kind we also own.
    node.ip("link", "add", "fx0", "type", "veth", "peer", "name", "fx1")
    node.ip("addr", "add", "198.18.0.1/24", "dev", "fx0")
    node.ip("link", "set", "fx0", "up")
    node.ip("route", "add", "198.18.5.0/24", "dev", "fx0", "table", "100")
    node.ip("rule", "add", "fwmark", "0x80", "lookup", "100", "priority", "200")
    node.ip("neigh", "add", "198.18.0.9", "lladdr", "02:00:00:00:00:09", "dev", "fx0",
            "nud", "permanent")
    run("ip", "netns", "exec", node.ns, "nft", "-f", "-",
        input="table ip nat { chain post { type nat hook postrouting priority srcnat; "
              "masquerade; }; }\ntable inet filter { chain input { type filter hook input "
              "priority 0; }; }\n")
    foreign = {
        "links": {link["ifname"] for link in node.ip_json("link", "show")},
        "routes100": node.routes(100),
        "main": node.ip_json("route", "show"),
        "rules": [r for r in node.rules() if r.get("table") != "9028"],
        "neigh": node.neighbours("fx0"),
        "nft": node.nft_tables(),
    }

    state = gateway(1, members=(2,), peers=(PEER,))
    with node.dataplane() as dp:
        dp.apply(state)
        public = dp.public_key()
    pid = int((node.state_dir / "wireguard-go.raven-wg0.pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    assert node.link("raven0") and node.link("raven-wg0")
    assert node.routes(9028) and ("inet", "raven") in node.nft_tables()

    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-m", "raven.cli", "agent", "cleanup", "--netns", node.ns,
         "--state-dir", str(node.state_dir), "--wireguard-run-dir", str(node.run_dir)],
        capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "delete link raven0" in proc.stdout
    assert "stop wireguard-go for raven-wg0" in proc.stdout

    assert node.link("raven0") is None and node.link("raven-wg0") is None
    assert node.routes(9027) == [] and node.routes(9028) == []
    assert not Path(f"/proc/{pid}").exists() or "wireguard-go" not in Path(
        f"/proc/{pid}/cmdline").read_text()
    assert ("inet", "raven") not in node.nft_tables()
    # ... and nothing else.
    assert {link["ifname"] for link in node.ip_json("link", "show")} == foreign["links"] - {
        "raven0", "raven-wg0"}
    assert node.routes(100) == foreign["routes100"]
    assert node.ip_json("route", "show") == foreign["main"]
    assert node.rules() == foreign["rules"]
    assert node.neighbours("fx0") == foreign["neigh"]
    assert node.nft_tables() == foreign["nft"] - {("inet", "raven")}
    assert {("ip", "nat"), ("inet", "filter")} <= node.nft_tables()
    # The node's identity survives cleanup.
    with node.dataplane() as dp:
        assert dp.public_key() == public

    again = subprocess.run(
        [sys.executable, "-m", "raven.cli", "agent", "cleanup", "--netns", node.ns,
         "--state-dir", str(node.state_dir)],
        capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert again.returncode == 0 and "nothing of ours" in again.stdout


def test_cleanup_is_every_appliers_removal_and_leaves_a_foreign_link_of_our_name(node) -> None:
    # A member's whole state, then a foreign link named like our WireGuard device (a veth):
    # cleanup removes the nft table, rules, routes, FDB/neighbour entries and raven0, reports
    # each, and leaves the foreign raven-wg0 alone (not ours: no error, no delete).
    dp = node.dataplane()
    dp.apply(member(1, gateway=2))
    assert node.fdb("raven0") and node.neighbours("raven0")
    node.ip("link", "add", "raven-wg0", "type", "veth", "peer", "name", "rvt-peer")
    removed = dp.cleanup()
    assert "delete nft table inet raven" in removed
    assert any(line.startswith("rule del ") for line in removed)
    assert any(line.startswith("route del ") for line in removed)
    assert any(line.startswith("fdb del ") for line in removed)
    assert any(line.startswith("neigh del ") for line in removed)
    assert removed[-1] == "delete link raven0"  # the devices go last, VXLAN after WireGuard
    assert removed.index("delete nft table inet raven") == 0  # nftables first
    assert node.link("raven0") is None
    assert node.link("raven-wg0")["linkinfo"]["info_kind"] == "veth"  # the foreign one stays
    assert ("inet", "raven") not in node.nft_tables()
    assert [r for r in node.rules() if r.get("table") in ("9027", "9028")] == []
    assert node.routes(9027) == [] and node.routes(9028) == []
    assert dp.cleanup() == []  # nothing of ours is left
    node.ip("link", "del", "raven-wg0")
