"""Helpers for overlay e2e tests: a running overlay lab, kernel snapshots, ping loss counters.

The oracle is always independent of the code under test: `ip -json`, `bridge -json`, `nft -j`,
`wg show dump` run inside the nodes, and ICMP actually crossing the lab.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from raven import constants
from raven.lab import build, cluster, runtime, teardown
from raven.lab import netns as nsutil
from raven.lab.plan import LabPlan, NodePlan, PodPlan
from raven.lab.runtime import node_exec_argv
from raven.lab.topology import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "test-topologies"


def unique_lab_name(area: str) -> str:
    return f"rvt-{area}-{secrets.token_hex(3)}"


@contextmanager
def overlay_lab(topology: str, area: str = "ov") -> Iterator[LabPlan]:
    """A lab with the whole overlay up and every pair answering; always torn down."""
    lab = unique_lab_name(area)
    path = TOPOLOGIES / topology
    try:
        plan = build.up(load_topology(path), lab, source=str(path))
        cluster.up(plan)
        yield plan
    finally:
        teardown.down(lab)


def raven(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`raven ...` as an operator runs it: a subprocess of the project's interpreter."""
    return subprocess.run([sys.executable, "-m", "raven.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def lab_ping_until(lab: str, done: Callable[[list[dict]], bool] | None = None,
                   *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """`raven lab ping LAB --json ARGS` until a round is `done` (default: every pair answered),
    or the last round after `timeout`. One round gives each pair two 1 s tries, which a loaded
    machine can miss; the deadline is the liveness bound. For a negative check, make `done`
    the positive control of the same round (e.g. every pair inside a pool answered)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = raven("lab", "ping", lab, "--json", *args, timeout=timeout)
        try:
            pairs = json.loads(proc.stdout)["pairs"]
        except (ValueError, KeyError):
            pairs = None
        if pairs is not None and (done(pairs) if done else all(p["ok"] for p in pairs)):
            return proc
        if time.monotonic() > deadline:
            return proc
        time.sleep(1)


def lab_processes(lab: str) -> dict[int, int]:
    """pid -> start time of every process inside the lab's namespaces."""
    inodes = {i for i in map(nsutil.netns_inode, teardown.lab_namespaces(lab)) if i}
    out = {}
    for pid in nsutil.pids_in(inodes):
        start = runtime.proc_start_time(pid)
        if start is not None:
            out[pid] = start
    return out


def assert_no_trace(lab: str, processes: dict[int, int]) -> None:
    """No namespace, netns id, run-directory file, process (of `processes`, by pid and start
    time) or mount of the lab is left; `raven lab list` does not show it."""
    assert not [n for n in nsutil.list_netns() if n.startswith(lab + ".")]
    assert not runtime.run_dir(lab).exists()
    alive = [pid for pid, start in processes.items() if runtime.proc_start_time(pid) == start]
    assert alive == [], f"processes of {lab} still alive: {alive}"
    # No process anywhere still holds a mount namespace with the lab's host directories.
    marker = str(runtime.run_dir(lab)) + "/"
    holding = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "mountinfo").read_text():
                    holding.append(int(entry.name))
            except OSError:
                continue
    assert holding == [], f"processes still holding {lab}'s mounts: {holding}"
    ids = json.loads(subprocess.run(["ip", "-json", "netns", "list-id"], capture_output=True,
                                    text=True).stdout or "[]")
    assert not [i for i in ids if str(i.get("name", "")).startswith(lab + ".")]
    assert lab not in raven("lab", "list").stdout


def _run_with(prefix: list[str], node: str, argv: tuple[str, ...], check: bool) -> str:
    proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        if check:
            raise AssertionError(f"{node}: {' '.join(argv)}: {proc.stderr or proc.stdout}")
        return ""  # e.g. a table or device that does not exist (here): nothing of ours
    return proc.stdout


def in_node(plan: LabPlan, node: str, *argv: str, check: bool = True) -> str:
    return _run_with(node_exec_argv(plan.name, node), node, argv, check)


def _json(text: str) -> object:
    return json.loads(text) if text.strip() else []


VOLATILE = {"stats", "stats64", "linkinfo_data_stats", "txqlen", "operstate", "flags",
            "ifalias", "promiscuity", "min_mtu", "max_mtu", "num_tx_queues", "num_rx_queues",
            "gso_max_size", "gso_max_segs", "tso_max_size", "tso_max_segs", "gro_max_size",
            "gso_ipv4_max_size", "gro_ipv4_max_size", "qdisc", "group", "ifindex", "link_index",
            "link_netnsid", "addr_info", "allmulti", "inet6_addr_gen_mode", "parentbus",
            "parentdev"}


def _canonical_set(item: dict) -> dict:
    """An nft JSON item with a set's elements in a stable order (a set has no order; only
    interval sets happen to dump sorted)."""
    body = item.get("set")
    if isinstance(body, dict) and isinstance(body.get("elem"), list):
        body = {**body, "elem": sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))}
        return {**item, "set": body}
    return item


