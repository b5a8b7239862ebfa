"""Benchmark: `lab up` to every pod pair answering, on five-pools (17 nodes, 5 Gateways).

Phases timed with the lab's own progress messages: network (namespaces, NAT, pods), control
plane (API server, CRD, Nodes, Gateways, controller), agents started, and all pairs answering
(ICMP between every pair of pods, the oracle). Repeated --runs times with a fresh lab each.
Prints figures only; `--json` prints a JSON summary as the last line ({"seconds", ...}: median
of lab up -> all pairs ok).

    .venv/bin/python bench/converge.py [--runs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

from raven.lab import build, cluster, teardown
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]


def one_run(path: str) -> dict[str, float]:
    lab = f"rvb-cv-{secrets.token_hex(3)}"
    marks: dict[str, float] = {}
    start = time.monotonic()

    def progress(message: str) -> None:
        now = time.monotonic() - start
        if message.startswith("gateway controller"):
            marks.setdefault("control_plane", now)
        if message.startswith("agents on"):
            marks.setdefault("agents_started", now)
        print(f"  [{now:6.2f}s] {message}", flush=True)

    try:
        plan = build.up(load_topology(path), lab, progress=progress, source=path)
        marks["network"] = time.monotonic() - start
        report = cluster.up(plan, progress=progress)
        marks["all_pairs"] = time.monotonic() - start
        marks["pairs"] = len(report.pairs) if report else 0
    finally:
        teardown.down(lab)
    return {k: round(v, 2) for k, v in marks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "five-pools.yaml"))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    runs = []
    for i in range(args.runs):
        r = one_run(args.topology)
        runs.append(r)
        print(f"run {i + 1}: network {r['network']:.1f}s, control plane "
              f"{r.get('control_plane', 0):.1f}s, agents started {r.get('agents_started', 0):.1f}s,"
              f" all {r['pairs']:.0f} pairs answer {r['all_pairs']:.1f}s", flush=True)
    seconds = statistics.median(r["all_pairs"] for r in runs)
    print(f"converge: median {seconds:.1f}s from lab up to all pairs ok ({args.topology})")
    if args.json:
        print(json.dumps({"seconds": seconds, "runs": runs, "topology": args.topology}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
