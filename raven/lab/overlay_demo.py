"""`raven lab demo`: the whole overlay on three-pools, shown and measured, then torn down.

Steps: build the lab, bring up the cluster (API server, controller, kubelet stand-in, agents)
with progress; print the lab and the elected gateways; ping every pod from every other pod and
print the pool matrix; run a 3-second iperf3 sample between two NAT'd pools (relayed through
the public pool); tear down unless `keep`. Exit status 0 when every pair answered.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from raven.errors import CommandError
from raven.lab import build, cluster, teardown
from raven.lab.demo import DEFAULT_TOPOLOGY
from raven.lab.iperf import iperf
from raven.lab.ping import format_matrix, ping_all
from raven.lab.plan import LabPlan, PodPlan
from raven.lab.status import format_status
from raven.lab.topology import find_topology, load_topology


def sample_pair(plan: LabPlan) -> tuple[PodPlan, PodPlan, str]:
    """Two pods in different pools, NAT'd pools preferred (the relayed path), and a label."""
    pools = sorted(plan.pools, key=lambda p: (p.nat == "none", p.index))
    with_pods = [p for p in pools if any(n.pods for n in p.nodes)]
    pairs = [(a, b) for a in with_pods for b in with_pods
             if a.name != b.name and cluster.pool_pair_expected(plan, a.name, b.name)]
    if not pairs:
        raise CommandError("the demo's iperf3 sample needs pods in two connected pools")
    a, b = pairs[0]
    src = next(pod for n in a.nodes for pod in n.pods)
    dst = next(pod for n in reversed(b.nodes) for pod in n.pods)
    return src, dst, f"{a.name} ({a.nat} NAT) -> {b.name} ({b.nat} NAT)"


def run_overlay_demo(topology_path: str | Path | None = None, keep: bool = False,
                     name: str | None = None, out: TextIO = sys.stdout) -> int:
    path = find_topology(topology_path or DEFAULT_TOPOLOGY)
    topology = load_topology(path)
    if topology.tunnel == "none":  # nothing of the overlay to show: the bare-lab demo
        from raven.lab.demo import run_demo

        return run_demo(path, keep=keep, name=name, out=out)
    lab = name or topology.name or "demo"
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"   [{time.monotonic() - started:5.1f}s] {message}", file=out, flush=True)

    print(f"== building lab {lab} from {path}", file=out, flush=True)
    plan = build.up(topology, lab, progress=say, source=str(path))
    try:
        print("\n== starting the overlay", file=out, flush=True)
        cluster.up(plan, progress=say, wait=False)
        print(f"\n== the lab\n{format_status(plan)}", file=out, flush=True)
        print("\n== waiting until every pod reaches every pod", file=out, flush=True)
        settings = cluster.load_settings(lab)
        try:
            cluster.wait_all_pairs(plan, settings.wait_timeout, say)
        except CommandError as exc:
            print(f"   {exc}", file=out)
        print("\n== elected gateways (Gateway status)", file=out)
        print(cluster.format_gateways(lab), file=out, flush=True)
        print("\n== ping: every pod to every other pod", file=out, flush=True)
        report = ping_all(plan, scope="all")
        print("answered/tried pod pairs (rows: from, columns: to)", file=out)
        print(format_matrix(report, [p.name for p in plan.pools]), file=out, flush=True)
        failed = [p for p in report.pairs if not p.ok
                  and cluster.pool_pair_expected(plan, p.src_pool, p.dst_pool)]
        failed_iperf = False
        if not failed and len(plan.pools) > 1:
            try:
                src, dst, label = sample_pair(plan)
                print(f"\n== iperf3, 3 s, {src.name} -> {dst.name}: {label}", file=out,
                      flush=True)
                result = iperf(dst.netns, dst.ip, src.netns, seconds=3)
                print(f"   {result.mbit:.0f} Mbit/s received, {result.retransmits} retransmits",
                      file=out)
            except CommandError as exc:
                print(f"   iperf3 failed: {exc}", file=out)
                failed_iperf = True
        if failed:
            print(f"\nFAILED: {len(failed)} of {len(report.pairs)} pairs did not answer: "
                  + ", ".join(f"{p.src}->{p.dst}" for p in failed[:10]), file=out)
            return 1
        answered = sum(p.ok for p in report.pairs)
        print(f"\nOK: all {answered} connectable pod pairs answered across "
              f"{len(plan.pools)} pools in {time.monotonic() - started:.1f}s", file=out)
        return 1 if failed_iperf else 0
    finally:
        if keep:
            print(f"\n== kept lab {lab}; kubeconfig {cluster.kubeconfig_path(lab)} "
                  f"(reach the API from `raven lab exec {lab} control-plane -- kubectl "
                  f"--kubeconfig ...`); remove it with `raven lab down {lab}`", file=out)
        else:
            try:  # a closed output pipe while saying so must not skip the teardown
                print(f"\n== tearing down lab {lab}", file=out, flush=True)
            finally:
                teardown.down(lab)
