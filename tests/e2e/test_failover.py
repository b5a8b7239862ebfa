"""Gateway failover without the cloud, on test-topologies/failover.yaml (shipped timing defaults).

Cases: (a) the active gateway of the cone-NAT pool is powered off; (b) it is blackholed (up and
heartbeating, its VXLAN and WireGuard traffic dropped); (c) its pool is cut off from the control
plane, then it is powered off. Each asserts that replies resume towards a pod on the member that
is not a candidate, from the public pool and from the symmetric-NAT pool (through the relay),
and which node carries the traffic, read from the kernel: the member's routes (`ip -j route`)
and the public gateway's WireGuard peers (`wg show ... allowed-ips`, transfer counters).
No wall-clock thresholds: bench/failover.py reports the figures.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from overlay_support import in_devices, overlay_lab, wg_public_key

from raven.lab import cluster, faults, runtime
from raven.lab.gateway_load import member_routes
from raven.lab.ping import ping_all
from raven.lab.plan import LabPlan, PodPlan
from raven.timefmt import parse_time
from raven.topology import vtep_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

POOL = "edge-cone"
MEMBER = "cone-3"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("failover.yaml", area="fo") as plan:
        yield plan


def node_ip(plan: LabPlan, name: str) -> str:
    return next(n.underlay_ip for _, n in plan.nodes() if n.name == name)


def member_next_hops(plan: LabPlan) -> set[str]:
    return {r.get("gateway", "") for r in member_routes(plan.name, MEMBER)}


def cloud_allowed(plan: LabPlan) -> dict[str, set[str]]:
    """public key -> allowed IPs of the public gateway's WireGuard peers (`wg show`)."""
    out: dict[str, set[str]] = {}
    for line in in_devices(plan, "cloud-1", "wg", "show", "raven-wg0", "allowed-ips").splitlines():
        key, *ips = line.split()
        out[key] = {ip for ip in ips if ip != "(none)"}
    return out


def carrier(plan: LabPlan) -> str:
    """The candidate the member routes through, from its kernel routes."""
    hops = member_next_hops(plan)
    for name in ("cone-1", "cone-2"):
        if hops == {vtep_for(node_ip(plan, name))[0]}:
            return name
    raise AssertionError(f"{MEMBER} routes via {hops}")


def settled(plan: LabPlan, timeout: float = 90.0) -> str:
    """Every pair answers and the member routes through the controller's active gateway."""
    cluster.wait_all_pairs(plan, timeout)
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.active_gateways(plan.name).get("gw-edge-cone", [])
        used = carrier(plan)
        if status[:1] == [used]:
            return used
        assert time.monotonic() < deadline, f"status {status}, member uses {used}"
        time.sleep(0.5)


def replies_resume(plan: LabPlan, timeout: float = 20.0) -> None:
    """Until pods of the public and the symmetric-NAT pool both reach the member's pod."""
    dst = next(n for _, n in plan.nodes() if n.name == MEMBER).pods[0].ip
    sources = [next(n for _, n in plan.nodes() if n.name == name).pods[0]
               for name in ("cloud-2", "sym-2")]
    deadline = time.monotonic() + timeout
    while True:
        ok = [subprocess.run(["ip", "netns", "exec", s.netns, "ping", "-n", "-c", "1", "-W",
                              "1", dst], capture_output=True).returncode == 0 for s in sources]
        if all(ok):
            return
        assert time.monotonic() < deadline, f"no reply from {dst} after the fault: {ok}"


def candidate_keys(plan: LabPlan) -> dict[str, str]:
    """WireGuard public keys of both candidates (read while both run: a standby holds a warm
    raven-wg0 too)."""
    return {name: wg_public_key(plan, name) for name in ("cone-1", "cone-2")}


def assert_carried_by(plan: LabPlan, new: str, old: str, keys: dict[str, str]) -> None:
    assert carrier(plan) == new
    allowed = cloud_allowed(plan)
    cone_subnets = {n.pod_cidr for n in plan.pools[1].nodes}
    assert cone_subnets <= allowed[keys[new]]
    assert not cone_subnets & allowed[keys[old]]


