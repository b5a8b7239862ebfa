"""Oracles for direct paths between NAT'd pools, shared by tests/e2e and bench/paths.py.

Everything is read from the kernel side, never from the agent: `wg show raven-wg0 dump` inside a
gateway node (peers, endpoints, allowed IPs, transfer counters), `ping -D` sequence numbers
across the lab, iperf3's own byte counts. Faults are plain nftables rules on the lab's internet.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from raven.errors import CommandError
from raven.lab import runtime
from raven.lab.plan import LabPlan, PoolPlan

DEVICE = "raven-wg0"
BLOCK_TABLE = "rvt_paths_block"


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    handshake: int
    rx: int
    tx: int


def wg(lab: str, node: str, *args: str) -> str:
    proc = subprocess.run([*runtime.devices_exec_argv(lab, node), "wg", "show", DEVICE, *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"wg show on {node}: {proc.stderr}"
    return proc.stdout


def public_key(lab: str, node: str) -> str:
    return wg(lab, node, "public-key").strip()


def peers(lab: str, node: str) -> dict[str, WgPeer]:
    """`wg show dump`: the first line is the device, then one tab-separated line per peer."""
    return _parse_dump(wg(lab, node, "dump"))[1]


def _parse_dump(text: str) -> tuple[str, dict[str, WgPeer]]:
    """(the device's public key, its peers) from `wg show DEVICE dump`."""
    lines = text.splitlines()
    out = {}
    for line in lines[1:]:
        key, _psk, endpoint, allowed, handshake, rx, tx, _keepalive = line.split("\t")
        out[key] = WgPeer(key, None if endpoint == "(none)" else endpoint,
                          () if allowed == "(none)" else tuple(allowed.split(",")),
                          int(handshake), int(rx), int(tx))
    return lines[0].split("\t")[1], out


def dump(lab: str, node: str) -> tuple[str, dict[str, WgPeer]] | None:
    """`_parse_dump` of the node's device, or None while it has none (the lab or the agent
    has not made it yet)."""
    try:
        argv = runtime.devices_exec_argv(lab, node)
    except CommandError:  # the node's host is not made yet
        return None
    proc = subprocess.run([*argv, "wg", "show", DEVICE, "dump"], capture_output=True, text=True,
                          timeout=30)
    return _parse_dump(proc.stdout) if proc.returncode == 0 and proc.stdout else None


def gateway(pool: PoolPlan) -> str:
    """The pool's gateway node (the test topologies have one candidate per pool)."""
    return next(n.name for n in pool.nodes if n.gateway_candidate)


def candidates(pool: PoolPlan) -> list[str]:
    """Every gateway candidate of the pool (the active one is elected among them)."""
    return [n.name for n in pool.nodes if n.gateway_candidate]


def pool(plan: LabPlan, name: str) -> PoolPlan:
    return next(p for p in plan.pools if p.name == name)


def direct(plan: LabPlan, a: PoolPlan, b: PoolPlan) -> bool:
    """Each gateway's peer for the other holds the other's pod subnets and aims at the other
    NAT's public address: the path crosses no relay."""
    for src, dst in ((a, b), (b, a)):
        peer = peers(plan.name, gateway(src)).get(public_key(plan.name, gateway(dst)))
        if not _direct_peer(peer, dst):
            return False
    return True


def _direct_peer(peer: WgPeer | None, dst: PoolPlan) -> bool:
    return (peer is not None and peer.endpoint is not None
            and peer.endpoint.startswith(dst.wan_ip + ":")
            and {n.pod_cidr for n in dst.nodes} <= set(peer.allowed_ips))


class DirectWatch:
    """From its start (e.g. right after the lab's namespaces exist, while `lab up` runs), reads
    the gateway candidates' devices every `poll` seconds (`wg show dump`, one per candidate)
    and keeps the monotonic time at which each pair was first seen direct (`direct`'s test,
    for any candidate of each pool). A time is an upper bound of the moment the pair went
    direct, by at most `poll` plus one round of reads."""

    def __init__(self, plan: LabPlan, pairs: list[tuple[PoolPlan, PoolPlan]],
                 poll: float = 0.2) -> None:
        self.plan, self.pairs, self.poll = plan, pairs, poll
        self.first: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="direct-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nodes = sorted({n for pair in self.pairs for p in pair for n in candidates(p)})
        with ThreadPoolExecutor(len(nodes)) as pool:
            while not self._stop.is_set() and len(self.first) < len(self.pairs):
                # All gateways read at once: a pair's time is not late by one read per node.
                devices = dict(zip(nodes, pool.map(lambda n: dump(self.plan.name, n), nodes),
                                   strict=True))
                self._note(devices, time.monotonic())
                self._stop.wait(self.poll)

    def _note(self, devices: dict[str, tuple[str, dict[str, WgPeer]] | None], seen: float
              ) -> None:
        for a, b in self.pairs:
            if (a.name, b.name) in self.first:
                continue
            # Any candidate of each pool: the one elected active holds the direct peer.
            for x, y in itertools.product(candidates(a), candidates(b)):
                da, db = devices[x], devices[y]
                if da is not None and db is not None and _direct_peer(da[1].get(db[0]), b) \
                        and _direct_peer(db[1].get(da[0]), a):
                    self.first[(a.name, b.name)] = seen
                    break

    def wait(self, timeout: float) -> dict[tuple[str, str], float]:
        """Until every pair was seen direct or `timeout`; the first times seen."""
        self._thread.join(timeout)
        return dict(self.first)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def relayed(plan: LabPlan, a: PoolPlan, b: PoolPlan, relay: PoolPlan) -> bool:
    """Each side routes the other's pod subnets to the relay's gateway."""
    for src, dst in ((a, b), (b, a)):
        peer = peers(plan.name, gateway(src)).get(public_key(plan.name, gateway(relay)))
        if peer is None or not {n.pod_cidr for n in dst.nodes} <= set(peer.allowed_ips):
            return False
    return True


def wait_for(check, timeout: float, what: str, poll: float = 0.1) -> float:
    """Seconds until `check()` held; AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic() - start


def relay_bytes(plan: LabPlan, relay: PoolPlan, pools: list[PoolPlan]) -> int:
    """rx + tx of the relay's WireGuard peers for these pools' gateways."""
    keys = {public_key(plan.name, gateway(p)) for p in pools}
    return sum(p.rx + p.tx for k, p in peers(plan.name, gateway(relay)).items() if k in keys)


def block(plan: LabPlan, a: PoolPlan, b: PoolPlan) -> None:
    """The internet drops everything between the two pools' public addresses."""
    rules = "\n".join(f"    ip saddr {x.wan_ip} ip daddr {y.wan_ip} drop"
                      for x, y in ((a, b), (b, a)))
    ruleset = (f"table ip {BLOCK_TABLE} {{\n  chain forward {{\n"
               "    type filter hook forward priority -5; policy accept;\n"
               f"{rules}\n  }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", plan.internet_netns, "nft", "-f", "-"],
                   input=ruleset, text=True, check=True)