def in_devices(plan: LabPlan, node: str, *argv: str, check: bool = True) -> str:
    """`in_node`, but where the node's raven0 and raven-wg0 are: its tunnel namespace while it
    is an active gateway (docs/tunnel-namespace.md), else its own namespace."""
    return _run_with(runtime.devices_exec_argv(plan.name, node), node, argv, check)


def _namespace_snapshot(run: Callable[..., str]) -> dict:
    """Links, addresses, routes and rules of ours in one namespace (`run` runs a command in
    it)."""
    links = {}
    for link in _json(run("ip", "-d", "-j", "link", "show")):  # type: ignore[union-attr]
        name = link["ifname"]
        if name.startswith("raven"):
            links[name] = {k: v for k, v in link.items() if k not in VOLATILE}
    addrs = {a["ifname"]: sorted(i["local"] for i in a.get("addr_info", []))
             for a in _json(run("ip", "-j", "-4", "addr", "show"))}  # type: ignore[union-attr]
    # Our tables, and our protocol's routes in main (a member's, raven.route_placement).
    routes = {" ".join(t): _json(run("ip", "-j", "route", "show", "table", *t, check=False)
                                 or "[]")
              for t in (("9027",), ("9028",), ("main", "proto", str(constants.ROUTE_PROTOCOL)))}
    rules = _json(run("ip", "-j", "rule", "show"))
    return {"links": links, "addresses": {k: v for k, v in addrs.items()
                                          if k.startswith("raven")},
            "routes": routes, "rules": rules}


def node_snapshot(plan: LabPlan, node: str) -> dict:
    """Everything of ours in a node's kernel, in a comparable form (no counters, no ages): its
    namespace, and its tunnel namespace when it has one (`tunnel`, None without)."""
    # where the devices are, asked once: every read of the snapshot is of the same namespace
    devices = runtime.devices_exec_argv(plan.name, node)
    node_only = node_exec_argv(plan.name, node)

    def here(*argv: str, check: bool = True) -> str:
        return _run_with(node_only, node, argv, check)

    def there(*argv: str, check: bool = True) -> str:
        return _run_with(devices, node, argv, check)

    snapshot = _namespace_snapshot(here)
    snapshot["tunnel"] = _namespace_snapshot(there) if devices != node_only else None
    fdb = sorted((e.get("mac"), e.get("dst")) for e in _json(
        there("bridge", "-j", "fdb", "show", "dev", "raven0", check=False)
        or "[]") if e.get("dst"))
    # Only permanent neighbours are ours (the agent's, docs/dataplane.md); the kernel's own
    # resolved entries move between REACHABLE, STALE and DELAY with the background probes.
    neigh = sorted((e.get("dst"), e.get("lladdr"), tuple(e.get("state", []))) for e in _json(
        there("ip", "-j", "neigh", "show", "dev", "raven0", check=False) or "[]")
        if "PERMANENT" in e.get("state", []))
    nft = here("nft", "-j", "list", "table", "inet", "raven", check=False)
    nft_items = [_canonical_set(i) for i in (_json(nft) or {"nftables": []})[  # type: ignore[index]
                 "nftables"] if "metainfo" not in i]
    wg = there("wg", "show", "raven-wg0", "dump", check=False).splitlines()
    wg_static = []
    peers = []
    for i, line in enumerate(wg):
        fields = line.split("\t")
        if i == 0:  # private key, public key, listen port, fwmark
            wg_static.append(tuple(fields[1:3]))
        elif len(fields) >= 8 and fields[3] != "(none)":  # public key, allowed ips, keepalive
            # A peer without allowed IPs is a direct-path probe between NAT'd pools
            # (docs/gateway.md 4a): it comes and goes with its retries and carries nothing.
            # The order of a peer's allowed IPs is the order they were last set in, not a fact
            # of the data plane: compare them as a set too.
            peers.append((fields[0], ",".join(sorted(fields[3].split(","))), fields[7]))
    # wireguard-go lists its peers in Go map order (random per call): compare them as a set.
    wg_static += sorted(peers)
    return {**snapshot, "fdb": fdb, "neighbours": neigh, "nft": nft_items,
            "wireguard": wg_static}


