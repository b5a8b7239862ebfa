"""Benchmark: cross-pool pod-to-pod TCP throughput of the overlay against a clean hand-built twin.

Two labs from the same topology (default two-pools: cloud, edge behind cone NAT), up at once:
  overlay  `build.up` + `cluster.up`: API server, controller, agents; the agents program
           raven0, raven-wg0, the `inet raven` nftables table (no mark chains; the identity
           SNAT only where another table has a nat chain, which lab nodes do not), the rules
           (no selector; on active gateways also `iif raven-wg0 lookup 9027`, which delivers
           traffic from the tunnel to the members over VXLAN), tables 9027/9028 and sysctls,
           all with the shipped default settings;
  hand     a twin built `--network-only` (no overlay state at all) where bench/twin.py builds
           the same devices by hand with `ip` and `wg`: the VXLAN devices (same VNI, port, MAC,
           MTU, VTEP addresses, neighbours, FDB), a wireguard-go per active gateway started as
           a lab process in a session of its own (as the agent starts its own), same port,
           peers, allowed IPs and keepalive, and the overlay's routes (same `mtu lock`) in the
           main table (a gateway's routes to its members over VXLAN replacing the lab's own).
           No nftables, no marks, no rules, no conntrack, default sysctls.
Before measuring, the devices of both labs are compared (`ip -d -j link`, `wg show dump`) and
every difference is printed; the sysctls, nftables tables and rules only one side has are
printed too (that is the overlay's policy state, the thing being measured).
Paths (iperf3 client in the cloud pod, server in the edge pod, data cloud -> edge):
  gw      pod on the cloud gateway -> WireGuard -> NAT -> edge gateway -> pod
  member  pod on a cloud member -> VXLAN -> cloud gateway -> WireGuard -> NAT -> edge gateway
          -> VXLAN -> edge member -> pod (the overlay's member path; returns alike)
Rounds are interleaved ABBA (overlay, hand | hand, overlay | ...), so load drift from other
work on the machine falls on both alike. A failed sample is printed as FAILED, counted in
`failures`, and enters its path's median as 0 Mbit/s: it never disappears from a median.
`ratio` = median over rounds of overlay/hand of the same round; the range is printed too.
Prints figures, never pass/fail; `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/throughput.py [--rounds 6] [--seconds 4] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import twin

from raven.errors import CommandError
from raven.lab import build, cluster, teardown
from raven.lab.iperf import iperf
from raven.lab.plan import LabPlan
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
LABS = ("overlay", "hand")


def load() -> list[float]:
    """1, 5 and 15 minute load averages: the figures are only comparable at similar load."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_ping(netns: str, ip: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip],
                          capture_output=True).returncode == 0:
            return True
        time.sleep(0.3)
    return False