def unblock(plan: LabPlan) -> None:
    subprocess.run(["ip", "netns", "exec", plan.internet_netns, "nft", "delete", "table", "ip",
                    BLOCK_TABLE], capture_output=True)


def pod(plan: LabPlan, p: PoolPlan):
    node = next(n for n in p.nodes if n.gateway_candidate)
    return node.pods[0]


class Pinger:
    """`ping -D -i 0.02` (50 per second) from a pod, in the background; `stop()` returns the
    sequence numbers that got no reply and the timestamps of the replies."""

    REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")

    def __init__(self, src_netns: str, dst_ip: str, interval: float = 0.02,
                 size: int = 56) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", src_netns, "ping", "-n", "-D", "-i", str(interval), "-W",
             "1", "-s", str(size), dst_ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[list[int], list[float]]:
        time.sleep(1.2)  # replies still in flight count
        self.proc.send_signal(2)
        out, _ = self.proc.communicate(timeout=10)
        replies = {int(m.group(2)): float(m.group(1))
                   for m in map(self.REPLY.match, out.splitlines()) if m}
        sent = max(replies, default=0)
        match = re.search(r"(\d+) packets transmitted", out)
        if match:
            sent = int(match.group(1))
        # The last second's requests may still be unanswered when SIGINT lands: judge up to
        # the last reply.
        last = max(replies, default=0)
        missing = [s for s in range(1, min(sent, last) + 1) if s not in replies]
        return missing, sorted(replies.values())


def longest_gap(stamps: list[float], after: float) -> float:
    """Longest time between consecutive replies after `after` (unix seconds)."""
    later = [t for t in stamps if t >= after - 1]
    return max((b - a for a, b in itertools.pairwise(later)), default=0.0)


def iperf(plan: LabPlan, src: PoolPlan, dst: PoolPlan, seconds: int = 3) -> int:
    """Bytes a TCP iperf3 moved from src's pod to dst's pod (iperf3's own count)."""
    server_ns = pod(plan, dst).netns
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        proc = subprocess.run(["ip", "netns", "exec", pod(plan, src).netns, "iperf3", "-c",
                               pod(plan, dst).ip, "-t", str(seconds), "-J"],
                              capture_output=True, text=True, timeout=seconds + 30)
        assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr[-500:]
        return int(json.loads(proc.stdout)["end"]["sum_received"]["bytes"])
    finally:
        server.kill()
        server.wait()


class LabUp:
    """`raven lab up TOPOLOGY --name NAME` as an operator runs it, in the background. Keeps
    the monotonic and unix times it was started, and its progress lines (stderr, `[lab] ...`)
    with the unix time each was read. The caller removes the lab (`raven lab down`) whatever
    happens; `stop()` ends the command if it still runs."""

    def __init__(self, topology: Path, name: str) -> None:
        self.name = name
        self.started, self.started_wall = time.monotonic(), time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "raven.cli", "lab", "up",
                                      str(topology), "--name", name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, name="lab-up-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip("\n").removeprefix("[lab] ")))

    def plan(self, timeout: float = 120.0) -> LabPlan:
        """The lab's plan, as soon as its state names it (while it is being built)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return runtime.load_plan(self.name)
            except CommandError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"`raven lab up` made no lab {self.name}: "
                                         f"{self.tail()}") from None
            time.sleep(0.02)

    def wait(self, timeout: float = 600.0) -> None:
        """Until `lab up` exits; AssertionError with its output unless it succeeded."""
        code = self.proc.wait(timeout)
        self._reader.join(10)
        assert code == 0, f"`raven lab up` exited {code}: {self.tail()}"

    def tail(self, lines: int = 15) -> str:
        return "\n".join(text for _, text in self.lines[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
