"""Benchmark: direct paths between NAT'd pools (hole punching) against the relay.

One nat-kinds lab (cloud, cone-a, cone-b, full-cone, symmetric) runs the whole overlay.
Measured once:
  up_to_direct_s        `raven lab up` (the command, as an operator runs it) started ->
                        cone-a <-> cone-b first seen direct (`wg show dump` on both gateways,
                        read every 0.1 s from the moment the lab's nodes exist)
  ready_to_direct_s     `lab up` exited (every pod pair answered) -> direct; negative when the
                        pair was direct before `lab up` finished
Measured per round (the direct path is cut on the lab's internet to force the relay, then
restored):
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
The timeline from `lab up` to the first direct path (seconds after `lab up` started) is printed
from the lab's progress (`raven lab up`'s stderr), the daemons' own logs, and the oracle
(`--rounds 0` measures only that).

    flock /tmp/raven-e2e.lock .venv/bin/python bench/paths.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
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
from raven.lab.plan import LabPlan  # noqa: E402

TIMEOUT = 90.0
CONE = ("cone-a", "cone-b")
# (node, daemon, message pattern, label): the first line of each in that daemon's log
# (asctime, millisecond resolution); {a}/{b}: the cone gateways' Gateway names.
LOG_MARKS = (
    ("control-plane", cluster.CONTROLLER, r"acquired leadership|leadership", "controller leads"),
    ("cloud-1", cluster.AGENT, r"agent \S+ starting", "cloud-1 agent starting"),
    ("cona-1", cluster.AGENT, r"agent \S+ starting", "cona-1 agent starting"),
    ("conb-1", cluster.AGENT, r"agent \S+ starting", "conb-1 agent starting"),
    ("cloud-1", cluster.AGENT, r"applied \S+ plan from live", "cloud-1 first live apply"),
    ("cona-1", cluster.AGENT, r"published WireGuard public key", "cona-1 key published"),
    ("conb-1", cluster.AGENT, r"published WireGuard public key", "conb-1 key published"),
    ("cona-1", cluster.AGENT, r"applied active-gateway plan from live",
     "cona-1 first live gateway apply"),
    ("conb-1", cluster.AGENT, r"applied active-gateway plan from live",
     "conb-1 first live gateway apply"),
    ("cloud-1", cluster.AGENT, r"made afresh", "cloud-1 renewed a peer"),
    ("cona-1", cluster.AGENT, r"made afresh", "cona-1 renewed a peer"),
    ("conb-1", cluster.AGENT, r"made afresh", "conb-1 renewed a peer"),
    ("cloud-1", cluster.AGENT, r"published observed endpoints",
     "cloud-1 published observed endpoints"),
    ("cona-1", cluster.AGENT, r"path to {b}: probing", "cona-1 probing cone-b"),
    ("conb-1", cluster.AGENT, r"path to {a}: probing", "conb-1 probing cone-a"),
    ("cona-1", cluster.AGENT, r"path to {b}: handshake seen", "cona-1 handshake with cone-b"),
    ("conb-1", cluster.AGENT, r"path to {a}: handshake seen", "conb-1 handshake with cone-a"),
    ("cona-1", cluster.AGENT, r"path to {b}: direct", "cona-1 direct to cone-b"),
    ("conb-1", cluster.AGENT, r"path to {a}: direct", "conb-1 direct to cone-a"),
)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_marks(lab: str, gateways: dict[str, str]) -> list[tuple[float, str]]:
    """(unix time, label) of the first log line matching each of LOG_MARKS."""
    out = []
    for node, daemon, pattern, label in LOG_MARKS:
        regex = re.compile(pattern.format(**gateways))
        try:
            lines = runtime.log_path(lab, node, daemon).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            stamp = LOG_TIME.match(line)
            if stamp and regex.search(line):
                out.append((datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
                            .timestamp(), label))
                break
    return out


def print_timeline(started: float, events: list[tuple[float, str]]) -> dict[str, float]:
    """Print the events as seconds after `started` (unix); return {label: seconds}."""
    out = {}
    print("timeline (s after `lab up` started):")
    for at, label in sorted(events):
        out[label] = round(at - started, 2)
        print(f"  {at - started:7.2f}  {label}")
    return out


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the lab's daemon logs here "
                        "before the lab is removed")
    args = parser.parse_args()
    lab = f"rvb-paths-{secrets.token_hex(3)}"
    path = ROOT / "test-topologies" / "nat-kinds.yaml"
    rounds: list[dict] = []
    failed: list[str] = []
    summary: dict = {}
    direct: ps.DirectWatch | None = None
    up = ps.LabUp(path, lab)
    try:
        plan = up.plan()
        a, b = ps.pool(plan, "cone-a"), ps.pool(plan, "cone-b")
        direct = ps.DirectWatch(plan, [(a, b)], poll=0.1)
        up.wait()
        ready = time.monotonic()
        first = direct.wait(TIMEOUT).get((a.name, b.name))
        if first is None:
            raise AssertionError(f"cone-a <-> cone-b not direct after {TIMEOUT:g}s")
        events = [(at, f"lab up: {text}") for at, text in up.lines]
        events.append((up.started_wall + first - up.started,
                       "ORACLE: wg show: cone-a <-> cone-b direct"))
        summary["up_to_direct_s"] = round(first - up.started, 2)
        summary["ready_to_direct_s"] = round(first - ready, 2)  # < 0: direct before ready
        events += log_marks(lab, {"a": a.gateway, "b": b.gateway})
        summary["timeline"] = print_timeline(up.started_wall, events)
        print(f"`raven lab up` started -> direct {summary['up_to_direct_s']}s "
              f"(lab up reported ready -> direct {summary['ready_to_direct_s']}s)")
        for n in range(args.rounds):
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
    finally:
        up.stop()
        if direct is not None:
            with contextlib.suppress(Exception):
                direct.stop()
        if args.keep_logs:
            shutil.copytree(runtime.run_dir(lab) / "logs", args.keep_logs, dirs_exist_ok=True)
        teardown.down(lab)
    for key in ("relay_bytes_relayed", "relay_bytes_direct", "iperf_bytes_relayed",
                "iperf_bytes_direct", "rtt_relayed_ms", "rtt_direct_ms", "upgrade_s",
                "upgrade_lost", "rebind_gap_s"):
        values = [r[key] for r in rounds]
        summary[key] = statistics.median(values) if values else None
    summary["upgrade_lost_max"] = max((r["upgrade_lost"] for r in rounds), default=None)
    summary.update(rounds=len(rounds), failed_rounds=len(failed), failures=failed,
                   per_round=rounds)
    print(f"summary: {json.dumps({k: v for k, v in summary.items() if k != 'per_round'})}")
    if args.json:
        print(json.dumps(summary))
    return 1 if failed and not rounds else 0


if __name__ == "__main__":
    sys.exit(main())