def events(plan: LabPlan, reason: str) -> dict[str, str]:
    """Event name -> message of every Event with `reason` (kubectl)."""
    data = cluster.kubectl_json(plan.name, "get", "events", "-A")
    return {e["metadata"]["name"]: e.get("message", "") for e in data.get("items", [])
            if e.get("reason") == reason}


def failover_causes(plan: LabPlan, before: dict[str, str], old: str, new: str,
                    timeout: float = 60.0) -> list[str]:
    """The causes named by the GatewayFailover events of the move old -> new recorded since
    `before` (waits for the first: the controller reports a move once its cause is settled,
    within two heartbeat periods plus a resync)."""
    deadline = time.monotonic() + timeout
    while True:
        # Only this move's events: a move made before the test (e.g. at the lab's start on a
        # loaded machine) is reported once its cause settles, which can be after `before`.
        fresh = [m for n, m in events(plan, "GatewayFailover").items()
                 if n not in before and f"active gateway {old} -> {new}, cause: " in m]
        if fresh:
            return [m.rsplit("cause: ", 1)[1] for m in fresh]
        assert time.monotonic() < deadline, f"no GatewayFailover event for {old} -> {new}"
        time.sleep(0.5)


def test_a_powered_off_gateway_is_replaced_without_the_cloud(lab: LabPlan) -> None:
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    keys = candidate_keys(lab)
    before = events(lab, "GatewayFailover")
    faults.node_down(lab.name, old)
    try:
        replies_resume(lab)
        assert_carried_by(lab, new, old, keys)
        # The controller follows the pool (adopted from the nodes' annotations).
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
        # One event, naming the cause: its heartbeat stopped with its probes (it was still
        # fresh when the pool failed over; the cause waits for the missed renewals).
        assert failover_causes(lab, before, old, new) == ["power-off"]
    finally:
        faults.node_up(lab.name, old)
    assert settled(lab) == new  # the old gateway comes back as a standby: no move back
    assert len([n for n, m in events(lab, "GatewayFailover").items()
                if n not in before and f"active gateway {old} -> " in m]) == 1


def test_a2_a_gateway_powered_off_and_back_at_once_is_a_power_off(lab: LabPlan) -> None:
    """Issue 12 item 7: powered off, then back (a power cycle, fresh kernel state) as soon as
    the controller moved the pool, within two heartbeat renewals: it heartbeats again after the
    move, from a new agent. One event, cause power-off (not probe loss)."""
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    before = events(lab, "GatewayFailover")
    lease = ("get", "lease", "-n", "kube-system", f"raven-agent-{old}")
    started = cluster.kubectl_json(lab.name, *lease)["spec"]["acquireTime"]
    assert faults.gateway_fail(lab.name, POOL) == old
    try:
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
        last = cluster.kubectl_json(lab.name, *lease)["spec"]["renewTime"]  # the dead agent's
        stamp = cluster.agent_status_stamp(lab.name, old)
        faults.node_up(lab.name, old, reboot=True)
        cluster.wait_agent_ready(lab.name, old, stamp)
        # The new agent marks its start on its Lease (acquireTime) with its first heartbeat.
        deadline = time.monotonic() + 60
        while (restart := cluster.kubectl_json(lab.name, *lease)["spec"]["acquireTime"]) \
                == started:
            assert time.monotonic() < deadline, f"{old}'s new agent never marked its start"
            time.sleep(0.5)
        assert failover_causes(lab, before, old, new) == ["power-off"]
        gap = (parse_time(restart) or 0.0) - (parse_time(last) or 0.0)
        print(f"{old}: new agent's first heartbeat {gap:.1f}s after the dead one's last "
              f"(heartbeats alone say probe loss when under two renewals, 10 s)")
    finally:
        faults.node_up(lab.name, old)
    assert settled(lab) == new  # back as a standby: no move back, no second event
    assert len([n for n, m in events(lab, "GatewayFailover").items()
                if n not in before and f"active gateway {old} -> " in m]) == 1


