"""Guest driver (runs as root INSIDE the VM, see vmrun.py): the kernel WireGuard backend live.

Every check runs in this one boot and reports with `emit`; the host-side tests
(test_vm_wireguard.py) assert on the results. The oracles are the kernel's own tools run
inside the guest: `wg show`, `wg showconf`, `ip -json`, `ping`, /proc/<pid>/status; never
our decoder or counters (our `writes` count is reported next to them, not instead of them).

It takes no arguments; the privilege step forks (see `enter_as_agent`).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "tests/integration/dataplane"), str(HERE)]

from dp_states import gateway  # noqa: E402
from vmrun import emit, finish  # noqa: E402

from raven.dataplane import Dataplane, DataplaneSettings  # noqa: E402
from raven.dataplane.netlink import (  # noqa: E402
    NETLINK_GENERIC,
    NLM_F_ACK,
    NetlinkError,
    NetlinkSocket,
)
from raven.dataplane.wireguard.genl import GENL_ID_CTRL, family_request_body  # noqa: E402
from raven.desired import WireGuardPeer  # noqa: E402

BIG = 10_000  # allowed IPs on one peer
PEERS = 1_000


def big_allowed_ips() -> tuple[str, ...]:
    """The peer's pod subnet plus BIG - 1 more /24s (deterministic: the host recomputes it)."""
    extra = [f"10.{64 + i // 256}.{i % 256}.0/24" for i in range(BIG - 1)]
    return tuple(sorted(["10.2.0.0/16", *extra]))


def peer_key(i: int) -> str:
    return base64.b64encode(hashlib.sha256(f"peer-{i}".encode()).digest()).decode()


def many_peers() -> tuple[WireGuardPeer, ...]:
    return tuple(sorted(
        WireGuardPeer(public_key=peer_key(i), endpoint=f"198.18.{i // 250}.{i % 250 + 1}:4500",
                      allowed_ips=(f"10.{100 + i // 256}.{i % 256}.0/24",
                                   str(ipaddress.ip_network(f"fd00:{i:x}::/64"))),
                      keepalive=25 if i % 2 else 0)
        for i in range(PEERS)))


