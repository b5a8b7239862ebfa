"""Benchmark: direct paths between NAT'd pools (hole punching) against the relay.

One nat-kinds lab (cloud, cone-a, cone-b, full-cone, symmetric) runs the whole overlay.
Measured once:
  up_to_direct_s        `lab up` started -> cone-a <-> cone-b direct (wg show on both gateways)
  ready_to_direct_s     every pod pair answered (end of `lab up`) -> direct
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

    flock /tmp/raven-e2e.lock .venv/bin/python bench/paths.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import paths_support as ps  # noqa: E402  (the oracles shared with tests/e2e)

from raven.lab import build, cluster, nat, teardown  # noqa: E402
from raven.lab.plan import LabPlan  # noqa: E402
from raven.lab.topology import load_topology  # noqa: E402

TIMEOUT = 90.0


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
    args = parser.parse_args()
    lab = f"rvb-paths-{secrets.token_hex(3)}"
    path = ROOT / "test-topologies" / "nat-kinds.yaml"
    rounds: list[dict] = []
    failed: list[str] = []
    summary: dict = {}
    try:
        started = time.monotonic()
        plan = build.up(load_topology(path), lab, source=str(path))
        cluster.up(plan)
        ready = time.monotonic()
        a, b = ps.pool(plan, "cone-a"), ps.pool(plan, "cone-b")
        ps.wait_for(lambda: ps.direct(plan, a, b), TIMEOUT, "cone-a <-> cone-b direct",
                    poll=0.05)
        now = time.monotonic()
        summary["up_to_direct_s"] = round(now - started, 2)
        summary["ready_to_direct_s"] = round(now - ready, 2)
        print(f"lab up -> direct {summary['up_to_direct_s']}s "
              f"(all pairs answered -> direct {summary['ready_to_direct_s']}s)")
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
