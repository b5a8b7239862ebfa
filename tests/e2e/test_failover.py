"""Gateway failover without the cloud, on test-topologies/failover.yaml (shipped timing defaults).

Cases: (a) the active gateway of the cone-NAT pool is powered off; (b) it is blackholed (up and
heartbeating, its VXLAN and WireGuard traffic dropped); (c) its pool is cut off from the control
plane, then it is powered off. Each asserts that replies resume towards a pod on the member that
is not a candidate, from the public pool and from the symmetric-NAT pool (through the relay),
and which node carries the traffic, read from the kernel: the member's routes (`ip -j route`)
and the public gateway's WireGuard peers (`wg show ... allowed-ips`, transfer counters).
No wall-clock thresholds: bench/failover.py reports the figures.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from overlay_support import in_node, overlay_lab, wg_public_key

from raven.lab import cluster, faults
from raven.lab.ping import ping_all
from raven.lab.plan import LabPlan
from raven.topology import vtep_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

POOL = "edge-cone"
MEMBER = "cone-3"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("failover.yaml", area="fo") as plan:
        yield plan


def node_ip(plan: LabPlan, name: str) -> str:
    return next(n.underlay_ip for _, n in plan.nodes() if n.name == name)


def member_next_hops(plan: LabPlan) -> set[str]:
    routes = json.loads(in_node(plan, MEMBER, "ip", "-j", "route", "show", "table", "9027")
                        or "[]")
    return {r.get("gateway", "") for r in routes}


def cloud_allowed(plan: LabPlan) -> dict[str, set[str]]:
    """public key -> allowed IPs of the public gateway's WireGuard peers (`wg show`)."""
    out: dict[str, set[str]] = {}
    for line in in_node(plan, "cloud-1", "wg", "show", "raven-wg0", "allowed-ips").splitlines():
        key, *ips = line.split()
        out[key] = {ip for ip in ips if ip != "(none)"}
    return out


def carrier(plan: LabPlan) -> str:
    """The candidate the member routes through, from its kernel routes."""
    hops = member_next_hops(plan)
    for name in ("cone-1", "cone-2"):
        if hops == {vtep_for(node_ip(plan, name))[0]}:
            return name
    raise AssertionError(f"{MEMBER} routes via {hops}")


def settled(plan: LabPlan, timeout: float = 90.0) -> str:
    """Every pair answers and the member routes through the controller's active gateway."""
    cluster.wait_all_pairs(plan, timeout)
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.active_gateways(plan.name).get("gw-edge-cone", [])
        used = carrier(plan)
        if status[:1] == [used]:
            return used
        assert time.monotonic() < deadline, f"status {status}, member uses {used}"
        time.sleep(0.5)


def replies_resume(plan: LabPlan, timeout: float = 20.0) -> None:
    """Until pods of the public and the symmetric-NAT pool both reach the member's pod."""
    dst = next(n for _, n in plan.nodes() if n.name == MEMBER).pods[0].ip
    sources = [next(n for _, n in plan.nodes() if n.name == name).pods[0]
               for name in ("cloud-2", "sym-2")]
    deadline = time.monotonic() + timeout
    while True:
        ok = [subprocess.run(["ip", "netns", "exec", s.netns, "ping", "-n", "-c", "1", "-W",
                              "1", dst], capture_output=True).returncode == 0 for s in sources]
        if all(ok):
            return
        assert time.monotonic() < deadline, f"no reply from {dst} after the fault: {ok}"


def candidate_keys(plan: LabPlan) -> dict[str, str]:
    """WireGuard public keys of both candidates (read while both run: a standby holds a warm
    raven-wg0 too)."""
    return {name: wg_public_key(plan, name) for name in ("cone-1", "cone-2")}


def assert_carried_by(plan: LabPlan, new: str, old: str, keys: dict[str, str]) -> None:
    assert carrier(plan) == new
    allowed = cloud_allowed(plan)
    cone_subnets = {n.pod_cidr for n in plan.pools[1].nodes}
    assert cone_subnets <= allowed[keys[new]]
    assert not cone_subnets & allowed[keys[old]]


def events(plan: LabPlan, reason: str) -> list[str]:
    data = cluster.kubectl_json(plan.name, "get", "events", "-A")
    return [e.get("message", "") for e in data.get("items", []) if e.get("reason") == reason]


