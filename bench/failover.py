"""Benchmark: gateway failure to the first good packet, in a pool with two gateway candidates.

A two-pools lab (cloud, edge behind cone NAT with candidates edge-1 and edge-2) runs the whole
overlay. A pod in the cloud pings, 100 times a second (`ping -D`, timestamps), the pod on the
edge candidate that is NOT the active gateway. Then the active edge gateway is powered off
(`raven.lab.faults.node_down`, what `gateway_fail` does: processes killed, port down).
Measured per round:
  seconds   fault -> the first echo reply that ends the outage (gap in replies) it caused
  elected   fault -> the Gateway status names the new active endpoint
The lab's knobs (agent heartbeat every 1 s, controller heartbeat timeout, resync) are printed:
the figure is mostly the heartbeat timeout. The node is powered on again between rounds.
Prints figures only; `--json` prints a JSON summary as the last line ({"seconds", ...}: median).

    .venv/bin/python bench/failover.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from raven.lab import build, cluster, faults, teardown
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def first_reply_after_outage(lines: list[str], t0: float, gap: float = 0.5) -> float | None:
    """Timestamp of the first echo reply that ends the first gap (> `gap` s between replies)
    after t0; t0 itself when replies never stopped."""
    stamps = [float(m.group(1)) for m in map(REPLY.match, lines) if m]
    previous = None
    for ts in stamps:
        if previous is not None and ts > t0 and ts - previous > gap:
            return ts
        previous = ts
    return t0 if stamps and stamps[-1] > t0 + 2 * gap else None


def one_round(lab: str) -> dict[str, float]:
    plan = cluster.runtime.load_plan(lab)
    edge = plan.pools[1]
    active = cluster.wait_active(lab, edge.name)
    standby = next(n for n in edge.nodes if n.gateway_candidate and n.name != active)
    src = plan.pools[0].nodes[-1].pods[0]
    dst = standby.pods[0]
    ping = subprocess.Popen(["ip", "netns", "exec", src.netns, "ping", "-n", "-D", "-i", "0.01",
                             "-w", "40", "-W", "1", dst.ip],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    t0 = time.time()
    faults.node_down(lab, active)  # what gateway_fail does, without its status lookup
    elected_node = cluster.wait_active(lab, edge.name, timeout=60, exclude=(active,))
    elected = time.time() - t0
    deadline = time.monotonic() + 40
    out: list[str] = []
    # let ping run until we have seen replies well after the fault, then stop it
    while time.monotonic() < deadline:
        time.sleep(1)
        if time.time() - t0 > elected + 3:
            break
    ping.terminate()
    text, _ = ping.communicate(timeout=10)
    out = text.splitlines()
    first = first_reply_after_outage(out, t0)
    faults.node_up(lab, active)
    seconds = (first - t0) if first is not None else float("nan")
    return {"seconds": round(seconds, 2), "elected": round(elected, 2),
            "failed": active, "new": elected_node}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "two-pools.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    lab = f"rvb-fo-{secrets.token_hex(3)}"
    rounds = []
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan)
        settings = cluster.load_settings(lab)
        print(f"heartbeat every {settings.heartbeat_period:g}s, timeout "
              f"{settings.heartbeat_timeout:g}s, controller resync {settings.controller_resync:g}s")
        for i in range(args.rounds):
            r = one_round(lab)
            rounds.append(r)
            print(f"round {i + 1}: {r['failed']} down -> {r['new']} elected after "
                  f"{r['elected']:.2f}s, first good packet after {r['seconds']:.2f}s", flush=True)
            cluster.wait_all_pairs(plan, 60)
    finally:
        teardown.down(lab)
    seconds = statistics.median(r["seconds"] for r in rounds)
    print(f"failover: median {seconds:.2f}s to the first good packet (target <= 10 s)")
    if args.json:
        print(json.dumps({"seconds": seconds, "rounds": rounds,
                          "max_seconds": max(r["seconds"] for r in rounds),
                          "heartbeat_timeout": settings.heartbeat_timeout,
                          "heartbeat_period": settings.heartbeat_period}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
