"""Benchmark: no flapping. Random loss on the active gateway's uplink must not move it.

A lab (default test-topologies/failover.yaml) runs the overlay with the shipped defaults. The
node carrying the cone-NAT pool's traffic gets --percent random loss on its uplink (`raven lab
loss`, both directions) for --minutes. Twice a second, read from the kernel (never from the
agents): the gateway the pool's member routes through (`member_routes`: table 9027 or main,
next hop = a candidate's VTEP) and the candidate whose WireGuard peer on the public gateway
holds the pool's subnets (`wg show raven-wg0 allowed-ips`; WireGuard is read where the device is:
a gateway's tunnel namespace, the shipped default, docs/tunnel-namespace.md, else the node's).
Reported: how often each moved, and the longest time the two disagreed (two nodes carrying the
pool's traffic). `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/flap.py [--minutes 10] [--percent 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from raven.lab import build, cluster, faults, runtime, teardown
from raven.lab.gateway_load import member_routes
from raven.lab.topology import load_topology
from raven.topology import vtep_for

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 0.5


def _in_devices(lab: str, node: str, *argv: str) -> str:
    """Run where the node's raven0 and raven-wg0 are now (asked at each call: the gateway may
    move under the loss)."""
    return subprocess.run([*runtime.devices_exec_argv(lab, node), *argv], capture_output=True,
                          text=True, timeout=30).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "failover.yaml"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--percent", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    lab = f"rvb-fl-{secrets.token_hex(3)}"
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan)
        pool = next(p for p in plan.pools if sum(n.gateway_candidate for n in p.nodes) >= 2)
        public = next(p for p in plan.pools if p.public and p is not pool)
        member = next(n for n in pool.nodes if not n.gateway_candidate)
        public_gw = cluster.wait_active(lab, public.name)
        by_vtep = {vtep_for(n.underlay_ip)[0]: n.name for n in pool.nodes if n.gateway_candidate}
        keys = {_in_devices(lab, n, "wg", "show", "raven-wg0", "public-key").strip(): n
                for n in by_vtep.values()}
        subnet = member.pod_cidr
        active = cluster.wait_active(lab, pool.name)
        faults.loss(lab, active, args.percent)
        print(f"{args.percent:g}% loss on {active}'s uplink for {args.minutes:g} min; sampling "
              f"{member.name}'s routes and {public_gw}'s peers every {PERIOD}s", flush=True)
        samples, moves_member, moves_public = 0, 0, 0
        split_since: float | None = None
        longest_split = 0.0
        last: tuple[str | None, str | None] = (None, None)
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            routes = member_routes(lab, member.name)
            hop = by_vtep.get(next((r.get("gateway", "") for r in routes), ""))
            owner = None
            for line in _in_devices(lab, public_gw, "wg", "show", "raven-wg0",
                                    "allowed-ips").splitlines():
                key, *ips = line.split()
                if subnet in ips:
                    owner = keys.get(key)
            if samples and hop != last[0]:
                moves_member += 1
            if samples and owner != last[1]:
                moves_public += 1
            now = time.monotonic()
            if hop != owner:
                split_since = split_since if split_since is not None else now
                longest_split = max(longest_split, now - split_since)
            else:
                split_since = None
            last = (hop, owner)
            samples += 1
            time.sleep(PERIOD)
        faults.loss(lab, active, 0)
    finally:
        teardown.down(lab)
    print(f"{samples} samples: the member's gateway moved {moves_member} times, the public "
          f"gateway's peer {moves_public} times (target 0); longest disagreement "
          f"{longest_split:.1f}s; load {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps({"percent": args.percent, "minutes": args.minutes, "samples": samples,
                          "member_moves": moves_member, "public_moves": moves_public,
                          "longest_split_seconds": round(longest_split, 2),
                          "active": active}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