def test_a_powered_off_gateway_is_replaced_without_the_cloud(lab: LabPlan) -> None:
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    keys = candidate_keys(lab)
    faults.node_down(lab.name, old)
    try:
        replies_resume(lab)
        assert_carried_by(lab, new, old, keys)
        # The controller follows the pool (adopted from the nodes' annotations).
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
    finally:
        faults.node_up(lab.name, old)
    assert settled(lab) == new  # the old gateway comes back as a standby: no move back


def test_b_a_gateway_that_heartbeats_but_does_not_forward_is_replaced(lab: LabPlan) -> None:
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    keys = candidate_keys(lab)
    before = cluster.kubectl_json(lab.name, "get", "lease", "-n", "kube-system",
                                  f"raven-agent-{old}")["spec"]["renewTime"]
    faults.blackhole(lab.name, old)
    try:
        replies_resume(lab)
        assert_carried_by(lab, new, old, keys)
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
        # It is Ready and heartbeating all along (Kilo #489's case): its Lease is renewed while
        # it is blackholed (every heartbeat period, so wait for one).
        deadline = time.monotonic() + 30
        while cluster.kubectl_json(lab.name, "get", "lease", "-n", "kube-system",
                                   f"raven-agent-{old}")["spec"]["renewTime"] == before:
            assert time.monotonic() < deadline, f"{old} stopped renewing its heartbeat"
            time.sleep(0.5)
        assert any(f"{old} -> {new}, cause: probe loss" in m
                   for m in events(lab, "GatewayFailover"))
        # The blackhole drops overlay traffic only: the node's underlay still answers.
        assert subprocess.run(["ip", "netns", "exec", lab.pools[1].nodes[2].netns, "ping",
                               "-c", "1", "-W", "1", node_ip(lab, old)],
                              capture_output=True).returncode == 0
    finally:
        faults.unblackhole(lab.name, old)
    assert settled(lab) == new


def test_c_power_off_while_the_pool_is_cut_off_from_the_control_plane(lab: LabPlan) -> None:
    old = settled(lab)
    new = "cone-2" if old == "cone-1" else "cone-1"
    keys = candidate_keys(lab)
    faults.disconnect(lab.name, POOL)
    try:
        faults.node_down(lab.name, old)
        replies_resume(lab)
        assert_carried_by(lab, new, old, keys)
        # Nobody in the pool could tell the controller: its status still names the old one.
        assert cluster.active_gateways(lab.name)["gw-edge-cone"][:1] == [old]
        faults.reconnect(lab.name, POOL)
        # Heard from again, the pool's decision is adopted (before the old node returns, or
        # the pool would follow the status back to it).
        assert cluster.wait_active(lab.name, POOL, timeout=60, exclude=(old,)) == new
    finally:
        faults.reconnect(lab.name, POOL)
        faults.node_up(lab.name, old)
    assert settled(lab) == new


def test_loss_and_blackhole_verbs(lab: LabPlan) -> None:
    settled(lab)
    member = lab.pools[1].nodes[2]
    src = lab.pools[0].nodes[1].pods[0]

    def answers() -> bool:
        return subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-n", "-c", "3", "-i",
                               "0.2", "-W", "1", member.pods[0].ip],
                              capture_output=True).returncode == 0

    faults.loss(lab.name, member.name, 100)
    try:
        assert not answers()
        assert member.name in faults.faults_active(lab.name)["loss"]
    finally:
        faults.loss(lab.name, member.name, 0)
    assert answers()
    assert faults.faults_active(lab.name)["loss"] == []
    with pytest.raises(Exception, match="percentage"):
        faults.loss(lab.name, member.name, 101)
    pool_netns = lab.pools[1].netns
    faults.blackhole(lab.name, member.name)
    faults.blackhole(lab.name, member.name)  # idempotent
    faults.unblackhole(lab.name, member.name)
    assert not [t for t in runtime_tables(pool_netns) if "blackhole" in t]
    report = ping_all(lab, tries=2, timeout_s=1)
    assert all(p.ok for p in report.pairs)


def runtime_tables(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "tables"],
                         capture_output=True, text=True).stdout
    return [t["table"]["name"] for t in json.loads(out or "{}").get("nftables", [])
            if "table" in t]

