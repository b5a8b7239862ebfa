"""`raven lab demo`: build a lab, show it, ping, print the connectivity matrix, tear it down.

The demo is a list of steps run in order over a shared DemoContext; later stages (the overlay:
API server, controller, agents) add steps with `extra_steps` (inserted after the lab is up and
shown, before the ping), so the demo grows without being rewritten.
Exit status: 0 when every pair the current stage expects to answer did answer
(`ctx.expect_scope`: "pool" until the overlay exists, then "all").
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from raven.lab import build, teardown
from raven.lab.ping import PingReport, format_matrix, ping_all
from raven.lab.plan import LabPlan
from raven.lab.status import format_status
from raven.lab.topology import find_topology, load_topology

DEFAULT_TOPOLOGY = "three-pools"  # bundled topology (package data), see topology.find_topology


@dataclass
class DemoContext:
    plan: LabPlan
    out: TextIO
    expect_scope: str = "pool"  # which pairs must answer: "pool" (no overlay) or "all"
    report: PingReport | None = None
    notes: list[str] = field(default_factory=list)


DemoStep = Callable[[DemoContext], None]


def run_demo(topology_path: str | Path | None = None, keep: bool = False,
             name: str | None = None, extra_steps: Sequence[DemoStep] = (),
             out: TextIO = sys.stdout) -> int:
    path = find_topology(topology_path or DEFAULT_TOPOLOGY)
    topology = load_topology(path)
    lab = name or f"{topology.name or 'demo'}"
    print(f"== building lab {lab} from {path}", file=out, flush=True)
    plan = build.up(topology, lab, progress=lambda m: print(f"   {m}", file=out, flush=True),
                    source=str(path))
    try:
        ctx = DemoContext(plan=plan, out=out)
        print(f"\n== the lab\n{format_status(plan)}", file=out, flush=True)
        for step in extra_steps:
            step(ctx)
        print("\n== ping: every pod to every other pod", file=out, flush=True)
        ctx.report = ping_all(plan, scope="all")
        pools = [p.name for p in plan.pools]
        print("answered/tried pod pairs (rows: from, columns: to)", file=out)
        print(format_matrix(ctx.report, pools), file=out)
        expected = [p for p in ctx.report.pairs
                    if ctx.expect_scope == "all" or p.src_pool == p.dst_pool]
        failed = [p for p in expected if not p.ok]
        if ctx.expect_scope == "pool":
            print("\nInside each pool pods reach each other through the lab's CNI stand-in; "
                  "across pools they do not until the overlay runs.", file=out)
        for note in ctx.notes:
            print(note, file=out)
        if failed:
            print(f"\nFAILED: {len(failed)} expected pairs did not answer: " + ", ".join(
                f"{p.src}->{p.dst}" for p in failed[:10]), file=out)
        else:
            print(f"\nOK: all {len(expected)} expected pairs answered", file=out)
        return 1 if failed else 0
    finally:
        if keep:
            print(f"\n== kept lab {lab}; remove it with `raven lab down {lab}`", file=out)
        else:
            try:  # a closed output pipe while saying so must not skip the teardown
                print(f"\n== tearing down lab {lab}", file=out, flush=True)
            finally:
                teardown.down(lab)
