"""The overlay on the other test topologies, through the CLI an operator uses; `lab down` cleanup.

- five-pools (17 nodes: two public pools, two cone-NAT pools, one symmetric-NAT pool): every pod
  reaches every pod, NAT to NAT through the relay; then `raven lab down` leaves nothing:
  no namespace, no process (agents, wireguard-go, API server, controller), no mount, no file.
- two-pools via `raven lab up` (the CLI default brings up the whole system) and `raven lab
  ping` (exit 0 only when every pair answers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from overlay_support import TOPOLOGIES, lab_ping_until, unique_lab_name

from raven.lab import netns as nsutil
from raven.lab import runtime, teardown

pytestmark = [pytest.mark.root, pytest.mark.slow]

RAVEN = [sys.executable, "-m", "raven.cli"]


def raven(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAVEN, *args], capture_output=True, text=True, timeout=timeout)


def lab_processes(lab: str) -> dict[int, int | None]:
    """pid -> start time of every process inside one of the lab's namespaces and every
    supervised one (the identity survives pid reuse)."""
    inodes = {i for i in map(nsutil.netns_inode, teardown.lab_namespaces(lab)) if i is not None}
    pids = set(nsutil.pids_in(inodes))
    pids |= {int(r["pid"]) for r in runtime.supervised(lab) if r["running"]}
    return {pid: runtime.proc_start_time(pid) for pid in pids}


@pytest.mark.parametrize("topology", ["five-pools.yaml", "two-pools.yaml"])
def test_lab_up_all_pairs_then_down_leaves_nothing(topology: str) -> None:
    lab = unique_lab_name("ov")
    try:
        up = raven("lab", "up", str(TOPOLOGIES / topology), "--name", lab)
        assert up.returncode == 0, up.stderr[-3000:]
        assert "overlay ready" in up.stderr and "all" in up.stderr
        ping = lab_ping_until(lab)
        assert ping.returncode == 0, ping.stdout[-3000:]
        pairs = json.loads(ping.stdout)["pairs"]
        plan = runtime.load_plan(lab)
        n = len(plan.pods())
        assert len(pairs) == n * (n - 1) and all(p["ok"] for p in pairs)
        nat_pools = [p.name for p in plan.pools if p.nat != "none"]
        nat_to_nat = [p for p in pairs if p["src_pool"] in nat_pools and p["dst_pool"]
                      in nat_pools and p["src_pool"] != p["dst_pool"]]
        assert len(nat_pools) < 2 or nat_to_nat  # relayed pairs were among those that answered
        processes = lab_processes(lab)
        names = {Path(f"/proc/{p}/comm").read_text().strip() for p in processes
                 if Path(f"/proc/{p}/comm").exists()}
        assert "wireguard-go" in names  # the agents' tunnels are there to be cleaned
        kubeconfig = raven("lab", "kubeconfig", lab)
        assert kubeconfig.returncode == 0 and kubeconfig.stdout.strip().endswith(
            "admin.kubeconfig")

        down = raven("lab", "down", lab)
        assert down.returncode == 0, down.stderr
        alive = [p for p, start in processes.items()
                 if start is not None and runtime.proc_start_time(p) == start]
        assert not alive, f"processes left: {alive}"
        assert not [n for n in nsutil.list_netns() if n.startswith(lab + ".")]
        assert not runtime.run_dir(lab).exists()
        assert str(runtime.run_dir(lab)) not in Path("/proc/self/mountinfo").read_text()
        assert lab not in raven("lab", "list").stdout
    finally:
        teardown.down(lab)


ODD = """
name: odd
underlayMTU: 9000
pools:
  - {name: hq, gateway: gw-hq, nat: cone, pods: 2, nodes: [
      {name: hq-a, podCIDR: 10.50.0.0/28, gatewayCandidate: true},
      {name: hq-b, podCIDR: 10.50.0.16/28}]}
  - {name: br, gateway: gw-br, nat: symmetric, nodes: [
      {name: br-a, podCIDR: 10.60.0.0/30, gatewayCandidate: true, pods: 1}]}
  - {name: pub, gateway: gw-pub, nat: none, nodes: [
      {name: pub-a, podCIDR: 10.70.0.0/24, pods: 1},
      {name: pub-b, podCIDR: 10.70.1.0/24, gatewayCandidate: true, pods: 3}]}
  - {name: dark, gateway: gw-dark, nat: cone, nodes: [
      {name: dark-a, podCIDR: 10.80.0.0/24, pods: 1}]}
"""


def test_unusual_topology_connects_what_can_be_connected(tmp_path: Path) -> None:
    """Jumbo underlay, /28 and /30 pods, several pods per node, the public pool's gateway not
    its first node, NAT to NAT relayed through it, and a pool without any gateway candidate
    (only its own pods reach it): `lab up` succeeds once every connectable pair answers."""
    path = tmp_path / "odd.yaml"
    path.write_text(ODD)
    lab = unique_lab_name("ov")
    try:
        up = raven("lab", "up", str(path), "--name", lab)
        assert up.returncode == 0, up.stderr[-3000:]
        assert "dark->pub" in up.stderr  # announced as not connectable

        def cross_dark(p: dict) -> bool:
            return "dark" in (p["src_pool"], p["dst_pool"]) and p["src_pool"] != p["dst_pool"]

        # Judged on a round in which every connectable pair answered: the positive control of
        # the negative check on the dark pool's pairs.
        ping = lab_ping_until(lab, lambda pairs: all(p["ok"] for p in pairs
                                                     if not cross_dark(p)))
        pairs = json.loads(ping.stdout)["pairs"]
        for p in pairs:
            assert p["ok"] != cross_dark(p), p
        assert ping.returncode == 1  # `lab ping` reports the dark pool's pairs as failing
        assert any(p["ok"] for p in pairs if {p["src_pool"], p["dst_pool"]} == {"hq", "br"})
    finally:
        teardown.down(lab)
