"""Interleaved A/B throughput between the same pods of two running labs (for bisecting).

bench/throughput.py --keep leaves an overlay lab and its hand-built twin up; edit the live
kernel state of one (delete an nft chain, change a sysctl, ...) and measure it against the
other with this script, in ABBA order. Failed samples count as 0 and are reported.

    .venv/bin/python bench/throughput_ab.py LAB_A LAB_B CLIENT_POD SERVER_POD
        [--rounds 6] [--seconds 3] [--label TEXT] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from throughput import cpu_seconds, wireguard_pids

from raven.errors import CommandError
from raven.lab.iperf import iperf
from raven.lab.runtime import load_plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lab_a")
    parser.add_argument("lab_b")
    parser.add_argument("client")
    parser.add_argument("server")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--setup-a", default="", help="shell command run before every A "
                        "sample (LAB_B may equal LAB_A: then this toggles one factor in one lab)")
    parser.add_argument("--concurrent", action="store_true", help="run A and B at the same "
                        "time (needs two labs): both see exactly the same machine load, and "
                        "share the CPU in proportion to what each path costs per byte")
    parser.add_argument("--setup-b", default="", help="shell command run before every B sample")
    args = parser.parse_args()
    if args.concurrent and args.lab_a == args.lab_b:
        parser.error("--concurrent needs two labs")
    plan = load_plan(args.lab_a)
    server_ip = next(p.ip for pool in plan.pools for n in pool.nodes for p in n.pods
                     if p.name == args.server)
    sides = {"A": (args.lab_a, args.setup_a), "B": (args.lab_b, args.setup_b)}
    values: dict[str, list[float]] = {"A": [], "B": []}
    # wireguard-go CPU seconds per Gbit: its syscalls carry the node's netfilter and routing
    # work for the packets it sends and receives, and it varies less with load than Mbit/s
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    pids = {side: wireguard_pids(lab, load_plan(lab)) for side, (lab, _) in sides.items()}
    failures = 0
    loads = []
    def setup(side: str) -> None:
        if sides[side][1]:
            subprocess.run(["sh", "-c", sides[side][1]], check=True, timeout=60)

    def sample(side: str) -> tuple[float, float]:
        lab = sides[side][0]
        before = cpu_seconds(pids[side])
        try:
            mbit = iperf(f"{lab}.{args.server}", server_ip, f"{lab}.{args.client}",
                         args.seconds).mbit
        except (CommandError, KeyError, subprocess.TimeoutExpired) as exc:
            print(f"  FAILED {lab}: {exc}", flush=True)
            return 0.0, 0.0
        gbit = mbit * args.seconds / 1000
        return mbit, (cpu_seconds(pids[side]) - before) / gbit if gbit else 0.0

    for i in range(args.rounds):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
        loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
        if args.concurrent:
            for side in order:
                setup(side)
            with ThreadPoolExecutor(2) as pool:  # the first of `order` starts first
                futures = {side: pool.submit(sample, side) for side in order}
            results = {side: f.result() for side, f in futures.items()}
        else:
            results = {}
            for side in order:  # a setup right before its own sample: it may undo the other's
                setup(side)
                results[side] = sample(side)
        for side, (mbit, cost) in results.items():
            failures += mbit == 0.0
            values[side].append(round(mbit, 1))
            cpu[side].append(round(cost, 2))
    a, b = values["A"], values["B"]
    ratios = [round(x / y, 3) if y else 0.0 for x, y in zip(a, b, strict=True)]
    summary = {"label": args.label, "a": a, "b": b, "ratios": ratios,
               "ratio": statistics.median(ratios), "a_mbit": statistics.median(a),
               "b_mbit": statistics.median(b), "failures": failures, "load": loads,
               "a_cpu_s_per_gbit": cpu["A"], "b_cpu_s_per_gbit": cpu["B"]}
    print(f"{args.label:<40} A {statistics.median(a):6.1f} ({min(a)}-{max(a)})  B "
          f"{statistics.median(b):6.1f} ({min(b)}-{max(b)})  A/B median {summary['ratio']:.3f} "
          f"range {min(ratios):.3f}-{max(ratios):.3f}  n={args.rounds} fail={failures} load "
          f"{min(loads)}-{max(loads)}; wireguard-go CPU-s/Gbit A "
          f"{statistics.median(cpu['A']):.2f} B {statistics.median(cpu['B']):.2f}",
          flush=True)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
