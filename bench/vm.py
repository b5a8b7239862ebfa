"""Benchmark: lab nodes of kind vm (qemu guests under software emulation) against netns nodes.

In one run, for a mixed topology (default test-topologies/mixed-vm.yaml) and its all-netns twin
(the same file with every `kind: vm` dropped):
- `raven lab up` (a subprocess, as an operator runs it) until every pod pair answers;
- a reboot of one node (the first VM node, and the same node in the twin): `raven lab
  node-up --reboot` semantics taken apart: power off, boot (VM: qemu start to the guest's
  first answer on its control channel, then the lab's wiring), agent start, agent ready (its
  first successful apply, raven.lab.cluster.wait_agent_ready).
Figures only; never pass/fail. `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/vm.py [--topology FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from raven.lab import cluster, faults, runtime, vm
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
RAVEN = [sys.executable, "-m", "raven.cli"]


def twin_file(topology: Path, folder: Path) -> Path:
    """The topology with every node's `kind` removed (all netns)."""
    data = yaml.safe_load(topology.read_text())
    for pool in data["pools"]:
        for node in pool["nodes"]:
            node.pop("kind", None)
    data["name"] = data.get("name", topology.stem) + "-twin"
    out = folder / f"{topology.stem}-twin.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def lab_up(path: Path, lab: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([*RAVEN, "lab", "up", str(path), "--name", lab], capture_output=True,
                          text=True, timeout=3600)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"lab up {path.name} failed: {proc.stderr[-3000:]}")
    return took


def reboot(lab: str, node: str) -> dict[str, float]:
    """Power a node off and on again with the phases timed (what node-up --reboot does)."""
    plan = runtime.load_plan(lab)
    pool, plan_node = faults._node(plan, node)
    before = cluster.agent_status_stamp(lab, node)
    started = time.perf_counter()
    faults.node_down(lab, node)
    figures: dict[str, float] = {}
    if plan_node.is_vm:
        t0 = time.perf_counter()
        faults._port(pool, plan_node, "up")
        vm.start(lab, node)
        uptime = vm.wait_ready(lab, node)
        figures["guest_answers_s"] = time.perf_counter() - t0
        figures["guest_uptime_at_answer_s"] = uptime
        vm.configure(lab, node)
        figures["wired_s"] = time.perf_counter() - t0
        from raven.lab.kubelet import down_marker

        down_marker(lab, node).unlink(missing_ok=True)
    else:
        faults.node_up(lab, node, reboot=True)
    t_agent = time.perf_counter()
    if not runtime.process_running(lab, node, cluster.AGENT):
        cluster.start_agent(lab, node)
    cluster.wait_agent_ready(lab, node, before, timeout=vm.AGENT_READY_TIMEOUT)
    figures["agent_start_to_ready_s"] = time.perf_counter() - t_agent
    figures["boot_to_agent_ready_s"] = time.perf_counter() - started
    return {k: round(v, 2) for k, v in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "mixed-vm.yaml"))
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, qemu taps)")
    why = vm.unavailable()
    if why:
        sys.exit(why)
    topology = Path(args.topology)
    nodes = [n for p in load_topology(topology).pools for n in p.nodes if n.kind == "vm"]
    if not nodes:
        sys.exit(f"{topology} has no node of kind vm")
    node = nodes[0].name
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in (("netns", twin_file(topology, Path(tmp))), ("mixed", topology)):
            lab = f"rvt-bvm-{secrets.token_hex(3)}"
            try:
                up = lab_up(path, lab)
                print(f"{label:>6}: lab up to all pairs {up:7.1f}s", flush=True)
                figures = reboot(lab, node)
                print(f"{label:>6}: reboot of {node} to agent ready "
                      f"{figures['boot_to_agent_ready_s']:7.1f}s  {figures}", flush=True)
                results[label] = {"lab_up_all_pairs_s": round(up, 2), "reboot": figures}
            finally:
                subprocess.run([*RAVEN, "lab", "down", lab], capture_output=True, timeout=300)
    ratio_up = results["mixed"]["lab_up_all_pairs_s"] / results["netns"]["lab_up_all_pairs_s"]
    ratio_boot = (results["mixed"]["reboot"]["boot_to_agent_ready_s"]
                  / results["netns"]["reboot"]["boot_to_agent_ready_s"])
    print(f"mixed / all-netns: lab up {ratio_up:.1f}x, reboot to agent ready {ratio_boot:.1f}x "
          f"(load {os.getloadavg()[0]:.1f})")
    if args.json:
        print(json.dumps({"topology": str(topology), "vm_node": node, **results,
                          "ratio_lab_up": round(ratio_up, 2),
                          "ratio_reboot_to_agent_ready": round(ratio_boot, 2),
                          "load": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
