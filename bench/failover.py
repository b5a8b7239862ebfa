"""Benchmark: gateway failure to the first good packet, with the shipped timing defaults.

A lab (default test-topologies/failover.yaml: a public pool, a cone-NAT pool with two gateway
candidates and a member that is not one, a symmetric-NAT pool that reaches the cone pool only
through the public relay) runs the whole overlay with the daemons' shipped defaults (the lab
never speeds them up). Pods ping, 100 times a second (`ping -D`), a pod on the member of the
failing pool: one from a member of the public pool, one from the NAT'd pool (through the relay).
Then the node that carries the pool's traffic (read from the member's agent) is broken:
  a  powered off (`raven.lab.faults.node_down`: processes killed, port down);
  b  blackholed: up and heartbeating, its VXLAN and WireGuard traffic dropped on its uplink;
  c  the pool is cut off from the control plane first, then the node is powered off;
  s  active-active (tunnelConfig.Replicas >= 2, e.g. --topology test-topologies/active-active.yaml):
     the SECOND active gateway is blackholed; the destination is a pod on a member of its share
     (read from the member's routes); the same sources. Also counted per round: the
     GatewayFailover events recorded for it (`kubectl get events`; one expected, "probe loss").
Measured per round and source: seconds from the fault to the first echo reply that ends the
outage. A round in which replies do not come back within --patience seconds is a FAILURE: it
is counted, and it enters the median and the maximum as infinity (never dropped). The fault is
repaired and the pool settled between rounds. Also printed: the node that carries the traffic
afterwards, the load average, and the kernel writes each node made from the fault to the end of
the round, counted by an independent oracle (the kernel's own notifications: `ip -o monitor
all-nsid link address route rule` and `nft monitor` inside every node but the broken one, and
the peers whose allowed IPs differ in `wg show raven-wg0 allowed-ips`, read where the device is,
before and after; WireGuard writes through wireguard-go's socket raise no netlink notification,
hence the diff). A gateway keeps raven0 and raven-wg0 in a tunnel namespace of its own (the
shipped default, docs/tunnel-namespace.md), made by the node that becomes the gateway during the
round: `all-nsid` in the node's namespace hears it from the moment the veth joins the two (its
first event, its end of the veth appearing, comes before and is not counted), and counts the
node's own namespace and its tunnel namespace, never the pods' or the underlay's (every
namespace the node had an id for when the round began, except its tunnel namespace). `--json`
prints a JSON summary as the last line.

    .venv/bin/python bench/failover.py [--rounds 5] [--cases a,b,c] [--json]
    .venv/bin/python bench/failover.py --topology test-topologies/active-active.yaml --cases s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from raven import constants
from raven.errors import CommandError
from raven.lab import build, cluster, faults, runtime, teardown
from raven.lab import gateway_load as gl
from raven.lab.plan import LabPlan, NodePlan, PodPlan, PoolPlan
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")
WARMUP = 2.0  # seconds of replies before the fault
CASES = {"a": "active gateway powered off", "b": "active gateway blackholed (heartbeats on)",
         "c": "pool cut off from the control plane, then its active gateway powered off",
         "s": "second active gateway of an active-active pool blackholed (heartbeats on)"}


def outage_end(lines: list[str], t0: float, gap: float = 0.1) -> float | None:
    """Seconds from t0 to the first reply after the outage that started at the fault; 0.0
    when replies never paused; None when none came after it."""
    stamps = [float(m.group(1)) for m in map(REPLY.match, lines) if m]
    before = [t for t in stamps if t <= t0]
    after = [t for t in stamps if t > t0]
    if not after:
        return None
    previous = before[-1] if before else t0
    for t in after:
        if t - previous > gap:
            return t - t0
        previous = t
    return 0.0


def _failing_pool(plan: LabPlan) -> PoolPlan:
    for pool in plan.pools:
        if sum(n.gateway_candidate for n in pool.nodes) >= 2:
            return pool
    sys.exit("the topology needs a pool with two gateway candidates")


def _sources(plan: LabPlan, failing: PoolPlan) -> dict[str, PodPlan]:
    """A pod on a member of a public pool, and one in another NAT'd pool (via the relay)."""
    out: dict[str, PodPlan] = {}
    for pool in plan.pools:
        if pool is failing or not any(n.gateway_candidate for n in pool.nodes):
            continue
        members = [n for n in pool.nodes if not n.gateway_candidate and n.pods] or \
            [n for n in pool.nodes if n.pods]
        if not members:
            continue
        kind = "public" if pool.public else "relayed"
        if kind == "relayed" and failing.public:
            kind = "nat"
        out.setdefault(kind, members[0].pods[0])
    return out


