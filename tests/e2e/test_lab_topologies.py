"""Every shipped topology builds and its pods answer each other inside their pool.

Oracles: ICMP really crossing the lab (the `ping` tool inside the pod namespaces), `ip netns
list`, `ip -json` of the lab namespaces and the root namespace's netns ids.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from raven.lab.ping import PingReport, ping_all
from raven.lab.plan import LabPlan, PodPlan

# Topologies with nodes of kind vm boot qemu guests: tests/vm covers them (tests/vm/test_vm_lab.py).
TOPOLOGIES = sorted(p for p in (Path(__file__).resolve().parents[2] / "test-topologies").glob(
    "*.yaml") if "kind: vm" not in p.read_text())

pytestmark = pytest.mark.root


def ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-json", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


@pytest.mark.parametrize("path", TOPOLOGIES, ids=[p.stem for p in TOPOLOGIES])
def test_topology_builds_and_pods_answer_inside_pools(lab_factory, path: Path) -> None:
    plan: LabPlan = lab_factory(path)
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in plan.netns_names():
        assert ns in existing
    report = answered(plan, scope="pool")
    # One pair per family both pods have (dual-stack topologies ping IPv4 and IPv6).
    expected = sum(len(families(a) & families(b))
                   for pods in ([pod for n in pool.nodes for pod in n.pods] for pool in plan.pools)
                   for a in pods for b in pods if a is not b)
    assert len(report.pairs) == expected
    assert report.ok, [f"{p.src}->{p.dst}" for p in report.pairs if not p.ok]
    assert all(p.rtt_ms is not None and p.rtt_ms > 0 for p in report.pairs)
    # Node underlay: MTU and address as planned, read back from the kernel.
    pool, node = plan.nodes()[0]
    eth0 = ip_json("-n", node.netns, "addr", "show", "dev", "eth0")[0]
    assert eth0["mtu"] == pool.mtu
    assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == [
        a for a in node.underlay_ips() if ":" not in a]
    assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet6"
            and a.get("scope") == "global"] == [a for a in node.underlay_ips() if ":" in a]


def answered(plan: LabPlan, scope: str, tries: int = 2,
             done: Callable[[PingReport], bool] = lambda r: r.ok,
             timeout: float = 60.0) -> PingReport:
    """The first ping round (ping_all) that is `done`, or the last one after `timeout` (a
    liveness bound: a loaded machine may miss one round's second)."""
    deadline = time.monotonic() + timeout
    while True:
        report = ping_all(plan, scope=scope, tries=tries)
        if done(report) or time.monotonic() > deadline:
            return report


def families(pod: PodPlan) -> set[str]:
    return {"ipv6" if ":" in a else "ipv4" for a in pod.addresses()}


def test_pools_do_not_reach_each_other_without_the_overlay(three_pools_lab: LabPlan) -> None:
    # A round in which every pair inside a pool answered is the positive control of the
    # negative check: its cross-pool echoes had the same time to come back, and none did.
    report = answered(three_pools_lab, scope="all", tries=1,
                      done=lambda r: all(p.ok for p in r.pairs if p.src_pool == p.dst_pool))
    inside = [p for p in report.pairs if p.src_pool == p.dst_pool]
    across = [p for p in report.pairs if p.src_pool != p.dst_pool]
    assert inside and all(p.ok for p in inside)
    assert across and not any(p.ok for p in across)
    assert report.ok is False


def test_lab_is_sealed_from_the_root_namespace(three_pools_lab: LabPlan) -> None:
    plan = three_pools_lab
    # The root namespace holds no link into the lab: it never got an id for a lab namespace.
    ids = ip_json("netns", "list-id")
    assert not [i for i in ids if str(i.get("name", "")).startswith(plan.name + ".")]
    # The internet has no default route: nothing leaves the lab.
    routes = ip_json("-n", plan.internet_netns, "route", "show")
    assert not [r for r in routes if r["dst"] == "default"]
    # Forwarding is on where the lab routes.
    for ns in (plan.internet_netns, plan.pools[0].netns, plan.nodes()[0][1].netns):
        value = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n",
                                "net.ipv4.ip_forward"], capture_output=True, text=True).stdout
        assert value.strip() == "1", ns


def test_every_node_reaches_the_control_plane(three_pools_lab: LabPlan) -> None:
    from raven.lab.runtime import node_exec_argv

    cp = three_pools_lab.control_plane
    for pool, node in three_pools_lab.nodes():
        result = subprocess.run([*node_exec_argv(three_pools_lab.name, node.name),
                                 "ping", "-n", "-c", "1", "-W", "2", cp.ip],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{pool.name}/{node.name}: {result.stdout}"


def test_demo_runs_and_leaves_nothing() -> None:
    import secrets
    import sys

    lab = f"rvt-lab-{secrets.token_hex(3)}"
    try:
        result = subprocess.run([sys.executable, "-m", "raven.cli", "lab", "demo", "--network-only",
                                 "--name", lab],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "== the lab" in out and "answered/tried pod pairs" in out
        assert "OK: all" in out and "expected pairs answered" in out
        # matrix: in-pool pairs answer at every stage (across pools only once the overlay runs)
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
                if line.split() and line.split()[0] in ("cloud", "edge-cone", "edge-sym")
                and len(line.split()) == 4}
        assert [rows[p][i] for i, p in enumerate(("cloud", "edge-cone", "edge-sym"))] == \
            ["2/2"] * 3
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lab + "." not in netns
    finally:
        from raven.lab import teardown

        teardown.down(lab)


def test_an_unusual_topology_builds_too(lab_factory) -> None:
    """No public pool (control plane on the internet), several pods per node, a pool without
    pods, jumbo underlay MTU, a /30 pod CIDR."""
    from raven.lab.runtime import node_exec_argv

    plan = lab_factory({"pools": [
        {"name": "a", "nat": "symmetric", "pods": 3, "underlayMTU": 9000, "nodes": [
            {"name": "a-1", "podCIDR": "172.16.0.0/28"},
            {"name": "a-2", "podCIDR": "172.16.0.16/28", "pods": 1},
            {"name": "a-3", "podCIDR": "172.16.0.32/30", "pods": 1}]},
        {"name": "b", "nat": "cone", "pods": 0, "nodes": [
            {"name": "b-1", "podCIDR": "172.16.1.0/24", "gatewayCandidate": True}]},
    ]})
    assert plan.control_plane.pool is None
    report = answered(plan, scope="pool")
    assert len(report.pairs) == 5 * 4
    assert report.ok, [f"{p.src}->{p.dst}" for p in report.pairs if not p.ok]
    for _, node in plan.nodes():
        ping = subprocess.run([*node_exec_argv(plan.name, node.name), "ping", "-n", "-c", "1",
                               "-W", "2", plan.control_plane.ip], capture_output=True, text=True)
        assert ping.returncode == 0, node.name
    eth0 = ip_json("-n", plan.nodes()[0][1].netns, "link", "show", "dev", "eth0")[0]
    assert eth0["mtu"] == 9000
