"""Benchmark: packets lost while the agent of an active gateway restarts.

A three-pools lab runs the whole overlay. A member pod of the cloud pool pings, 100 times a
second, a member pod of the cone-NAT pool: the path crosses both pools' active gateways. The
agents of both active gateways are restarted (`raven.lab.faults.agent_restart`: SIGTERM, the
data plane stays, a new agent adopts it) --restarts times each, alternating. Reported: packets
sent, received, lost, the seconds each agent was away, and whether a gateway moved.
Prints figures only; `--json` prints a JSON summary as the last line ({"lost", ...}).

    .venv/bin/python bench/restart.py [--restarts 3] [--json]
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
RATE = 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "three-pools.yaml"))
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    lab = f"rvb-rs-{secrets.token_hex(3)}"
    away: list[float] = []
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan)
        cloud, edge = plan.pools[0], plan.pools[1]
        gateways = [cluster.wait_active(lab, cloud.name), cluster.wait_active(lab, edge.name)]
        src = cloud.nodes[-1].pods[0]
        dst = edge.nodes[-1].pods[0]
        seconds = 4 + 4 * args.restarts * len(gateways)
        ping = subprocess.Popen(
            ["ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-i", f"{1 / RATE}", "-c",
             str(seconds * RATE), "-W", "2", dst.ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        for _ in range(args.restarts):
            for node in gateways:
                away.append(faults.agent_restart(lab, node))
                time.sleep(3)
        out, _ = ping.communicate(timeout=seconds + 60)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if not match:
            sys.exit(f"ping: {out}")
        sent, received = int(match.group(1)), int(match.group(2))
        moved = [cluster.wait_active(lab, cloud.name), cluster.wait_active(lab, edge.name)] \
            != gateways
    finally:
        teardown.down(lab)
    lost = sent - received
    print(f"{len(away)} agent restarts on {', '.join(gateways)} during {sent} packets at "
          f"{RATE} pps: lost {lost} (target 0); agent away median "
          f"{statistics.median(away):.2f}s; gateway moved: {moved}")
    if args.json:
        print(json.dumps({"lost": lost, "sent": sent, "received": received,
                          "restarts": len(away), "rate_pps": RATE,
                          "agent_away_seconds": [round(a, 2) for a in away],
                          "gateway_moved": moved}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