def _member(failing: PoolPlan) -> NodePlan:
    members = [n for n in failing.nodes if not n.gateway_candidate and n.pods]
    if not members:
        sys.exit(f"pool {failing.name} needs a member that is not a gateway candidate")
    return members[0]


def carrier(lab: str, member: str) -> str | None:
    """The node the member's agent sends cross-pool traffic to (its last applied plan)."""
    try:
        doc = json.loads((cluster.state_dir(lab, member) / cluster.AGENT_STATUS_FILE)
                         .read_text())
    except (OSError, ValueError):
        return None
    active = doc.get("activeGateways") or []
    return active[0] if active else None


def settle(lab: str, plan: LabPlan, failing: PoolPlan, member: str, timeout: float) -> str:
    """Wait until every pair answers and the member's gateway is the controller's choice."""
    cluster.wait_all_pairs(plan, timeout)
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.active_gateways(lab).get(failing.gateway, [])
        used = carrier(lab, member)
        if status and used == status[0]:
            return used
        if time.monotonic() > deadline:
            return used or (status[0] if status else "")
        time.sleep(0.5)


def settle_second(lab: str, plan: LabPlan, failing: PoolPlan, timeout: float
                  ) -> tuple[str, NodePlan]:
    """Case s: wait until every pair answers, the status names two active gateways or more and
    a member with a pod sends through the second; (that gateway, that member)."""
    cluster.wait_all_pairs(plan, timeout)
    deadline = time.monotonic() + timeout
    members = [n for n in failing.nodes if not n.gateway_candidate and n.pods]
    while True:
        status = cluster.active_gateways(lab).get(failing.gateway, [])
        carriers = gl.gateway_of_nodes(plan, failing.name) if len(status) >= 2 else {}
        share = [n for n in members if len(status) >= 2 and carriers.get(n.name) == status[1]]
        if share:
            return status[1], share[0]
        if time.monotonic() > deadline:
            sys.exit(f"case s: pool {failing.name} has no member sent through a second active "
                     f"gateway after {timeout:.0f}s (status {status}, routes {carriers}); "
                     "use a topology with tunnelReplicas >= 2, e.g. "
                     "test-topologies/active-active.yaml")
        time.sleep(0.5)


def events_after(lab: str, seen: dict[str, str], node: str, timeout: float) -> list[str]:
    """The GatewayFailover events for `node` recorded since `seen` (waits up to `timeout` for
    the first: its cause settles once the node renewed its heartbeat after the move)."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = [m for n, m in failover_events(lab).items()
                 if n not in seen and f"active gateway {node} -> " in m]
        if fresh or time.monotonic() > deadline:
            return fresh
        time.sleep(1.0)


def failover_events(lab: str) -> dict[str, str]:
    """name -> message of every GatewayFailover Event (kubectl)."""
    data = cluster.kubectl_json(lab, "get", "events", "-A")
    return {e["metadata"]["name"]: e.get("message", "") for e in data.get("items", [])
            if e.get("reason") == "GatewayFailover"}


NSID = re.compile(r"^\[nsid (\w+)\]")


def _json_out(argv: list[str]) -> list[dict]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []


def foreign_nsids(lab: str, node: str) -> set[str]:
    """The ids the node's namespace has for other namespaces (its pods', the underlay's), but
    that of its tunnel namespace (the far end of raven-tun0): their events are not the node's."""
    prefix = runtime.node_exec_argv(lab, node)
    links = _json_out([*prefix, "ip", "-j", "link", "show"])  # first: a dump names every peer
    peers = {str(e["link_netnsid"]) for e in links if "link_netnsid" in e}
    tunnel = {str(e["link_netnsid"]) for e in links
              if "link_netnsid" in e and e.get("ifname") == constants.TUNNEL_VETH}
    known = {str(e["nsid"]) for e in _json_out([*prefix, "ip", "-j", "netns", "list-id"])
             if "nsid" in e}
    return (known | peers) - tunnel