def test_b_a_gateway_that_heartbeats_but_does_not_forward_is_replaced(lab: LabPlan) -> None:
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    keys = candidate_keys(lab)
    before = cluster.kubectl_json(lab.name, "get", "lease", "-n", "kube-system",
                                  f"raven-agent-{old}")["spec"]["renewTime"]
    seen = events(lab, "GatewayFailover")
    faults.blackhole(lab.name, old)
    try:
        replies_resume(lab)
        assert_carried_by(lab, new, old, keys)
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
        # It is Ready and heartbeating all along (Kilo #489's case): its Lease is renewed while
        # it is blackholed (every heartbeat period, so wait for one).
        deadline = time.monotonic() + 30
        while cluster.kubectl_json(lab.name, "get", "lease", "-n", "kube-system",
                                   f"raven-agent-{old}")["spec"]["renewTime"] == before:
            assert time.monotonic() < deadline, f"{old} stopped renewing its heartbeat"
            time.sleep(0.5)
        assert failover_causes(lab, seen, old, new) == ["probe loss"]
        # The blackhole drops overlay traffic only: the node's underlay still answers.
        assert subprocess.run(["ip", "netns", "exec", lab.pools[1].nodes[2].netns, "ping",
                               "-c", "1", "-W", "1", node_ip(lab, old)],
                              capture_output=True).returncode == 0
    finally:
        faults.unblackhole(lab.name, old)
    assert settled(lab) == new
    assert len([n for n in events(lab, "GatewayFailover") if n not in seen]) == 1


def test_c_power_off_while_the_pool_is_cut_off_from_the_control_plane(lab: LabPlan) -> None:
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    keys = candidate_keys(lab)
    before = events(lab, "GatewayFailover")
    logged = log_size(lab, MEMBER)
    faults.disconnect(lab.name, POOL)
    try:
        faults.node_down(lab.name, old)
        replies_resume(lab)
        assert_carried_by(lab, new, old, keys)
        # Nobody in the pool could tell the controller: its status still names the old one,
        # and the pool's agents failed to publish their decision (their logs say so).
        assert cluster.active_gateways(lab.name)["gw-edge-cone"][:1] == [old]
        wait_log(lab, MEMBER, "cannot publish the pool's gateway", logged)
        faults.reconnect(lab.name, POOL)
        # Heard from again, the pool's decision is adopted (before the old node returns, or
        # the pool would follow the status back to it).
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
        # One event, naming the partition, whichever the controller heard first: the pool's
        # late, offline-flagged votes, or the old gateway's heartbeat expiring before the rest
        # of the cut-off pool's (then the status is kept, since no other candidate renewed
        # within half the timeout: raven.election's silent pool rule, and the flagged votes
        # move it after the reconnect).
        assert failover_causes(lab, before, old, new) == ["partition"]
    finally:
        faults.reconnect(lab.name, POOL)
        faults.node_up(lab.name, old)
    assert settled(lab) == new
    assert len([n for n, m in events(lab, "GatewayFailover").items()
                if n not in before and f"active gateway {old} -> " in m]) == 1


def log_size(plan: LabPlan, node: str) -> int:
    return runtime.log_path(plan.name, node, cluster.AGENT).stat().st_size


def wait_log(plan: LabPlan, node: str, text: str, since: int, timeout: float = 60.0) -> None:
    """Until `node`'s agent log says `text` after byte `since`."""
    path = runtime.log_path(plan.name, node, cluster.AGENT)
    deadline = time.monotonic() + timeout
    while text.encode() not in path.read_bytes()[since:]:
        assert time.monotonic() < deadline, f"{node}'s agent log never said {text!r}"
        time.sleep(0.2)


CAPTURE = Path(__file__).resolve().parent / "carrier_capture.py"


