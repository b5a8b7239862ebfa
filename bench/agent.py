"""Benchmark: the agent's reconcile latency after a Gateway write, and its steady footprint.

On a two-pools lab with the whole system running (`raven.lab.cluster.up`):
- latency: the controller is stopped (so nothing rewrites the status), then --rounds times a new
  pod subnet is added to the edge Gateway's status.nodes with `kubectl patch --subresource
  status`; we time, from the start of that kubectl, (a) a bare watcher (`kubectl get -w` in the
  control plane, the reference: what the API alone costs) seeing the write, and (b) the route for
  the subnet in the kernel of the cloud pool's active gateway, seen by `ip monitor route` (the
  oracle: the kernel): in table 9028 or main of the node's namespace, and, while the gateway
  keeps raven-wg0 in a tunnel namespace (the shipped default, docs/tunnel-namespace.md), into
  raven-wg0 there too; the later of the two (the path is whole only then). ours - reference =
  the agent's share (watch delivery to the agent, 50 ms coalescing, plan, diff, netlink writes);
- footprint: RSS of every agent and their CPU use over an idle window (--idle seconds).
Prints figures only; `--json` prints a JSON summary as the last line. Needs root.

    .venv/bin/python bench/agent.py [--rounds 10] [--idle 10] [--json]
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
import threading
import time
from pathlib import Path

from raven import constants
from raven.lab import build, cluster, runtime, teardown
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


class LineWaiter:
    """Runs a command, records the monotonic time at which a line matching a pattern appears."""

    def __init__(self, argv: list[str], pattern: str) -> None:
        self.pattern = re.compile(pattern)
        self.seen: float | None = None
        self.ready = threading.Event()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.ready.set()
            if self.seen is None and self.pattern.search(line):
                self.seen = time.monotonic()
        self.ready.set()

    def wait(self, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while self.seen is None and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.seen

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def agent_pid(lab: str, node: str) -> int:
    top = runtime.process_pid(lab, node, cluster.AGENT)
    if top is None:
        raise SystemExit(f"no agent running on {node}")
    todo, seen = [top], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        todo += [int(k) for k in kids.split()]
    for pid in seen:
        if b"raven.cli agent" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
            return pid
    raise SystemExit(f"no agent python process under pid {top}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


def measure(lab: str, rounds: int, idle: float) -> dict[str, object]:
    active = cluster.active_gateways(lab)
    cloud_gw = active["gw-cloud"][0]
    kube = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path(lab))]
    cp = runtime.exec_argv(lab, "control-plane")
    runtime.stop_process(lab, "control-plane", cluster.CONTROLLER)
    ours, reference = [], []
    try:
        for i in range(rounds):
            cidr = f"10.250.{i}.0/24"
            gw = cluster.kubectl_json(lab, "get", "gateways.raven.openyurt.io", "gw-edge")
            nodes = gw["status"]["nodes"] + [
                {"nodeName": f"bench-{i}", "privateIP": f"198.18.2.{200 + i}",
                 "subnets": [cidr]}]
            # the node's namespace: via the veth into the tunnel namespace, or into raven-wg0
            # where the gateway keeps it; asked each round where the devices are
            routes = [LineWaiter([*runtime.node_exec_argv(lab, cloud_gw), "ip", "monitor",
                                  "route"],
                                 rf"^{re.escape(cidr)} .*(table {constants.WIREGUARD_TABLE}"
                                 rf"|dev ({constants.WIREGUARD_DEVICE}|{constants.TUNNEL_VETH})"
                                 rf" proto {constants.ROUTE_PROTOCOL})")]
            if runtime.device_netns(lab, cloud_gw) is not None:
                routes.append(LineWaiter([*runtime.devices_exec_argv(lab, cloud_gw), "ip",
                                          "monitor", "route"],
                                         rf"^{re.escape(cidr)} .*dev "
                                         rf"{constants.WIREGUARD_DEVICE}( |$)"))
            watch = LineWaiter([*cp, *kube, "get", "gateways.raven.openyurt.io", "gw-edge", "-w",
                                "--output-watch-events", "-o",
                                "jsonpath={.type} {.object.status.nodes[*].subnets}{\"\\n\"}"],
                               rf"MODIFIED .*{re.escape(cidr)}")
            watch.ready.wait(10)  # the initial ADDED line: the watch is open
            time.sleep(0.2)
            start = time.monotonic()
            subprocess.run([*cp, *kube, "patch", "gateways.raven.openyurt.io", "gw-edge",
                            "--subresource", "status", "--type", "merge", "-p",
                            json.dumps({"status": {"nodes": nodes}})],
                           check=True, capture_output=True)
            seen_routes = [route.wait(15) for route in routes]
            seen_watch = watch.wait(15)
            for route in routes:
                route.stop()
            watch.stop()
            if None in seen_routes or seen_watch is None:
                print(f"  round {i}: no route/watch event within 15 s (route seen: "
                      f"{[s is not None for s in seen_routes]})", flush=True)
                continue
            ours.append(max(seen_routes) - start)  # type: ignore[type-var]
            reference.append(seen_watch - start)
            where = "" if len(routes) == 1 else (
                " (node's namespace " + ", tunnel namespace ".join(
                    f"{(t - start) * 1000:.1f} ms" for t in seen_routes) + ")")  # type: ignore
            print(f"  round {i}: route in kernel {ours[-1] * 1000:6.1f} ms{where}, bare watcher "
                  f"{reference[-1] * 1000:6.1f} ms", flush=True)
    finally:
        cluster.start_controller(lab)
    time.sleep(3)  # the controller restores the real status; let the agents settle
    pids = {node.name: agent_pid(lab, node.name) for _, node in
            runtime.load_plan(lab).nodes()}
    before = {n: cpu_ticks(p) for n, p in pids.items()}
    time.sleep(idle)
    cpu = {n: (cpu_ticks(p) - before[n]) / TICK / idle * 100 for n, p in pids.items()}
    rss = {n: rss_kib(p) / 1024 for n, p in pids.items()}
    return {"ours_ms": [round(x * 1000, 1) for x in ours],
            "reference_ms": [round(x * 1000, 1) for x in reference],
            "rss_mib": {n: round(v, 1) for n, v in rss.items()},
            "idle_cpu_percent": {n: round(v, 2) for n, v in cpu.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "two-pools.yaml"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    lab = f"rvb-ag-{secrets.token_hex(3)}"
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        cluster.up(plan, progress=lambda m: print(f"  {m}", flush=True))
        result = measure(lab, args.rounds, args.idle)
    finally:
        teardown.down(lab)
    ours = [x / 1000 for x in result["ours_ms"]]  # type: ignore[union-attr]
    ref = [x / 1000 for x in result["reference_ms"]]  # type: ignore[union-attr]
    if ours:
        med, med_ref = statistics.median(ours), statistics.median(ref)
        share = statistics.median(o - r for o, r in zip(ours, ref, strict=True))
        result.update(median_ms=round(med * 1000, 1), reference_median_ms=round(med_ref * 1000, 1),
                      agent_share_median_ms=round(share * 1000, 1),
                      ratio=round(med / med_ref, 2) if med_ref else None)
        print(f"Gateway write -> route in the remote gateway's kernel: median {med * 1000:.0f} ms"
              f" (max {max(ours) * 1000:.0f}); bare API watcher: median {med_ref * 1000:.0f} ms;"
              f" ratio {med / med_ref:.2f}; agent's share (median of differences) "
              f"{share * 1000:.0f} ms; both from the start of the writing kubectl")
    rss = result["rss_mib"]
    cpu = result["idle_cpu_percent"]
    print("agent RSS MiB: " + ", ".join(f"{n} {v}" for n, v in rss.items())  # type: ignore
          + "; idle CPU %: " + ", ".join(f"{n} {v}" for n, v in cpu.items()))  # type: ignore
    with open("/proc/loadavg") as fh:
        print(f"load average during the run: {fh.read().split()[0]} (2 cores)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