def lab_snapshot(plan: LabPlan) -> dict[str, dict]:
    return {node.name: node_snapshot(plan, node.name) for _, node in plan.nodes()}


def vtep_mac(plan: LabPlan, node: str) -> str:
    return in_devices(plan, node, "cat", "/sys/class/net/raven0/address").strip()


def wg_public_key(plan: LabPlan, node: str) -> str:
    return in_devices(plan, node, "wg", "show", "raven-wg0", "public-key").strip()


def pod_addresses(plan: LabPlan) -> dict[str, list[str]]:
    out = {}
    for _, _, pod in plan.pods():
        proc = subprocess.run(["ip", "-n", pod.netns, "-j", "-4", "addr", "show", "eth0"],
                              capture_output=True, text=True, check=True)
        out[pod.name] = [a["local"] for a in json.loads(proc.stdout)[0]["addr_info"]]
    return out


def pod(plan: LabPlan, name: str) -> PodPlan:
    return next(p for _, _, p in plan.pods() if p.name == name)


def node_of(plan: LabPlan, name: str) -> NodePlan:
    return next(n for _, n in plan.nodes() if n.name == name)


@dataclass
class PingRun:
    """A background `ping` at a fixed rate from one pod to an address.

    ping is asked for `count` echoes plus a tail of `tail` more, and only the first `count`
    are judged (by their sequence numbers). Why: once ping has sent its last echo it waits
    only two round-trip times (`-W` applies only while nothing has come back, see ping(8))
    and then counts every unanswered echo as lost, so with a bare `-c` the reply to the last
    echo is lost whenever it comes late on a loaded machine (CI counted 154/155 that way).
    With the tail, every judged echo had `tail` intervals (at least 3 s) to come back."""

    proc: subprocess.Popen[str]
    count: int
    tail: int = 0

    def replies(self, timeout: float = 120.0) -> set[int]:
        """Sequence numbers (1-based) of the judged echoes that were answered."""
        out, _ = self.proc.communicate(timeout=timeout)
        sent = re.search(r"(\d+) packets transmitted", out)
        assert sent and int(sent.group(1)) >= self.count, out[-2000:]
        got = {int(m.group(1)) for m in re.finditer(r"^\d+ bytes from .*? icmp_seq=(\d+) ", out,
                                                    re.M)}
        return {seq for seq in got if seq <= self.count}

    def result(self, timeout: float = 120.0) -> tuple[int, int]:
        """(echoes judged, echoes of those answered)."""
        return self.count, len(self.replies(timeout))


def ping_stream(prefix: list[str], dst_ip: str, count: int, interval: float,
                tail_seconds: float = 3.0) -> PingRun:
    """`ping` run through `prefix` (e.g. `ip netns exec NS`), `count` judged echoes every
    `interval` seconds, plus the tail described in PingRun."""
    tail = max(1, round(tail_seconds / interval))
    proc = subprocess.Popen(
        [*prefix, "ping", "-n", "-i", f"{interval:.3f}", "-c", str(count + tail), "-W", "2",
         dst_ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return PingRun(proc, count, tail)


def start_ping(src: PodPlan, dst_ip: str, seconds: float, rate: int = 50) -> PingRun:
    return ping_stream(["ip", "netns", "exec", src.netns], dst_ip, int(seconds * rate),
                       1 / rate)