@contextlib.contextmanager
def captures(plan: LabPlan, nodes: tuple[str, ...], where: Path) -> Iterator[dict[str, Path]]:
    """A kernel packet tap (carrier_capture.py) in each node until the block ends."""
    files = {n: where / f"{n}.jsonl" for n in nodes}
    procs: list[subprocess.Popen[str]] = []
    try:
        for n in nodes:
            proc = subprocess.Popen([*runtime.node_exec_argv(plan.name, n), sys.executable,
                                     str(CAPTURE), str(files[n]),
                                     runtime.tunnel_netns(plan.name, n)],
                                    stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield files
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@contextlib.contextmanager
def ping_streams(pairs: list[tuple[PodPlan, str]]) -> Iterator[None]:
    """A ping every 10 ms from each pod to its destination until the block ends."""
    procs = [subprocess.Popen(["ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-i",
                               "0.01", "-W", "1", dst], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for src, dst in pairs]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def carried(files: dict[str, Path], pods: set[str]) -> dict[str, list[float]]:
    """node -> kernel timestamps of the stream packets (ICMP between `pods`) that crossed its
    WireGuard device, i.e. cross-pool traffic that node carried."""
    out: dict[str, list[float]] = {}
    for node, path in files.items():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[node] = sorted(r["t"] for r in rows
                           if "seq" in r and r["src"] in pods and r["dst"] in pods)
    return out


def probe_ticks(files: dict[str, Path], node: str, prober_vtep: str) -> list[float]:
    """Kernel timestamps of the data-path probes from `prober_vtep` arriving on `node`'s
    raven0: the probe rounds, the unit the overlap is measured in."""
    rows = [json.loads(line) for line in files[node].read_text().splitlines() if line.strip()]
    return sorted(r["t"] for r in rows if r.get("probe") and r["src"] == prober_vtep)


def wait_carried_only_by(files: dict[str, Path], pods: set[str], node: str,
                         packets: int = 100, timeout: float = 60.0) -> None:
    """Until the last `packets` stream packets all crossed `node` (and nothing else since)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = carried(files, pods)
        mine = seen.get(node, [])
        others = max((t for n, ts in seen.items() if n != node for t in ts[-1:]), default=0.0)
        if len([t for t in mine if t > others]) >= packets:
            return
        assert time.monotonic() < deadline, (
            f"traffic not carried by {node} alone: last packets "
            f"{ {n: ts[-3:] for n, ts in seen.items()} }")
        time.sleep(0.2)


def wait_probed(plan: LabPlan, observer: str, target: str, ok: Callable[[dict], bool],
                timeout: float = 60.0) -> None:
    """Until `observer`'s agent reports its probes of `target` as `ok` wants (a
    synchronisation point, not the oracle)."""
    path = cluster.state_dir(plan.name, observer) / cluster.AGENT_STATUS_FILE
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            probes = json.loads(path.read_text()).get("probes") or []
            if any(p["node"] == target and ok(p) for p in probes):
                return
        assert time.monotonic() < deadline, f"{observer}'s probes of {target}: {probes}"
        time.sleep(0.1)


def wait_carried_by_one(files: dict[str, Path], pods: set[str], packets: int = 100,
                        timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        seen = carried(files, pods)
        for node, mine in seen.items():
            others = max((t for n, ts in seen.items() if n != node for t in ts[-1:]),
                         default=0.0)
            if len([t for t in mine if t > others]) >= packets:
                return node
        assert time.monotonic() < deadline, "traffic not carried by one node"
        time.sleep(0.2)


def test_d_a_gateway_back_during_a_partition_never_shares_the_pools_traffic(
        lab: LabPlan, tmp_path: Path) -> None:
    """Issue 12, item 4: the pool fails over while cut off from the control plane, its old
    gateway comes back while it is still cut off, then the partition heals and the controller
    catches up. At no point do both candidates carry the pool's cross-pool traffic for longer
    than one probe interval. Oracle: kernel packet taps on both candidates (ICMP of two ping
    streams crossing their raven-wg0), timed in probe rounds (the member's probes arriving on
    the candidate that stays up)."""
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    member = next(n for _, n in lab.nodes() if n.name == MEMBER)
    cloud = next(n for _, n in lab.nodes() if n.name == "cloud-2")
    returning = next(n for _, n in lab.nodes() if n.name == old)
    streams = [(cloud.pods[0], member.pods[0].ip), (returning.pods[0], cloud.pods[0].ip)]
    pods = {cloud.pods[0].ip, member.pods[0].ip, returning.pods[0].ip}
    before = events(lab, "GatewayFailover")
    faults.disconnect(lab.name, POOL)
    try:
        faults.node_down(lab.name, old)
        replies_resume(lab)
        with captures(lab, ("cone-1", "cone-2"), tmp_path) as files, ping_streams(streams):
            wait_carried_only_by(files, pods, new, packets=50)
            stamp = cluster.agent_status_stamp(lab.name, old)
            # Powered on again while its pool is still cut off: a power cycle, so a fresh
            # kernel (without reboot the lab keeps the node's kernel state, and its stale routes
            # forward its own pods' traffic for the moment before its agent runs).
            faults.node_up(lab.name, old, reboot=True)
            cluster.wait_agent_ready(lab.name, old, stamp)
            wait_probed(lab, MEMBER, old, lambda p: p["verdict"] == "up")  # the pool sees it
            wait_probed(lab, old, new, lambda p: p["replies"] > 0)  # and it hears the pool
            # The pool stays on the gateway it chose: the returning node is a standby.
            final = wait_carried_by_one(files, pods)
            assert final == new, f"the pool moved back to {final}"
            faults.reconnect(lab.name, POOL)
            deadline = time.monotonic() + 60
            while cluster.active_gateways(lab.name).get("gw-edge-cone", [])[:1] != [final]:
                assert time.monotonic() < deadline, "the controller never caught up"
                time.sleep(0.5)
            wait_carried_only_by(files, pods, final)
        seen = carried(files, pods)
        ticks = probe_ticks(files, new, vtep_for(member.underlay_ip)[0])
    finally:
        faults.reconnect(lab.name, POOL)
        faults.node_up(lab.name, old)
    a, b = seen[old], seen[new]
    assert b and ticks, "no stream packets or probes captured on the carrier"
    start, end = max(a[0], b[0]) if a else 0.0, min(a[-1], b[-1]) if a else 0.0
    overlap = [t for t in ticks if start < t < end]
    print(f"{old} carried {len(a)} stream packets, {new} {len(b)}; both carried for "
          f"{max(0.0, end - start):.3f}s = {len(overlap)} probe rounds")
    assert len(overlap) <= 1, (
        f"{old} and {new} both carried the pool's traffic for {len(overlap)} probe rounds "
        f"({end - start:.3f}s)")
    assert failover_causes(lab, before, old, new) == ["partition"]
    assert settled(lab) == new


def test_loss_and_blackhole_verbs(lab: LabPlan) -> None:
    settled(lab)
    member = lab.pools[1].nodes[2]
    src = lab.pools[0].nodes[1].pods[0]

    def answers() -> bool:
        return subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-n", "-c", "3", "-i",
                               "0.2", "-W", "1", member.pods[0].ip],
                              capture_output=True).returncode == 0

    faults.loss(lab.name, member.name, 100)
    try:
        assert not answers()
        assert member.name in faults.faults_active(lab.name)["loss"]
    finally:
        faults.loss(lab.name, member.name, 0)
    assert answers()
    assert faults.faults_active(lab.name)["loss"] == []
    with pytest.raises(Exception, match="percentage"):
        faults.loss(lab.name, member.name, 101)
    pool_netns = lab.pools[1].netns
    faults.blackhole(lab.name, member.name)
    faults.blackhole(lab.name, member.name)  # idempotent
    faults.unblackhole(lab.name, member.name)
    assert not [t for t in runtime_tables(pool_netns) if "blackhole" in t]
    report = ping_all(lab, tries=2, timeout_s=1)
    assert all(p.ok for p in report.pairs)


def runtime_tables(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "tables"],
                         capture_output=True, text=True).stdout
    return [t["table"]["name"] for t in json.loads(out or "{}").get("nftables", [])
            if "table" in t]

