"""Benchmark: the byte split of active-active gateways, and the split after one fails.

A lab (default test-topologies/active-active.yaml: pool `site` (cone NAT) with two active gateways,
tunnelConfig.Replicas 2, and three members; pool `hq` public) runs the whole overlay
with the shipped defaults. Every site pod sends an iperf3 stream (--seconds each, one pair at a
time) to every hq pod. Per gateway: the bytes its WireGuard device moved (`wg show raven-wg0
transfer`, read from the kernel around each pair where the device is: the gateway's tunnel
namespace, the shipped default, docs/tunnel-namespace.md; probes included), the iperf3 payload
of the pairs whose source it carries, and its share of nodes (read from the nodes' routes). Then the
pool's first active gateway is powered off (`raven.lab.faults.gateway_fail`), and once every
pair answers again the same load runs on the survivor: the nodes that moved are printed (only
the failed gateway's share should). `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/active_active.py [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

from raven.lab import build, cluster, faults, teardown
from raven.lab import gateway_load as gl
from raven.lab.netns import icmp_probe_many
from raven.lab.plan import LabPlan
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]


def wait_carriers(plan: LabPlan, pool: str, alive: list[str], timeout: float) -> dict[str, str]:
    """node -> gateway, once every live node sends through a live gateway."""
    deadline = time.monotonic() + timeout
    while True:
        carrier = {n: g for n, g in gl.gateway_of_nodes(plan, pool).items()
                   if n in alive or n not in gateways_of(plan, pool)}
        if carrier and all(g in alive for g in carrier.values()):
            return carrier
        if time.monotonic() > deadline:
            raise SystemExit(f"pool {pool}: nodes send via {carrier} after {timeout:.0f}s")
        time.sleep(0.5)


def gateways_of(plan: LabPlan, pool: str) -> list[str]:
    return [n.name for p in plan.pools if p.name == pool for n in p.nodes if n.gateway_candidate]


def wait_answers(plan: LabPlan, pool: str, remote: str, skip: str, timeout: float) -> float:
    """Seconds until every pod of `pool` (but on `skip`) and of `remote` answer each other."""
    src = [p for q in plan.pools if q.name == pool for n in q.nodes if n.name != skip
           for p in n.pods]
    dst = [p for q in plan.pools if q.name == remote for n in q.nodes for p in n.pods]
    probes = {**{p.netns: [d.ip for d in dst] for p in src},
              **{d.netns: [p.ip for p in src] for d in dst}}
    start = time.monotonic()
    while True:
        results = icmp_probe_many(probes, tries=1, timeout_s=0.5)
        if all(rtt is not None for a in results.values() for rtt in a.values()):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise SystemExit(f"pairs still failing after {timeout:.0f}s")


def measure(plan: LabPlan, pool: str, remote: str, gateways: list[str], carrier: dict[str, str],
            seconds: float, skip: tuple[str, ...] = ()) -> dict[str, object]:
    loads = gl.all_pairs_load(plan, pool, remote, gateways, seconds, skip)
    payload = gl.split(loads, carrier)
    wg = {g: sum(load.moved.get(g, 0) for load in loads) for g in gateways if g not in skip}
    total = sum(wg.values()) or 1
    shares = {g: sorted(n for n, c in carrier.items() if c == g) for g in wg}
    for g in wg:
        print(f"  {g}: {wg[g] / 1e6:9.1f} MB on raven-wg0 ({100 * wg[g] / total:5.1f} %), "
              f"iperf3 payload {payload.get(g, 0) / 1e6:9.1f} MB, carries {', '.join(shares[g])}",
              flush=True)
    return {"wg_bytes": wg, "payload_bytes": {g: payload.get(g, 0) for g in wg},
            "wg_fraction": {g: round(wg[g] / total, 3) for g in wg}, "shares": shares,
            "pairs": len(loads),
            "mbit_per_pair": round(8 * sum(x.bytes for x in loads) / len(loads) / seconds / 1e6, 1)
            if loads else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "active-active.yaml"))
    parser.add_argument("--pool", default="site", help="the active-active pool (default site)")
    parser.add_argument("--remote", default="hq", help="the pool its pods send to (default hq)")
    parser.add_argument("--seconds", type=float, default=2.0, help="iperf3 seconds per pair")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    lab = f"rvb-aa-{secrets.token_hex(3)}"
    result: dict[str, object] = {}
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan)
        gws = gateways_of(plan, args.pool)
        carrier = wait_carriers(plan, args.pool, gws, 90)
        wait_answers(plan, args.pool, args.remote, "", 60)
        print(f"pool {args.pool}: active {cluster.active_gateways(lab)}; all-pairs iperf3 to "
              f"{args.remote}, {args.seconds:g}s per pair", flush=True)
        result["both"] = measure(plan, args.pool, args.remote, gws, carrier, args.seconds)
        failed = faults.gateway_fail(lab, args.pool)
        t0 = time.monotonic()
        survivors = [g for g in gws if g != failed]
        answered = wait_answers(plan, args.pool, args.remote, failed, 60)
        after = wait_carriers(plan, args.pool, survivors, 60)
        moved = sorted(n for n in after if carrier.get(n) != after[n])
        expected = sorted(n for n, g in carrier.items() if g == failed and n != failed)
        print(f"{failed} powered off: every pair answers after {answered:.2f}s (from "
              f"{time.monotonic() - t0:.2f}s of checks); moved {', '.join(moved) or 'nothing'} "
              f"(its share: {', '.join(expected) or 'none'})", flush=True)
        result["failed"] = failed
        result["answers_after_s"] = round(answered, 2)
        result["moved"] = moved
        result["failed_share"] = expected
        result["after"] = measure(plan, args.pool, args.remote, gws, after, args.seconds,
                                  skip=(failed,))
    finally:
        teardown.down(lab)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
