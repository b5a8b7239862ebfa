"""WireGuard between two gateways, userspace backend (wireguard-go) end to end, checked with
`wg show ... dump` and real pings; the kernel backend where the kernel has the module."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run
from dp_states import WG_MTU, gateway

from raven.dataplane import DataplaneError
from raven.desired import WireGuardPeer

pytestmark = pytest.mark.root

PSK = base64.b64encode(bytes(range(100, 132))).decode()


def pair(make_node):
    a, b = make_node(), make_node()
    a.ip("link", "add", "w0", "type", "veth", "peer", "name", "w0", "netns", b.ns)
    for node, underlay, pod in ((a, "198.51.100.1/24", "10.1.0.1/32"),
                                (b, "198.51.100.2/24", "10.2.0.1/32")):
        node.ip("addr", "add", underlay, "dev", "w0")
        node.ip("link", "set", "w0", "up")
        node.ip("route", "add", "default", "dev", "w0")
        node.ip("addr", "add", pod, "dev", "lo")
    return a, b


def states(key_a: str, key_b: str, psk: str | None = None):
    # A is under NAT: it keeps the mapping open (keepalive) and B learns A's endpoint.
    a = gateway(None, members=(), remote=("10.2.0.0/16",), local=("10.1.0.0/16",),
                peers=(WireGuardPeer(public_key=key_b, endpoint="198.51.100.2:4500",
                                     allowed_ips=("10.2.0.0/16",), keepalive=25,
                                     preshared_key=psk),))
    b = gateway(None, members=(), remote=("10.1.0.0/16",), local=("10.2.0.0/16",),
                peers=(WireGuardPeer(public_key=key_a, endpoint=None,
                                     allowed_ips=("10.1.0.0/16",), preshared_key=psk),))
    return a, b


def ping(node, source: str, target: str, size: int = 56):
    return node.exec("ping", "-n", "-q", "-c", "2", "-W", "3", "-i", "0.2", "-M", "do", "-s",
                     str(size), "-I", source, target, check=False)


def test_userspace_tunnel_end_to_end(make_node, wait) -> None:
    a, b = pair(make_node)
    dpa, dpb = a.dataplane(wireguard_backend="auto"), b.dataplane()
    key_a, key_b = dpa.public_key(), dpb.public_key()
    sa, sb = states(key_a, key_b)
    dpa.apply(sa)
    dpb.apply(sb)
    assert dpa.observe().wireguard_backend == "userspace"  # auto: this kernel has no module

    # Keys: created once, 0600, and the public key is what `wg pubkey` derives.
    key_file = a.state_dir / "wireguard.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    derived = subprocess.run(["wg", "pubkey"], input=key_file.read_text(), text=True,
                             capture_output=True, check=True).stdout.strip()
    assert derived == key_a
    assert a.wg("show", "raven-wg0", "public-key").strip() == key_a
    assert a.wg("show", "raven-wg0", "listen-port").strip() == "4500"
    assert a.link("raven-wg0")["mtu"] == WG_MTU

    peer_b = a.wg_dump()[key_b]
    assert (peer_b["endpoint"], peer_b["allowed_ips"], peer_b["keepalive"]) == (
        "198.51.100.2:4500", "10.2.0.0/16", "25")
    assert b.wg_dump()[key_a]["endpoint"] == "(none)"

    assert wait(lambda: ping(a, "10.1.0.1", "10.2.0.1").returncode == 0, timeout=60)
    payload = WG_MTU - 28
    assert ping(a, "10.1.0.1", "10.2.0.1", size=payload).returncode == 0
    assert ping(b, "10.2.0.1", "10.1.0.1", size=payload).returncode == 0
    assert ping(a, "10.1.0.1", "10.2.0.1", size=payload + 1).returncode != 0

    # B learned A's endpoint from the handshake; applying "endpoint None" again keeps it.
    assert b.wg_dump()[key_a]["endpoint"] == "198.51.100.1:4500"
    assert dpb.apply(sb).writes == 0
    assert dpa.apply(sa).writes == 0
    assert b.wg_dump()[key_a]["endpoint"] == "198.51.100.1:4500"
    status = dpa.observe()
    assert len(status.peers) == 1 and status.peers[0].handshake_age_s is not None
    assert status.peers[0].rx_bytes > 0 and status.drift == ()

    # Allowed IPs: an addition is written without disturbing the session; a removal replaces.
    handshake = a.wg_dump()[key_b]["handshake"]
    wider = replace(sa, wireguard=replace(sa.wireguard, peers=(replace(
        sa.wireguard.peers[0], allowed_ips=("10.2.0.0/16", "10.3.0.0/24")),)))
    assert dpa.apply(wider).writes == 1  # one UAPI set: the added allowed IP only
    assert set(a.wg_dump()[key_b]["allowed_ips"].split(",")) == {"10.2.0.0/16", "10.3.0.0/24"}
    assert a.wg_dump()[key_b]["handshake"] == handshake
    dpa.apply(sa)
    assert a.wg_dump()[key_b]["allowed_ips"] == "10.2.0.0/16"
    assert ping(a, "10.1.0.1", "10.2.0.1").returncode == 0

    # Pre-shared key on both sides: still a working tunnel.
    pa, pb = states(key_a, key_b, psk=PSK)
    dpa.apply(pa)
    dpb.apply(pb)
    assert a.wg_dump()[key_b]["psk"] == PSK
    assert wait(lambda: ping(a, "10.1.0.1", "10.2.0.1").returncode == 0, timeout=60)
    assert dpa.apply(pa).writes == 0

    # Removing the peer.
    dpa.apply(replace(pa, wireguard=replace(pa.wireguard, peers=())))
    assert a.wg_dump() == {}


def test_agent_restart_is_hitless_and_readopts_wireguard_go(make_node, wait) -> None:
    a, b = pair(make_node)
    with a.dataplane() as first:
        key_a = first.public_key()
        dpb = b.dataplane()
        key_b = dpb.public_key()
        sa, sb = states(key_a, key_b)
        first.apply(sa)
        dpb.apply(sb)
        pid = int((a.state_dir / "wireguard-go.raven-wg0.pid").read_text())
        assert wait(lambda: ping(a, "10.1.0.1", "10.2.0.1").returncode == 0, timeout=60)
    # The data plane object is gone (the agent exited): the tunnel keeps working.
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"wireguard-go")
    assert ping(a, "10.1.0.1", "10.2.0.1").returncode == 0
    # The next agent adopts it: same process, same key, nothing to write.
    again = a.dataplane()
    assert again.public_key() == key_a
    result = again.apply(sa)
    assert result.writes == 0, result.changes
    assert int((a.state_dir / "wireguard-go.raven-wg0.pid").read_text()) == pid
    # ... and only cleanup stops it.
    again.cleanup()
    assert wait(lambda: not Path(f"/proc/{pid}").exists()
                or b"wireguard-go" not in Path(f"/proc/{pid}/cmdline").read_bytes())
    assert a.link("raven-wg0") is None


def test_wireguard_go_survives_sigterm_of_the_agent_process(make_node, tmp_path, wait) -> None:
    """A real agent-like process applies, gets SIGTERM; wireguard-go (own session) lives on."""
    a = make_node()
    script = tmp_path / "agent.py"
    script.write_text(
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from raven.dataplane import Dataplane, DataplaneSettings\n"
        "from raven.desired import NodeState, Role, WireGuardDevice\n"
        f"s = DataplaneSettings(netns={a.ns!r}, state_dir=Path({str(a.state_dir)!r}),\n"
        f"    wireguard_backend='userspace', wireguard_run_dir=Path({str(a.run_dir)!r}))\n"
        "dp = Dataplane(s)\n"
        "dp.apply(NodeState(node='a', role=Role.ACTIVE_GATEWAY, pool='a', vxlan=None,\n"
        "    wireguard=WireGuardDevice('raven-wg0', 4500, 1420, ())))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pid = int((a.state_dir / "wireguard-go.raven-wg0.pid").read_text())
        proc.terminate()
        proc.wait(timeout=10)
        assert Path(f"/proc/{pid}").exists()
        assert a.wg("show", "raven-wg0", "listen-port").strip() == "4500"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kernel_backend(make_node) -> None:
    node = make_node()
    dp = node.dataplane(wireguard_backend="kernel")
    state = gateway(None, members=(), peers=())
    try:
        dp.apply(state)
    except DataplaneError as exc:
        if "no wireguard driver" in str(exc):
            pytest.skip("this kernel has no wireguard module: the kernel (generic netlink) "
                        "backend cannot run here; tests/vm runs this test in a VM with one")
        raise
    assert node.link("raven-wg0")["linkinfo"]["info_kind"] == "wireguard"
    assert run("ip", "netns", "exec", node.ns, "wg", "show", "raven-wg0", "listen-port"
               ).stdout.strip() == "4500"
    assert dp.apply(state).writes == 0


KEY_P = base64.b64encode(bytes(range(1, 33))).decode()
KEY_Q = base64.b64encode(bytes(range(2, 34))).decode()


def peer(key: str, *nets: str) -> WireGuardPeer:
    return WireGuardPeer(public_key=key, endpoint="198.51.100.9:4500",
                         allowed_ips=tuple(sorted(nets)), keepalive=0)


def test_written_state_cache_removes_one_ip_and_repair_rereads(make_node) -> None:
    """apply diffs wireguard-go against what it last wrote (no full `get`); a single removed
    allowed IP leaves only that IP (no throwaway peer left over), and a foreign `wg set` that the
    cache cannot see is repaired by `repair()` (which reads the device in full)."""
    node = make_node()
    dp = node.dataplane(wireguard_backend="userspace")
    nets = ("10.2.0.0/24", "10.2.2.0/24", "10.2.4.0/24")
    full = gateway(None, members=(), remote=nets, peers=(peer(KEY_P, *nets), peer(KEY_Q)))
    dp.apply(full)
    assert dp.apply(full).writes == 0
    fewer = gateway(None, members=(), remote=nets[:1] + nets[2:],
                    peers=(peer(KEY_P, nets[0], nets[2]), peer(KEY_Q)))
    assert dp.apply(fewer).writes == 3  # route, nft element, one allowed-IP removal
    dump = node.wg_dump()
    assert set(dump) == {KEY_P, KEY_Q}  # the throwaway peer is gone
    assert set(dump[KEY_P]["allowed_ips"].split(",")) == {nets[0], nets[2]}
    assert dump[KEY_Q]["allowed_ips"] == "(none)"
    assert dp.apply(fewer).writes == 0
    # A foreign change: the cache still believes the device is as written...
    node.wg("set", "raven-wg0", "peer", KEY_Q, "remove")
    node.wg("set", "raven-wg0", "peer", KEY_P, "allowed-ips", nets[0])
    assert KEY_Q not in node.wg_dump()
    assert any("wireguard peer" in c for c in dp.observe().drift)  # observe reads in full
    # ...and repair reads the device in full and writes the difference back.
    assert dp.repair().writes >= 1
    dump = node.wg_dump()
    assert set(dump) == {KEY_P, KEY_Q}
    assert set(dump[KEY_P]["allowed_ips"].split(",")) == {nets[0], nets[2]}
    assert dp.apply(fewer).writes == 0
    node.wg("set", "raven-wg0", "peer", KEY_Q, "remove")  # again, now seen through repair only
    assert dp.repair().writes == 1
    assert KEY_Q in node.wg_dump()


def test_renew_peers_remakes_a_peer_without_handshake_and_it_initiates_again(make_node) -> None:
    # The far end answers nothing: a plain UDP socket in the namespace stands where the peer
    # points, and sees each handshake initiation (message type 1) the peer sends.
    import socket
    import struct

    from raven.dataplane.netns import entered
    from raven.dataplane.wireguard import keys

    a = make_node()
    dp = a.dataplane()
    with entered(a.ns):
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with far:
        far.bind(("127.0.0.1", 0))
        far.settimeout(10)  # a guard against a hang; the initiations come at once
        endpoint = f"127.0.0.1:{far.getsockname()[1]}"
        key_b = keys.b64(keys.public_key_of(bytes(range(32))))
        dp.apply(gateway(None, members=(), peers=(WireGuardPeer(
            public_key=key_b, endpoint=endpoint, allowed_ips=("10.2.0.0/16",), keepalive=1),)))
        first = far.recv(2048)
        assert first[0] == 1
        assert dp.renew_peers([key_b]) == [key_b]
        second = far.recv(2048)
        assert second[0] == 1
        assert struct.unpack("<I", second[4:8]) != struct.unpack("<I", first[4:8])
        peer = a.wg_dump()[key_b]
        # The same peer as planned, and a fresh one: its counter holds only the initiation it
        # sent on creation (148 bytes), not the old peer's; nothing for the next apply to fix.
        assert (peer["endpoint"], peer["allowed_ips"], peer["keepalive"]) == (
            endpoint, "10.2.0.0/16", "1")
        assert peer["tx"] == "148" and peer["handshake"] == "0"
        assert dp.apply(gateway(None, members=(), peers=(WireGuardPeer(
            public_key=key_b, endpoint=endpoint, allowed_ips=("10.2.0.0/16",),
            keepalive=1),))).writes == 0


def test_peer_take_over_peers_and_nudge_go_through_the_wireguard_applier(make_node) -> None:
    # The path manager's operations outside a reconcile (Dataplane forwards them to
    # wireguard/device.py), checked with `wg show dump` and an nftables counter of our own.
    import socket
    import time

    from raven.dataplane.netns import entered
    from raven.dataplane.wireguard import keys

    a = make_node()
    a.ip("addr", "add", "198.51.100.1/32", "dev", "lo")  # the underlay address nudges use
    dp = a.dataplane()
    with entered(a.ns):
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with far:
        far.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{far.getsockname()[1]}"
        key_p = keys.b64(keys.public_key_of(bytes(range(32))))
        key_q = keys.b64(keys.public_key_of(bytes(range(1, 33))))
        planned = gateway(None, members=(), remote=("10.2.0.0/16", "10.3.0.0/16"), peers=(
            WireGuardPeer(public_key=key_p, endpoint=endpoint, allowed_ips=("10.2.0.0/16",)),
            WireGuardPeer(public_key=key_q, endpoint=endpoint, allowed_ips=("10.3.0.0/16",))))
        dp.apply(planned)

        # The peers as the device reports them, as `wg show` reports them.
        seen = dp.wireguard_peers()
        dump = a.wg_dump()
        assert {k: sorted(p.allowed_ips) for k, p in seen.items()} == {
            k: sorted(p["allowed_ips"].split(",")) for k, p in dump.items()}

        # Take-over at a monotonic instant: Q gets P's subnet in one write, not before `at`.
        at = time.monotonic() + 0.2
        dp.take_allowed_ips(key_q, ("10.2.0.0/16",), at=at)
        assert time.monotonic() >= at
        dump = a.wg_dump()
        assert set(dump[key_q]["allowed_ips"].split(",")) == {"10.2.0.0/16", "10.3.0.0/16"}
        assert dump[key_p]["allowed_ips"] == "(none)"
        # The applier dropped its cache: the next apply reads the device and puts the plan back.
        assert dp.apply(planned).writes >= 1
        dump = a.wg_dump()
        assert (dump[key_p]["allowed_ips"], dump[key_q]["allowed_ips"]) == (
            "10.2.0.0/16", "10.3.0.0/16")

        # A nudge is routed into the WireGuard device (our rule, table 9028): an nft counter of
        # the test's own table on the output hook counts it there.
        a.exec("nft", "add table inet rvtest; add chain inet rvtest out { type filter hook "
               "output priority 0; }; add rule inet rvtest out oifname \"raven-wg0\" "
               "udp dport 9 counter")

        def counted() -> int:
            rules = [o["rule"] for o in a.nft("list", "table", "inet", "rvtest") if "rule" in o]
            (rule,) = rules
            return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)

        assert counted() == 0
        assert dp.nudge("198.51.100.1", ["10.2.0.1", "10.3.0.1"]) == 2
        assert counted() == 2