def wireguard_pids(lab: str, plan: LabPlan) -> list[int]:
    """wireguard-go processes inside the lab's node namespaces (found by netns inode)."""
    inodes = set()
    for pool in plan.pools:
        for node in pool.nodes:
            with contextlib.suppress(OSError):
                inodes.add(os.stat(f"/run/netns/{lab}.{node.name}").st_ino)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "wireguard-go" and \
                    os.stat(entry / "ns" / "net").st_ino in inodes:
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all threads); kernel work done in their syscalls, such
    as netfilter on the UDP they send, is charged here too."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def pick_pairs(plan: LabPlan, gateways: dict) -> dict[str, tuple]:
    """path name -> (client pod, server pod) of the first two pools."""
    a, b = plan.pools[0], plan.pools[1]
    gw_a, gw_b = gateways[a.name], gateways[b.name]
    pairs = {"gw": (gw_a.pods[0], gw_b.pods[0])}
    members_a = [n for n in a.nodes if n.name != gw_a.name and n.pods]
    members_b = [n for n in b.nodes if n.name != gw_b.name and n.pods]
    if members_a and members_b:
        pairs["member"] = (members_a[0].pods[0], members_b[0].pods[0])
    return pairs


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f} range {min(values):.1f}-{max(values):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "two-pools.yaml"))
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds (one sample of "
                        "each lab per path per round); default 6")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--keep", action="store_true", help="leave both labs up (for "
                        "experiments; remove them with `raven lab down NAME`)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")

    tag = secrets.token_hex(3)
    names = {"overlay": f"rvb-tp-{tag}-o", "hand": f"rvb-tp-{tag}-h"}
    result: dict[str, object] = {"rounds": args.rounds, "seconds": args.seconds,
                                 "labs": names, "topology": args.topology,
                                 "settings": "shipped defaults", "load_before": load()}
    print(f"labs: overlay {names['overlay']}, hand-built twin {names['hand']}; shipped "
          f"default settings", flush=True)
    try:
        topology = load_topology(args.topology)
        plan = build.up(topology, names["overlay"], source=args.topology)
        cluster.up(plan)
        build.up(topology, names["hand"], source=args.topology)
        gateways = twin.mirror(names["overlay"], names["hand"], plan)
        cmp = twin.compare(names["overlay"], names["hand"], plan)
        print("device differences (ip -d -j link, wg show): "
              + ("none" if not cmp.devices else f"{len(cmp.devices)}"), flush=True)
        for line in cmp.devices:
            print(f"  DIFFERS {line}")
        print("overlay policy state the twin does not have (what is measured):")
        for line in cmp.sysctls + cmp.firewall:
            print(f"  {line}")
        result["device_differences"] = cmp.devices
        result["policy_state"] = cmp.sysctls + cmp.firewall
        pairs = pick_pairs(plan, gateways)
        for lab in names.values():
            for client, server in pairs.values():
                if not wait_ping(f"{lab}.{client.name}", server.ip):
                    print(f"  {lab}: {client.name} cannot reach {server.ip} yet")
        pids = {kind: wireguard_pids(names[kind], plan) for kind in LABS}

        samples: dict[str, dict[str, list[float]]] = {p: {k: [] for k in LABS} for p in pairs}
        cpu: dict[str, dict[str, list[float]]] = {p: {k: [] for k in LABS} for p in pairs}
        failures: list[str] = []
        loads: list[float] = []
        for i in range(args.rounds):
            order = LABS if i % 2 == 0 else LABS[::-1]
            loads.append(load()[0])
            for path, (client, server) in pairs.items():
                for kind in order:
                    lab = names[kind]
                    before = cpu_seconds(pids[kind])
                    try:
                        mbit = iperf(f"{lab}.{server.name}", server.ip, f"{lab}.{client.name}",
                                     args.seconds).mbit
                    except (CommandError, KeyError, subprocess.TimeoutExpired) as exc:
                        failures.append(f"round {i + 1} {path} {kind}: {exc}")
                        print(f"round {i + 1} {path:<6} {kind:<7} FAILED: {exc}", flush=True)
                        samples[path][kind].append(0.0)
                        continue
                    used = cpu_seconds(pids[kind]) - before
                    samples[path][kind].append(round(mbit, 1))
                    gbit = mbit * args.seconds / 1000
                    cpu[path][kind].append(round(used / gbit, 3) if gbit else 0.0)
                    print(f"round {i + 1} {path:<6} {kind:<7} {mbit:7.1f} Mbit/s  wireguard-go "
                          f"{used / gbit if gbit else 0:.3f} CPU-s/Gbit  load {load()[0]}",
                          flush=True)
    finally:
        if args.keep:
            print(f"kept: raven lab down {names['overlay']}; raven lab down {names['hand']}")
        else:
            for lab in names.values():
                teardown.down(lab)
    result["load_after"] = load()
    result["load_during"] = loads
    result["failures"] = failures
    print()
    for path in pairs:
        o, h = samples[path]["overlay"], samples[path]["hand"]
        ratios = [round(a / b, 3) if b else 0.0 for a, b in zip(o, h, strict=True)]
        ratio = statistics.median(ratios)
        print(f"{path:<6} overlay {spread(o)} Mbit/s   hand {spread(h)} Mbit/s")
        print(f"{path:<6} ratio overlay/hand (per round) median {ratio:.3f} range "
              f"{min(ratios):.3f}-{max(ratios):.3f}; of medians "
              f"{statistics.median(o) / statistics.median(h) if statistics.median(h) else 0:.3f}"
              f"   wireguard-go CPU-s/Gbit overlay "
              f"{statistics.median(cpu[path]['overlay'] or [0]):.3f} hand "
              f"{statistics.median(cpu[path]['hand'] or [0]):.3f}")
        result[path] = {"ratio": ratio, "ratios": ratios, "overlay_mbit": statistics.median(o),
                        "hand_mbit": statistics.median(h), "overlay_runs": o, "hand_runs": h,
                        "wg_cpu_s_per_gbit": cpu[path]}
    print(f"{args.rounds} ABBA rounds of {args.seconds:g} s; failures {len(failures)}; load "
          f"average before {result['load_before']} during {loads} after {result['load_after']}")
    if args.json:
        print(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