class WriteWatch:
    """Kernel changes per node while it runs, seen by the kernel's notifications (not by the
    agents' own counters), in the node's namespace and in its tunnel namespace (module doc)."""

    def __init__(self, lab: str, nodes: list[str]) -> None:
        self.lab = lab
        self.nodes = nodes
        self.wg_before = {n: self._wg(n) for n in nodes}
        self.foreign = {n: foreign_nsids(lab, n) for n in nodes}
        self.procs: dict[tuple[str, str], subprocess.Popen[str]] = {}
        for n in nodes:
            prefix = runtime.node_exec_argv(lab, n)
            self.procs[(n, "netlink")] = subprocess.Popen(
                [*prefix, "ip", "-o", "monitor", "all-nsid", "link", "address", "route", "rule"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.procs[(n, "nft")] = subprocess.Popen(
                [*prefix, "nft", "monitor"], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.3)  # both monitors subscribe before the fault

    def _wg(self, node: str) -> dict[str, str]:
        # Asked at each read: the node may become (or stop being) the gateway in the round.
        proc = subprocess.run([*runtime.devices_exec_argv(self.lab, node), "wg", "show",
                               "raven-wg0", "allowed-ips"], capture_output=True, text=True)
        out = {}
        for line in proc.stdout.splitlines():
            key, _, ips = line.partition("\t")
            out[key] = " ".join(sorted(ips.split()))
        return out

    def _counts(self, node: str, line: str) -> bool:
        """A line is one change of the node's: not blank, not an nft comment, and not from a
        namespace of another's (all-nsid's `[nsid N]`; `[nsid current]` is the node's)."""
        if not line.strip() or line.startswith("#"):
            return False
        m = NSID.match(line)
        return m is None or m.group(1) not in self.foreign[node]

    def stop(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {n: {} for n in self.nodes}
        for (node, kind), proc in self.procs.items():
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            counts[node][kind] = len([line for line in out.splitlines()
                                      if self._counts(node, line)])
        for n in self.nodes:
            after = self._wg(n)
            before = self.wg_before[n]
            counts[n]["wg_peers"] = len([k for k in set(before) | set(after)
                                         if before.get(k) != after.get(k)])
        return {n: c for n, c in counts.items() if any(c.values())}


def one_round(lab: str, case: str, active: str, failing: PoolPlan, dst: PodPlan,
              sources: dict[str, PodPlan], patience: float,
              watched: list[str]) -> dict[str, object]:
    pings = {name: subprocess.Popen(
        ["ip", "netns", "exec", pod.netns, "ping", "-n", "-D", "-i", "0.01", "-W", "1",
         "-w", f"{WARMUP + patience:.0f}", dst.ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, pod in sources.items()}
    time.sleep(WARMUP)
    if case == "c":
        faults.disconnect(lab, failing.name)
        time.sleep(1.0)  # agents' API calls from the pool now fail
    watch = WriteWatch(lab, [n for n in watched if n != active])
    t0 = time.time()
    if case in ("b", "s"):
        faults.blackhole(lab, active)
    else:
        faults.node_down(lab, active)
    seconds: dict[str, float | None] = {}
    for name, proc in pings.items():
        out, _ = proc.communicate(timeout=WARMUP + patience + 30)
        end = outage_end(out.splitlines(), t0)
        seconds[name] = None if end is None else round(end, 3)
    return {"case": case, "failed": active, "seconds": seconds, "writes": watch.stop()}


def repair(lab: str, case: str, node: str, pool: PoolPlan) -> None:
    if case == "c":  # first, so the controller adopts the pool's choice before the node returns
        faults.reconnect(lab, pool.name)
        with contextlib.suppress(CommandError):  # settle() reports where the pool ends up
            cluster.wait_active(lab, pool.name, timeout=30, exclude=(node,))
    if case in ("b", "s"):
        faults.unblackhole(lab, node)
    else:
        faults.node_up(lab, node)


def summary(values: list[float | None]) -> dict[str, object]:
    numbers = [math.inf if v is None else v for v in values]
    med = statistics.median(numbers) if numbers else math.inf
    top = max(numbers) if numbers else math.inf
    return {"median": None if math.isinf(med) else round(med, 3),
            "max": None if math.isinf(top) else round(top, 3),
            "rounds": len(values), "failures": sum(v is None for v in values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "failover.yaml"))
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case (default 5)")
    parser.add_argument("--cases", default="a,b,c", help="comma-separated: a, b, c, s")
    parser.add_argument("--patience", type=float, default=8.0,
                        help="seconds after the fault before a round counts as failed")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        sys.exit(f"--cases: use a comma-separated subset of {', '.join(CASES)}")
    lab = f"rvb-fo-{secrets.token_hex(3)}"
    rounds: list[dict[str, object]] = []
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan)
        settings = cluster.load_settings(lab)
        failing = _failing_pool(plan)
        member = _member(failing)
        sources = _sources(plan, failing)
        print(f"heartbeat every {settings.heartbeat_period:g}s, timeout "
              f"{settings.heartbeat_timeout:g}s, controller resync {settings.controller_resync:g}s "
              f"(shipped defaults); pool {failing.name}, destination pod on {member.name} "
              "(case s: on a member of the second active gateway's share), "
              f"sources {', '.join(f'{k} ({p.netns})' for k, p in sources.items())}", flush=True)
        for case in cases:
            for i in range(args.rounds):
                dst = member
                if case == "s":
                    active, dst = settle_second(lab, plan, failing, 90)
                    seen = failover_events(lab)
                else:
                    active = settle(lab, plan, failing, member.name, 90)
                r = one_round(lab, case, active, failing, dst.pods[0], sources, args.patience,
                              [n.name for _, n in plan.nodes()])
                time.sleep(0.5)
                r["carrier"] = carrier(lab, dst.name)
                if case == "s":
                    r["carrier"] = gl.gateway_of_nodes(plan, failing.name).get(dst.name)
                    r["destination"] = dst.name
                    r["events"] = events_after(lab, seen, active, args.patience + 30)
                r["load"] = round(os.getloadavg()[0], 2)
                rounds.append(r)
                shown = ", ".join(f"{k} {'FAILED' if v is None else f'{v:.2f}s'}"
                                  for k, v in r["seconds"].items())  # type: ignore[union-attr]
                writes = "; ".join(f"{n} " + ", ".join(f"{k} {v}" for k, v in c.items())
                                   for n, c in r["writes"].items())  # type: ignore[union-attr]
                told = f"; events {r['events']}" if case == "s" else ""
                print(f"case {case} round {i + 1}: {active} broken -> traffic via "
                      f"{r['carrier']}{told}; first reply after {shown} (load {r['load']}); kernel "
                      f"changes per node (netlink notifications, nft monitor lines, WireGuard "
                      f"peers changed): {writes or 'none'}", flush=True)
                repair(lab, case, active, failing)
    finally:
        teardown.down(lab)
    result: dict[str, object] = {"cases": {}, "rounds": rounds,
                                 "heartbeat_period": settings.heartbeat_period,
                                 "heartbeat_timeout": settings.heartbeat_timeout,
                                 "controller_resync": settings.controller_resync}
    for case in cases:
        values = [v for r in rounds if r["case"] == case
                  for v in r["seconds"].values()]  # type: ignore[union-attr]
        s = summary(values)
        result["cases"][case] = s  # type: ignore[index]
        print(f"case {case} ({CASES[case]}): median {s['median']}s, max {s['max']}s over "
              f"{s['rounds']} measurements, {s['failures']} failed (target: median <= 1 s, "
              "max <= 2 s)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
