"""Benchmark: time from `raven lab up` to network-ready (exit 0) for a topology, printed.

Runs `raven lab up FILE --name <unique> --network-only` as an operator would (a subprocess; it
exits once the underlay answers), then `raven lab down`, several times; `--overlay` times the
whole system instead (`lab up` without --network-only: until every pod pair answers).
As a reference measured in the same run it also times the bare creation and removal of the
same number of namespaces in one `ip -batch` (the floor any lab build pays), and prints the
ratio.
Prints figures only; never pass/fail. `--json` adds a JSON summary as the last line.

    .venv/bin/python bench/lab_up.py [--topology test-topologies/five-pools.yaml] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from raven.lab.plan import plan_lab
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], stdin: str | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} failed: {result.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "five-pools.yaml"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--overlay", action="store_true",
                        help="time the whole system (API server, controller, agents, all pod "
                        "pairs answering) instead of the bare network (--network-only)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")

    topology = load_topology(args.topology)
    raven = [sys.executable, "-m", "raven.cli"]
    ups, downs, refs = [], [], []
    n_namespaces = 0
    for _ in range(args.runs):
        lab = f"rvt-bench-{secrets.token_hex(3)}"
        n_namespaces = len(plan_lab(topology, lab).netns_names())
        try:
            extra = [] if args.overlay else ["--network-only"]
            ups.append(timed([*raven, "lab", "up", args.topology, "--name", lab, *extra]))
        finally:
            downs.append(timed([*raven, "lab", "down", lab]))
        names = [f"rvt-bench-ref-{secrets.token_hex(3)}-{i}" for i in range(n_namespaces)]
        start = time.perf_counter()
        timed(["ip", "-batch", "-"], "".join(f"netns add {n}\n" for n in names))
        timed(["ip", "-force", "-batch", "-"], "".join(f"netns del {n}\n" for n in names))
        refs.append(time.perf_counter() - start)

    up, down, ref = statistics.median(ups), statistics.median(downs), statistics.median(refs)
    nodes = sum(len(p.nodes) for p in topology.pools)
    pods = sum(n.pods for p in topology.pools for n in p.nodes)
    print(f"topology {args.topology}: {len(topology.pools)} pools, {nodes} nodes, {pods} pods, "
          f"{n_namespaces} namespaces; {args.runs} runs")
    what = "overlay-ready" if args.overlay else "network-ready"
    print(f"lab up to {what:<14} median {up:.3f} s  (runs: "
          f"{', '.join(f'{t:.3f}' for t in ups)})")
    print(f"lab down                 median {down:.3f} s")
    print(f"reference: add+del {n_namespaces} bare namespaces in one ip -batch  "
          f"median {ref:.3f} s; lab up = {up / ref:.1f}x that")
    if args.json:
        print(json.dumps({"topology": args.topology, "ready": what, "namespaces": n_namespaces,
                          "nodes": nodes,
                          "pods": pods, "runs": args.runs, "up_seconds": ups,
                          "up_median_seconds": up, "down_median_seconds": down,
                          "reference_netns_seconds": ref, "up_vs_reference": up / ref}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