def digest(items: set[str] | frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def wg(ns: str, *args: str) -> str:
    """`wg` against the KERNEL device: with an empty /var/run/wireguard of its own, so a
    wireguard-go socket of the same name (privilege step) can never answer instead."""
    script = "mkdir -p /run/wireguard && mount -t tmpfs none /run/wireguard && exec \"$@\""
    return sh("ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
              "sh", "-c", script, "wg", "wg", *args).stdout


def wg_userspace(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, "wg", *args).stdout


def wg_dump(ns: str, tool: Callable[..., str] = wg) -> dict[str, dict[str, str]]:
    """`wg show raven-wg0 dump` peers: public key -> fields."""
    peers = {}
    for line in tool(ns, "show", "raven-wg0", "dump").strip().splitlines()[1:]:
        key, psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")
        peers[key] = {"psk": psk, "endpoint": endpoint, "allowed_ips": allowed,
                      "handshake": handshake, "rx": rx, "tx": tx, "keepalive": keepalive}
    return peers


def wg_allowed(ns: str) -> dict[str, set[str]]:
    out = {}
    for line in wg(ns, "show", "raven-wg0", "allowed-ips").strip().splitlines():
        key, _, ips = line.partition("\t")
        out[key] = set(ips.split()) - {"(none)"}
    return out


def compare(seen: set[str], want: set[str]) -> dict[str, object]:
    return {"count": len(seen), "digest": digest(seen),
            "missing": sorted(want - seen)[:5], "extra": sorted(seen - want)[:5]}


class NetlinkTap:
    """Every netlink message sent in one namespace, as the kernel saw it: an nlmon device and
    one tcpdump for the namespace's life. The independent oracle for "this apply wrote
    nothing" and for how many WG_CMD_SET_DEVICE messages a change took (our own counters are
    reported beside it). Phases are delimited by markers: a generic netlink family lookup by a
    unique name, sent before and after the apply; the phase ends when tcpdump has written the
    closing marker (no packet of the apply can still be in flight then)."""

    # rtnetlink requests that change something: NEW/DEL/SET of links, addresses, routes,
    # neighbours and rules (RTM_* in linux/rtnetlink.h)
    RTNL_WRITES = frozenset({16, 17, 19, 20, 21, 24, 25, 28, 29, 32, 33})
    NFNL_BATCH_BEGIN = 0x10  # every nftables change is a batch; reads are not

    def __init__(self, ns: str, tmp: Path) -> None:
        self.ns = ns
        self.pcap = tmp / f"{ns}.pcap"
        sh("modprobe", "-a", "nlmon", "wireguard")  # the tap device; the family to look up
        sh("ip", "-n", ns, "link", "add", "nlmon0", "type", "nlmon")
        sh("ip", "-n", ns, "link", "set", "nlmon0", "up")
        ctrl = sh("ip", "netns", "exec", ns, "genl", "ctrl", "get", "name", "wireguard").stdout
        match = re.search(r"ID: (0x[0-9a-f]+)", ctrl)
        assert match, ctrl
        self.family = int(match.group(1), 16)
        self.sock = NetlinkSocket(NETLINK_GENERIC, ns)  # sends the markers only
        self.proc = subprocess.Popen(
            # Immediate mode uses a ring of snaplen-sized frames: 2 MiB of 256 KiB frames held
            # 8 messages and a burst lost some. 64 KiB frames (our messages are <= 32 KiB) in
            # an 8 MiB ring hold about 128; close() reports the kernel's drop count anyway.
            ["ip", "netns", "exec", ns, "tcpdump", "-i", "nlmon0", "--immediate-mode", "-U",
             "-Z", "root", "-s", "65535", "-B", "8192", "-w", str(self.pcap)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on nlmon0, ..." once it captures
        assert "listening on" in line, line

    def close(self) -> int:
        """Stop capturing; returns how many packets the kernel dropped (must be 0)."""
        self.sock.close()
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        match = re.search(r"(\d+) packets? dropped by kernel", err)
        assert match, err
        return int(match.group(1))

    def mark(self) -> bytes:
        marker = f"rvm-{secrets.token_hex(4)}"
        # No such family, as intended: the request is what the tap records.
        with contextlib.suppress(NetlinkError):
            self.sock.request(GENL_ID_CTRL, NLM_F_ACK, family_request_body(marker))
        return marker.encode()

    def during(self, apply: Callable[[], int]) -> dict[str, object]:
        """Our writes count next to what the kernel saw during `apply`."""
        begin = self.mark()
        ours = apply()
        end = self.mark()
        deadline = time.monotonic() + 60
        while end not in self.pcap.read_bytes():
            assert time.monotonic() < deadline, f"netlink tap in {self.ns}: marker lost"
            time.sleep(0.1)
        return {"ours": ours, "kernel_saw": self.count(begin, end)}

    def count(self, begin: bytes, end: bytes) -> dict[str, int]:
        out = {"wg_set": 0, "rtnl": 0, "nft_batches": 0, "messages": 0, "truncated": 0}
        data = self.pcap.read_bytes()
        off, inside = 24, False  # after the pcap file header
        while off + 16 <= len(data):
            incl, orig = struct.unpack_from("<II", data, off + 8)
            packet = data[off + 16: off + 16 + incl]
            off += 16 + incl
            if not inside:
                inside = begin in packet
                continue
            if end in packet:
                break
            out["truncated"] += incl < orig
            protocol = struct.unpack_from(">H", packet, 14)[0]  # cooked header: netlink family
            pos = 16
            while pos + 16 <= len(packet):
                length, kind, flags = struct.unpack_from("<IHH", packet, pos)
                if length < 16:
                    break
                request = bool(flags & 0x1)  # NLM_F_REQUEST: user to kernel
                out["messages"] += 1
                if request and protocol == 16 and kind == self.family and packet[pos + 16] == 1:
                    out["wg_set"] += 1  # WG_CMD_SET_DEVICE
                elif request and protocol == 0 and kind in self.RTNL_WRITES:
                    out["rtnl"] += 1
                elif request and protocol == 12 and kind == self.NFNL_BATCH_BEGIN:
                    out["nft_batches"] += 1
                pos += (length + 3) & ~3
        return out


def netns(prefix: str) -> str:
    name = f"rvm-{prefix}-{secrets.token_hex(2)}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def dataplane(ns: str | None, state_dir: Path, backend: str = "kernel") -> Dataplane:
    state_dir.mkdir(parents=True, exist_ok=True)
    return Dataplane(DataplaneSettings(netns=ns, state_dir=state_dir, wireguard_backend=backend))


def step(fn: Callable[[Path], dict[str, object]]) -> Callable[[Path], None]:
    """Run one check; report its results, or its error, and how long it took."""
    def wrapper(tmp: Path) -> None:
        started = time.monotonic()
        try:
            result = fn(tmp)
        except BaseException as exc:  # report and go on with the next step
            result = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.monotonic() - started, 1)
        emit(**{fn.__name__: result})
    return wrapper


# --- privileges: the agent's capabilities only -----------------------------------------------

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
# What an agent without its tunnel namespace (--tunnel-netns '') needs, with drop: [ALL].
AGENT_CAPS = (CAP_NET_ADMIN, CAP_NET_RAW)
CLONE_NEWNET = 0x40000000
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def enter_as_agent(ns: str) -> None:
    """In a forked child: join `ns`, then keep only the agent's capabilities in every set
    (bounding, ambient, permitted, effective, inheritable), as a container runtime does for
    `capabilities: {drop: [ALL], add: [NET_ADMIN, NET_RAW]}` with a root user. This is what
    `setpriv --bounding-set=-all,+net_admin,+net_raw --inh-caps=...` does; done in-process
    because a fresh interpreter in this emulated guest costs a minute of imports."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), "setns")
    os.close(fd)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if cap not in AGENT_CAPS:
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    mask = sum(1 << c for c in AGENT_CAPS)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, mask, 0, 0, 0)  # eff, prm, inh (caps 0-31; 32-63)
    check(libc.capset(header, data), "capset")


def as_agent(backend: str, ns: str, state_dir: Path) -> dict[str, object]:
    """What a gateway apply does in `ns` with only the agent's capabilities (in the child)."""
    enter_as_agent(ns)
    status = Path("/proc/self/status").read_text()
    caps = {k: v.strip() for k, _, v in (ln.partition(":") for ln in status.splitlines())
            if k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb")}
    out: dict[str, object] = {"caps": caps, "uid": os.getuid()}
    peer = WireGuardPeer(public_key=peer_key(1), endpoint="198.51.100.2:4500",
                         allowed_ips=("10.2.0.0/16",), keepalive=25)
    try:
        dp = dataplane(None, state_dir, backend)
        out["writes"] = dp.apply(gateway(None, members=(), peers=(peer,))).writes
        out["second_writes"] = dp.apply(gateway(None, members=(), peers=(peer,))).writes
        out["ok"] = True
        dp.close()
    except BaseException as exc:
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc()[-2000:])
    return out


def fork_as_agent(backend: str, tmp: Path) -> tuple[int, int, str, Path]:
    ns = netns(f"priv-{backend[0]}")
    state = tmp / f"priv-{backend}"
    state.mkdir()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into the driver
        code = 0
        try:
            os.close(read)
            try:
                out = as_agent(backend, ns, state)
            except BaseException as exc:
                out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(out).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    return pid, read, ns, state


def oracle_after(backend: str, pid: int, read: int, ns: str, state: Path) -> dict[str, object]:
    with os.fdopen(read, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    out: dict[str, object] = json.loads(raw) if raw else {"ok": False, "error": "no report"}
    out["netns"] = ns
    # Oracle with full privileges: what the restricted process left in the kernel.
    link = sh("ip", "-n", ns, "-json", "-details", "link", "show", "raven-wg0", check=False)
    out["link_kind"] = (json.loads(link.stdout)[0].get("linkinfo", {}).get("info_kind")
                        if link.returncode == 0 else None)
    tool = wg if backend == "kernel" else wg_userspace
    if out["link_kind"] in ("wireguard", "tun"):
        out["oracle_peers"] = {k: {"endpoint": v["endpoint"], "allowed_ips": v["allowed_ips"]}
                               for k, v in wg_dump(ns, tool).items()}
        out["oracle_listen_port"] = tool(ns, "show", "raven-wg0", "listen-port").strip()
    if backend == "userspace":
        sh("pkill", "-F", str(state / "wireguard-go.raven-wg0.pid"), check=False)
        sock = Path("/run/wireguard/raven-wg0.sock")
        deadline = time.monotonic() + 20
        while sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        out["userspace_stopped"] = not sock.exists()
    return out


@step
def privileges(tmp: Path) -> dict[str, object]:
    sh("modprobe", "tun")  # /dev/net/tun for wireguard-go (loading modules is not the agent's)
    results: dict[str, object] = {
        "module_loaded_before": "wireguard" in Path("/proc/modules").read_text()}
    # Kernel first, and before any other step: the restricted process itself makes the kernel
    # load the wireguard module (on demand, as on a node where nothing loaded it yet).
    kernel = fork_as_agent("kernel", tmp)
    results["kernel"] = oracle_after("kernel", *kernel)
    results["module_loaded_after"] = "wireguard" in Path("/proc/modules").read_text()
    results["userspace"] = oracle_after("userspace", *fork_as_agent("userspace", tmp))
    return results


# --- the integration test that skips on a host without the module ---------------------------


@step
def integration_kernel_backend(tmp: Path) -> dict[str, object]:
    import pytest
    from conftest import Node
    from test_dataplane_wireguard import test_kernel_backend

    nodes: list[Node] = []

    def make_node() -> Node:
        nodes.append(Node(f"rvt-dp-{secrets.token_hex(3)}", tmp / "it"))
        return nodes[-1]

    try:
        test_kernel_backend(make_node)
    except pytest.skip.Exception as exc:
        return {"outcome": "skipped", "reason": str(exc)}
    finally:
        for node in nodes:
            node.close()
    return {"outcome": "passed"}


# --- scale and idempotence on a live tunnel ----------------------------------------------------


@step
def tunnel_10000_allowed_ips(tmp: Path) -> dict[str, object]:
    from test_dataplane_wireguard import states

    a_ns, b_ns = netns("a"), netns("b")
    sh("ip", "-n", a_ns, "link", "add", "w0", "type", "veth", "peer", "name", "w0", "netns", b_ns)
    for ns, underlay, pod in ((a_ns, "198.51.100.1/24", "10.1.0.1/32"),
                              (b_ns, "198.51.100.2/24", "10.2.0.1/32")):
        sh("ip", "-n", ns, "addr", "add", underlay, "dev", "w0")
        sh("ip", "-n", ns, "link", "set", "w0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "dev", "w0")
        sh("ip", "-n", ns, "addr", "add", pod, "dev", "lo")

    class At:  # what the integration helpers expect of a node: .exec in its namespace
        def __init__(self, ns: str) -> None:
            self.ns = ns

        def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return sh("ip", "netns", "exec", self.ns, *argv, check=check)

    a, b = At(a_ns), At(b_ns)  # b pings back after the second apply
    dpa, dpb = dataplane(a_ns, tmp / "a"), dataplane(b_ns, tmp / "b")
    key_a, key_b = dpa.public_key(), dpb.public_key()
    sa, sb = states(key_a, key_b)
    big = big_allowed_ips()
    sa = replace(sa, wireguard=replace(sa.wireguard, peers=(
        replace(sa.wireguard.peers[0], allowed_ips=big),)))
    dpb.apply(sb)
    tap_a, tap_b = NetlinkTap(a_ns, tmp), NetlinkTap(b_ns, tmp)
    try:
        out = tunnel_checks(sa, sb, dpa, dpb, a, b, tap_a, tap_b, key_a, key_b)
    finally:
        dropped = [tap_a.close(), tap_b.close()]
    out["tap_dropped"] = dropped
    return out


def tunnel_checks(sa: Any, sb: Any, dpa: Dataplane, dpb: Dataplane, a: Any, b: Any,
                  tap_a: NetlinkTap, tap_b: NetlinkTap, key_a: str, key_b: str
                  ) -> dict[str, object]:
    from conftest import wait_for
    from test_dataplane_wireguard import ping

    a_ns, b_ns = a.ns, b.ns
    big = big_allowed_ips()
    out: dict[str, object] = {}
    t = time.monotonic()
    out["first"] = tap_a.during(lambda: dpa.apply(sa).writes)
    out["first_apply_s"] = round(time.monotonic() - t, 2)
    out["kind"] = json.loads(sh("ip", "-n", a_ns, "-json", "-details", "link", "show",
                                "raven-wg0").stdout)[0]["linkinfo"]["info_kind"]
    out["allowed"] = compare(wg_allowed(a_ns).get(key_b, set()), set(big))
    out["ping"] = wait_for(lambda: ping(a, "10.1.0.1", "10.2.0.1").returncode == 0, timeout=60)
    before = wg_dump(a_ns)[key_b]
    conf_a = wg(a_ns, "showconf", "raven-wg0")
    conf_b = wg(b_ns, "showconf", "raven-wg0")
    time.sleep(1.1)  # a rewrite now would show as a new handshake second or reset endpoint
    t = time.monotonic()
    out["second"] = [tap_a.during(lambda: dpa.apply(sa).writes),
                     tap_b.during(lambda: dpb.apply(sb).writes)]
    out["second_apply_s"] = round(time.monotonic() - t, 2)
    after = wg_dump(a_ns)[key_b]
    out["showconf_unchanged"] = [conf_a == wg(a_ns, "showconf", "raven-wg0"),
                                 conf_b == wg(b_ns, "showconf", "raven-wg0")]
    out["handshake"] = [before["handshake"], after["handshake"]]
    out["b_learned_endpoint"] = wg_dump(b_ns)[key_a]["endpoint"]
    out["ping_after"] = [ping(a, "10.1.0.1", "10.2.0.1").returncode == 0,
                         ping(b, "10.2.0.1", "10.1.0.1").returncode == 0]
    out["handshake_after_ping"] = wg_dump(a_ns)[key_b]["handshake"]
    # One allowed IP less: a replace of 9,999 IPs, split over several messages.
    fewer = tuple(ip for ip in big if ip != "10.64.7.0/24")
    sa_fewer = replace(sa, wireguard=replace(sa.wireguard, peers=(
        replace(sa.wireguard.peers[0], allowed_ips=fewer),)))
    out["removal"] = tap_a.during(lambda: dpa.apply(sa_fewer).writes)
    out["after_removal"] = compare(wg_allowed(a_ns)[key_b], set(fewer))
    out["ping_after_removal"] = ping(a, "10.1.0.1", "10.2.0.1").returncode == 0
    out["readd"] = tap_a.during(lambda: dpa.apply(sa).writes)
    out["after_readd"] = compare(wg_allowed(a_ns)[key_b], set(big))
    out["handshake_end"] = wg_dump(a_ns)[key_b]["handshake"]
    return out


@step
def thousand_peers(tmp: Path) -> dict[str, object]:
    ns = netns("c")
    dp = dataplane(ns, tmp / "c")
    tap = NetlinkTap(ns, tmp)
    try:
        out = thousand_checks(ns, dp, tap)
    finally:
        dropped = tap.close()
    out["tap_dropped"] = dropped
    return out


def thousand_checks(ns: str, dp: Dataplane, tap: NetlinkTap) -> dict[str, object]:
    peers = many_peers()
    state = gateway(None, members=(), peers=peers)
    out: dict[str, object] = {}
    t = time.monotonic()
    out["first"] = tap.during(lambda: dp.apply(state).writes)
    out["first_apply_s"] = round(time.monotonic() - t, 2)
    dump = wg_dump(ns)
    want = {p.public_key: p for p in peers}
    out["peer_count"] = len(dump)
    out["peers_missing"] = sorted(set(want) - set(dump))[:5]
    out["peers_extra"] = sorted(set(dump) - set(want))[:5]
    bad = []
    for key, p in want.items():
        got = dump.get(key)
        if got is None:
            continue
        fields = (got["endpoint"], set(got["allowed_ips"].split(",")), got["keepalive"])
        wanted = (p.endpoint, set(p.allowed_ips), str(p.keepalive) if p.keepalive else "off")
        if fields != wanted:
            bad.append([key, repr(fields), repr(wanted)])
    out["peers_wrong"] = bad[:5]
    out["peers_wrong_count"] = len(bad)
    conf = wg(ns, "showconf", "raven-wg0")
    t = time.monotonic()
    out["second"] = tap.during(lambda: dp.apply(state).writes)
    out["second_apply_s"] = round(time.monotonic() - t, 2)
    out["showconf_unchanged"] = conf == wg(ns, "showconf", "raven-wg0")
    # Drop 100 peers, move one allowed IP between two others: the diff in the kernel.
    kept = list(peers[100:])
    kept[0] = replace(kept[0], allowed_ips=tuple(sorted(
        (*kept[0].allowed_ips, *kept[1].allowed_ips[:1]))))
    kept[1] = replace(kept[1], allowed_ips=kept[1].allowed_ips[1:])
    out["change"] = tap.during(
        lambda: dp.apply(gateway(None, members=(), peers=tuple(kept))).writes)
    allowed = wg_allowed(ns)
    out["after_change_peer_count"] = len(allowed)
    out["after_change_equal"] = allowed == {p.public_key: set(p.allowed_ips) for p in kept}
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="raven-vm-"))
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    emit(guest={"kernel": os.uname().release, "python": sys.version.split()[0],
                "cpus": os.cpu_count(), "imports_done_uptime_s": uptime})
    for check in (privileges, integration_kernel_backend, tunnel_10000_allowed_ips,
                  thousand_peers):
        check(tmp)
    finish()


if __name__ == "__main__":
    main()
