"""Benchmark: packets lost while the agent of an active gateway restarts.

A three-pools lab runs the whole overlay. A member pod of the cloud pool pings, 100 times a
second, a member pod of the cone-NAT pool: the path crosses both pools' active gateways. The
agents of both active gateways are restarted (`raven.lab.faults.agent_restart`: SIGTERM, the
data plane stays, a new agent adopts it) --restarts times each, alternating. Reported: packets
sent, received, lost, the seconds each agent was away, and whether a gateway moved.
Adoption is proved by oracles independent of the agent (never its own counters): during each
restart and for SETTLE seconds after the new agent is ready, `ip monitor` (links, addresses,
routes, rules, neighbours), `bridge monitor fdb` and `nft monitor` run in the node's namespace,
where every event on our objects (raven0, raven-wg0, the veth raven-tun0, tables 9027/9028 and
metric 9027 in main, our nft table) counts as a kernel write, and, while the gateway keeps its
devices in a tunnel namespace (the shipped default, docs/tunnel-namespace.md), in that
namespace too, where every event counts (it holds only ours). Neighbour events count on raven0
(the agent writes neighbours there only; those on the veth and raven-wg0 are the kernel's own
resolution). The devices' namespace must be the same one before and after (a
namespace made again counts as a write); `wg show raven-wg0 dump`, read where the device is,
before and after must list the same configuration (listen port, peers, allowed IPs,
keepalive).
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

from raven.lab import build, cluster, faults, runtime, teardown
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
RATE = 100
SETTLE = 2.0  # seconds after the new agent is ready during which writes are still counted
# In the node's namespace: events naming these are ours (a gateway's routes via the veth sit in
# main with metric 9027); in the tunnel namespace every event is.
OURS = ("raven0", "raven-wg0", "raven-tun0", "9027", "9028", " raven ")
# -o: one line per event; label: "[NEIGH]" tells neighbour events apart.
MONITORS = (["ip", "-o", "monitor", "label", "link", "address", "route", "rule", "neigh"],
            ["bridge", "monitor", "fdb"], ["nft", "monitor"])


def written(line: str, tunnel: bool) -> bool:
    """A monitor's line is a kernel write on our objects: in the tunnel namespace (`tunnel`) any
    event, in the node's one naming ours; a neighbour event only on raven0 (an entry the agent
    deletes shows as FAILED, like one the kernel gave up resolving, so the state cannot tell)."""
    if not line.strip() or line.startswith("#"):  # nft monitor's generation comments
        return False
    if line.startswith("[NEIGH]"):
        return " dev raven0 " in f"{line} "
    return tunnel or any(o in f" {line} " for o in OURS)


def devices_namespace(lab: str, node: str) -> str:
    """The identity (`net:[inode]`) of the namespace that holds the node's devices now."""
    return subprocess.run([*runtime.devices_exec_argv(lab, node), "readlink",
                           "/proc/self/ns/net"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def wg_config(lab: str, node: str) -> list[tuple[str, ...]]:
    """The configuration part of `wg show raven-wg0 dump` (no counters, handshakes or roamed
    endpoints), read where the device is."""
    proc = subprocess.run([*runtime.devices_exec_argv(lab, node), "wg", "show", "raven-wg0",
                           "dump"], capture_output=True, text=True, timeout=30)
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    if not rows:
        return []
    device = ("device", rows[0][2])  # listen port
    peers = [(r[0], r[3], r[7]) for r in rows[1:] if len(r) >= 8]  # key, allowed IPs, keepalive
    return [device, *sorted(peers)]


def restart_counting_writes(lab: str, node: str) -> tuple[float, int, list[str], bool]:
    """(seconds away, kernel writes seen by the monitors, the events, wg config unchanged)."""
    before = wg_config(lab, node)
    where = devices_namespace(lab, node)
    tunnel = runtime.device_netns(lab, node)  # asked now: where the devices are at this restart
    prefixes = [(runtime.node_exec_argv(lab, node), False)]
    if tunnel is not None:
        prefixes.append((runtime.devices_exec_argv(lab, node), True))
    monitors = [(subprocess.Popen([*prefix, *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True), inside, tag)
                for prefix, inside in prefixes
                for argv, tag in zip(MONITORS, ("ip", "bridge", "nft"), strict=True)]
    time.sleep(0.3)  # the monitors are subscribed before anything happens
    away = faults.agent_restart(lab, node)
    time.sleep(SETTLE)
    events: list[str] = []
    for proc, inside, tag in monitors:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        label = f"{tunnel} {tag}" if inside else f"node {tag}"
        events += [f"[{label}] {line}" for line in out.splitlines() if written(line, inside)]
    after = devices_namespace(lab, node)
    if after != where:
        events.append(f"devices' namespace changed: {where or 'none'} -> {after or 'none'}")
    return away, len(events), events, wg_config(lab, node) == before


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
    writes: list[int] = []
    wg_same: list[bool] = []
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan)
        cloud, edge = plan.pools[0], plan.pools[1]
        gateways = [cluster.wait_active(lab, cloud.name), cluster.wait_active(lab, edge.name)]
        src = cloud.nodes[-1].pods[0]
        dst = edge.nodes[-1].pods[0]
        seconds = 4 + 7 * args.restarts * len(gateways)
        ping = subprocess.Popen(
            ["ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-i", f"{1 / RATE}", "-c",
             str(seconds * RATE), "-W", "2", dst.ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        for _ in range(args.restarts):
            for node in gateways:
                seconds, count, events, same = restart_counting_writes(lab, node)
                away.append(seconds)
                writes.append(count)
                wg_same.append(same)
                for event in events[:5]:
                    print(f"  {node}: kernel event during restart: {event}", flush=True)
                time.sleep(1)
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
          f"{statistics.median(away):.2f}s; gateway moved: {moved}; kernel writes seen by "
          f"ip/bridge/nft monitor per restart: {writes} (target 0); wg config unchanged: "
          f"{all(wg_same)}")
    if args.json:
        print(json.dumps({"lost": lost, "sent": sent, "received": received,
                          "restarts": len(away), "rate_pps": RATE,
                          "agent_away_seconds": [round(a, 2) for a in away],
                          "gateway_moved": moved, "kernel_writes_per_restart": writes,
                          "wireguard_config_unchanged": all(wg_same)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
