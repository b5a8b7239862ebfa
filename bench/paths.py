"""Benchmark: direct paths between NAT'd pools (hole punching) against the relay.

Runs `raven lab up TOPOLOGY` (default nat-kinds: cloud, cone-a, cone-b, full-cone, symmetric)
as an operator runs it, `--ups N` times, the whole overlay each time.
Measured per `lab up`:
  up_to_direct_s        `raven lab up` (the command) started -> every cone pair (both pools
                        behind a port-restricted or full-cone NAT) first seen direct (`wg show
                        dump` on every gateway candidate of both pools, read every 0.1 s from
                        the moment the lab's nodes exist); per pair in `pairs`
  ready_to_direct_s     `lab up` exited (every pod pair answered) -> direct; negative when the
                        pairs were direct before `lab up` finished
  timeline              seconds after `lab up` started of: lab up's own steps (its progress
                        lines: namespaces built, API server, controller, agents), and for each
                        candidate of a public pool or a cone pool: agent spawned (its supervisor
                        record), imported ("agent starting"), first plan applied, key published,
                        elected, a lost first handshake renewed, (public gateways) a mapped
                        endpoint learned and published, (NAT'd) probe peer added, first
                        handshake, direct switch; and the oracle's first direct read per pair
The summary gives the median and max of up_to_direct_s over the ups and, per timeline label,
its median [min-max] (`breakdown`).
Measured per round on the last lab up (nat-kinds only: its pool names; `--rounds 0` on other
topologies; the direct path is cut on the lab's internet to force the relay, then restored):
  relay_bytes_relayed   growth of the relay's WireGuard counters (rx+tx of its peers for the two
                        cone gateways, `wg show dump` on the cloud gateway) during a TCP iperf3
                        cone-a pod -> cone-b pod while the pair is relayed
  relay_bytes_direct    the same during the same iperf3 once the pair is direct again
  iperf_bytes_*         what iperf3 moved in each case
  rtt_relayed_ms / rtt_direct_ms   median of 50 pings (20 ms apart) pod to pod
  upgrade_lost          pings lost (50 per second) while the path moves relay -> direct
  upgrade_s             block lifted -> direct
  rebind_gap_s          `nat-rebind cone-a` -> longest gap between ping replies
A failed round (an oracle not reached in time) is counted and reported, never dropped silently.
Prints figures; `--json` prints a JSON summary as the last line (medians over good rounds).

    flock /tmp/raven-e2e.lock .venv/bin/python bench/paths.py [--ups 5] [--rounds 3] [--json]
    flock /tmp/raven-e2e.lock .venv/bin/python bench/paths.py --ups 5 --rounds 0 \
        --topology test-topologies/acceptance-mesh.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import paths_support as ps  # noqa: E402  (the oracles shared with tests/e2e)

from raven.lab import cluster, nat, runtime, teardown  # noqa: E402
from raven.lab.plan import LabPlan, PoolPlan  # noqa: E402

TIMEOUT = 90.0
CONE_KINDS = ("cone", "full-cone")  # the NAT kinds whose pairs go direct
# (daemon, message pattern, label) per node: the first line of each in that daemon's log
# (asctime, millisecond resolution); {node} the node's name, {peers}: the Gateway names of the
# node's cone-pair partners (an alternation).
AGENT_MARKS = (
    (r"agent \S+ starting", "imported (agent starting)"),
    (r"applied \S+ plan from", "first plan applied"),
    (r"published WireGuard public key", "key published"),
    (r"made afresh", "renewed a first handshake"),
    (r"learned the mapped endpoint", "learned a mapped endpoint"),
    (r"published observed endpoints", "mapping published (observed endpoints)"),
    (r"path to (?:{peers}): probing", "probe peer added"),
    (r"path to (?:{peers}): handshake seen", "first handshake"),
    (r"path to (?:{peers}): direct", "direct switch"),
)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _first_line(path: Path, regex: re.Pattern) -> float | None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        stamp = LOG_TIME.match(line)
        if stamp and regex.search(line):
            return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def cone_pairs(plan: LabPlan) -> list[tuple[PoolPlan, PoolPlan]]:
    """Every pair of pools behind cone NATs (port-restricted or full) with a candidate each."""
    pools = [p for p in plan.pools if p.nat in CONE_KINDS and ps.candidates(p)]
    return list(itertools.combinations(pools, 2))


def log_marks(lab: str, plan: LabPlan, pairs: list[tuple[PoolPlan, PoolPlan]]
              ) -> list[tuple[float, str]]:
    """(unix time, label) of the steps from the agents' spawn to direct: each gateway
    candidate of a cone pair and of a public pool: spawned (its supervisor record written),
    then the first log line of each of AGENT_MARKS; the controller's leadership and its first
    election of each such node."""
    out = []
    at = _first_line(runtime.log_path(lab, cluster.CONTROL_PLANE, cluster.CONTROLLER),
                     re.compile(r"acquired leadership"))
    if at is not None:
        out.append((at, "controller ready (leads)"))
    partners: dict[str, set[str]] = {}
    for a, b in pairs:
        partners.setdefault(a.name, set()).add(b.gateway)
        partners.setdefault(b.name, set()).add(a.gateway)
    for pool in plan.pools:
        if not pool.public and pool.name not in partners:
            continue
        peers = "|".join(sorted(partners.get(pool.name, {"-"})))
        for node in ps.candidates(pool):
            with contextlib.suppress(OSError):
                out.append((runtime.pid_path(lab, node, cluster.AGENT).stat().st_mtime,
                            f"{node}: agent spawned"))
            for pattern, label in AGENT_MARKS:
                at = _first_line(runtime.log_path(lab, node, cluster.AGENT),
                                 re.compile(pattern.format(peers=peers)))
                if at is not None:
                    out.append((at, f"{node}: {label}"))
            at = _first_line(runtime.log_path(lab, cluster.CONTROL_PLANE, cluster.CONTROLLER),
                             re.compile(rf"elected \[[^]]*'{node}'"))
            if at is not None:
                out.append((at, f"{node}: elected by the controller"))
    return out


def print_timeline(started: float, events: list[tuple[float, str]]) -> dict[str, float]:
    """Print the events as seconds after `started` (unix); return {label: seconds}."""
    out = {}
    print("timeline (s after `lab up` started):")
    for at, label in sorted(events):
        out[label] = round(at - started, 2)
        print(f"  {at - started:7.2f}  {label}")
    return out


def one_up(path: Path, lab: str, keep: bool) -> tuple[dict, LabPlan | None]:
    """`raven lab up` once: the time from its start to each cone pair going direct, and the
    timeline. The lab is left up when `keep` (the caller removes it)."""
    summary: dict = {}
    direct: ps.DirectWatch | None = None
    up = ps.LabUp(path, lab)
    plan = None
    try:
        plan = up.plan()
        pairs = cone_pairs(plan)
        direct = ps.DirectWatch(plan, pairs, poll=0.1)
        up.wait()
        ready = time.monotonic()
        first = direct.wait(TIMEOUT)
        events = [(at, f"lab up: {text}") for at, text in up.lines]
        for a, b in pairs:
            if (a.name, b.name) in first:
                events.append((up.started_wall + first[(a.name, b.name)] - up.started,
                               f"ORACLE: wg show: {a.name} <-> {b.name} direct"))
        summary["pairs"] = {f"{a.name}<->{b.name}": (round(first[(a.name, b.name)]
                                                           - up.started, 2)
                                                     if (a.name, b.name) in first else None)
                            for a, b in pairs}
        done = [first[(a.name, b.name)] for a, b in pairs if (a.name, b.name) in first]
        summary["up_to_direct_s"] = (round(max(done) - up.started, 2)
                                     if len(done) == len(pairs) else None)
        summary["ready_to_direct_s"] = (round(max(done) - ready, 2)
                                        if len(done) == len(pairs) else None)
        events += log_marks(lab, plan, pairs)
        summary["timeline"] = print_timeline(up.started_wall, events)
        print(f"`raven lab up` started -> every cone pair direct {summary['up_to_direct_s']}s "
              f"(pairs: {summary['pairs']}; lab up reported ready -> direct "
              f"{summary['ready_to_direct_s']}s)")
    finally:
        up.stop()
        if direct is not None:
            with contextlib.suppress(Exception):
                direct.stop()
        if not keep:
            teardown.down(lab)
    return summary, plan


def rtt_ms(plan: LabPlan, src, dst, count: int = 50) -> float:
    """Median RTT of `count` pings pod to pod (ping's own per-reply times)."""
    out = subprocess.run(["ip", "netns", "exec", ps.pod(plan, src).netns, "ping", "-n", "-i",
                          "0.02", "-c", str(count), "-W", "1", ps.pod(plan, dst).ip],
                         capture_output=True, text=True, timeout=60).stdout
    samples = [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]
    if len(samples) < count // 2:
        raise AssertionError(f"ping {ps.pod(plan, dst).ip}: {len(samples)}/{count} replies")
    return statistics.median(samples)


def one_round(plan: LabPlan) -> dict:
    a, b, cloud = (ps.pool(plan, n) for n in ("cone-a", "cone-b", "cloud"))
    ps.wait_for(lambda: ps.direct(plan, a, b), TIMEOUT, "direct before the round")
    out: dict = {}
    # Direct: bytes through the relay during a bulk transfer, and the RTT.
    before = ps.relay_bytes(plan, cloud, [a, b])
    out["iperf_bytes_direct"] = ps.iperf(plan, a, b)
    out["relay_bytes_direct"] = ps.relay_bytes(plan, cloud, [a, b]) - before
    out["rtt_direct_ms"] = rtt_ms(plan, a, b)
    # Relayed: cut the direct path on the internet; the gateways fall back.
    ps.block(plan, a, b)
    try:
        ps.wait_for(lambda: ps.relayed(plan, a, b, cloud), 10, "fall back to the relay")
        before = ps.relay_bytes(plan, cloud, [a, b])
        out["iperf_bytes_relayed"] = ps.iperf(plan, a, b)
        out["relay_bytes_relayed"] = ps.relay_bytes(plan, cloud, [a, b]) - before
        out["rtt_relayed_ms"] = rtt_ms(plan, a, b)
        pinger = ps.Pinger(ps.pod(plan, a).netns, ps.pod(plan, b).ip)
        time.sleep(1)
    finally:
        ps.unblock(plan)
    out["upgrade_s"] = round(ps.wait_for(lambda: ps.direct(plan, a, b), TIMEOUT,
                                         "direct again"), 2)
    time.sleep(1)
    missing, _ = pinger.stop()
    out["upgrade_lost"] = len(missing)
    # nat-rebind: the cone-a NAT forgets its mappings under a 50 pps ping.
    pinger = ps.Pinger(ps.pod(plan, a).netns, ps.pod(plan, b).ip)
    time.sleep(1)
    rebound = time.time()
    nat.rebind(plan.name, a.name)
    time.sleep(6)
    _, stamps = pinger.stop()
    out["rebind_gap_s"] = round(ps.longest_gap(stamps, rebound), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", type=Path,
                        default=ROOT / "test-topologies" / "nat-kinds.yaml")
    parser.add_argument("--ups", type=int, default=1, help="`lab up`s to time (the rounds "
                        "run on the last one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy each lab's daemon logs here "
                        "(DIR/up-N) before the lab is removed")
    args = parser.parse_args()
    ups: list[dict] = []
    rounds: list[dict] = []
    failed: list[str] = []
    for n in range(max(1, args.ups)):
        lab = f"rvb-paths-{secrets.token_hex(3)}"
        last = n == max(1, args.ups) - 1
        print(f"--- lab up {n + 1} of {max(1, args.ups)}: {args.topology.name} ({lab})")
        try:
            result, plan = one_up(args.topology, lab, keep=True)
            ups.append(result)
            if last and args.rounds and plan is not None:
                rounds, failed = run_rounds(plan, args.rounds)
        finally:
            if args.keep_logs:
                shutil.copytree(runtime.run_dir(lab) / "logs",
                                Path(args.keep_logs) / f"up-{n + 1}", dirs_exist_ok=True)
            teardown.down(lab)
    summary = summarize(ups)
    for key in ("relay_bytes_relayed", "relay_bytes_direct", "iperf_bytes_relayed",
                "iperf_bytes_direct", "rtt_relayed_ms", "rtt_direct_ms", "upgrade_s",
                "upgrade_lost", "rebind_gap_s"):
        values = [r[key] for r in rounds]
        summary[key] = statistics.median(values) if values else None
    summary["upgrade_lost_max"] = max((r["upgrade_lost"] for r in rounds), default=None)
    summary.update(topology=args.topology.name, rounds=len(rounds), failed_rounds=len(failed),
                   failures=failed, per_round=rounds, per_up=ups)
    brief = {k: v for k, v in summary.items() if k not in ("per_round", "per_up", "breakdown")}
    print(f"summary: {json.dumps(brief)}")
    print("breakdown (s after `lab up` started; median [min-max] over the lab ups):")
    for label, (med, low, high) in sorted(summary["breakdown"].items(), key=lambda kv: kv[1]):
        print(f"  {med:7.2f} [{low:.2f}-{high:.2f}]  {label}")
    if args.json:
        print(json.dumps(summary))
    return 1 if (failed and not rounds) or summary["up_to_direct_max_s"] is None else 0


def summarize(ups: list[dict]) -> dict:
    """Median and max of the time to direct over the lab ups (None if a pair never went
    direct in one of them), and per timeline label its median, min and max."""
    times = [u.get("up_to_direct_s") for u in ups]
    ok = [t for t in times if t is not None]
    labels: dict[str, list[float]] = {}
    for u in ups:
        for label, at in u.get("timeline", {}).items():
            if not label.startswith("lab up: lab ") and not label.startswith("lab up: overlay"):
                labels.setdefault(label, []).append(at)
    return {
        "up_to_direct_s": times,
        "up_to_direct_median_s": statistics.median(ok) if ok else None,
        "up_to_direct_max_s": max(ok) if ok and len(ok) == len(times) else None,
        "breakdown": {k: (statistics.median(v), min(v), max(v)) for k, v in labels.items()},
    }


def run_rounds(plan: LabPlan, count: int) -> tuple[list[dict], list[str]]:
    rounds: list[dict] = []
    failed: list[str] = []
    for n in range(count):
        try:
            r = one_round(plan)
        except AssertionError as exc:
            failed.append(f"round {n + 1}: {exc}")
            print(f"round {n + 1}: FAILED: {exc}")
            continue
        rounds.append(r)
        print(f"round {n + 1}: relay bytes during iperf relayed {r['relay_bytes_relayed']} "
              f"({r['iperf_bytes_relayed']} moved) / direct {r['relay_bytes_direct']} "
              f"({r['iperf_bytes_direct']} moved); rtt relayed {r['rtt_relayed_ms']:.3f} ms "
              f"direct {r['rtt_direct_ms']:.3f} ms; upgrade {r['upgrade_s']}s lost "
              f"{r['upgrade_lost']}; nat-rebind gap {r['rebind_gap_s']}s")
    return rounds, failed


if __name__ == "__main__":
    sys.exit(main())
