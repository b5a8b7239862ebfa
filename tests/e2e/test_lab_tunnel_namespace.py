"""The tunnel-namespace shape of active gateways on a lab (docs/tunnel-namespace.md, the shipped
default: `raven lab up`), on test-topologies/two-pools.yaml, with one failover.

What an active gateway must look like (the brief of the shape): raven0 and raven-wg0 only in
its tunnel namespace LAB.NODE-tun (raven0 made in the node's namespace and moved in, so it
carries a link-netnsid), raven-tun0 (169.254.77.1) in the node's namespace, raven-tun1
(169.254.77.2) inside, and no policy rule beyond the kernel's three (0, 32766, 32767) in either
namespace. Members and standby candidates keep today's shape and have no tunnel namespace.

Oracles, all independent of the agent: `ip -j rule`, `ip -j -d link`, `ip -j addr`,
`ip -j route` and `stat -f` run inside the lab nodes. The agent names its tunnel namespace
inside the node's private mount namespace, so from the host /run/netns/LAB.NODE-tun is an empty
file: everything is read through the node (`raven.lab.runtime.node_exec_argv`, then
`ip -n LAB.NODE-tun`). The gateway of a pool is found from the kernel (it routes remote pod
subnets into the tunnel: `raven.lab.gateway_load.carries_itself`) and must agree with the
agent's status file and the Gateway's status. ICMP between all pod pairs (`ping_all`) is the
traffic oracle. No wall-clock thresholds: bounded polling only; durations are printed.

The probe responder the agent starts in the tunnel namespace must go with it: stopped by the
agent when its plan loses the namespace (a standby keeping it would hold the unmounted
namespace alive), ended by `raven lab down` and by a node's power-off with the lab's other
processes. Whatever a failed run leaves is ended by the test, by pid, so no run leaves one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from overlay_support import assert_no_trace, in_node, lab_processes, unique_lab_name

from raven.lab import cluster, faults, runtime, teardown
from raven.lab import netns as nsutil
from raven.lab.gateway_load import carries_itself
from raven.lab.ping import PingReport, ping_all
from raven.lab.plan import LabPlan, NodePlan, PoolPlan
from raven.topology import vtep_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

EDGE = "edge"
KERNEL_RULES = [0, 32766, 32767]  # what `ip rule` shows in a namespace without policy routing
VETH, VETH_PEER = "raven-tun0", "raven-tun1"
VETH_IP, VETH_PEER_IP = "169.254.77.1", "169.254.77.2"
DEVICES = ("raven0", "raven-wg0")


@dataclass
class TunnelLab:
    plan: LabPlan
    mounts: set[int]  # inodes of the nodes' private mount namespaces (their holders')
    leaked: dict[int, str] = field(default_factory=dict)  # pid -> command line, killed


@pytest.fixture
def lab(lab_factory: Callable[..., LabPlan]) -> Iterator[TunnelLab]:
    """two-pools with the tunnel namespace, every pair answering; removed by lab_factory even
    when a step fails. Before that, this fixture removes the lab itself and ends, by pid, any
    process the lab left in one of its nodes' mount namespaces (every process an agent starts
    inherits its node's), so that a failed run leaves nothing behind either."""
    plan = lab_factory("two-pools.yaml", unique_lab_name("tn"))
    made = TunnelLab(plan, node_mount_namespaces(plan))
    try:
        started = time.monotonic()
        cluster.up(plan, settings=cluster.ClusterSettings(tunnel_namespace=True))
        print(f"lab up with --tunnel-namespace: {time.monotonic() - started:.1f}s")
        yield made
    finally:
        teardown.down(plan.name)
        if left := end_processes(made.mounts):
            print(f"ended, by pid, processes {plan.name} left after lab down: {left}")


# --- kernel readers -------------------------------------------------------------------------

def tun_name(plan: LabPlan, node: str) -> str:
    return f"{plan.name}.{node}-tun"  # the name the brief gives (LAB.NODE-tun)


def has_tunnel_netns(plan: LabPlan, node: str) -> bool:
    """A namespace is mounted at /run/netns/LAB.NODE-tun in the node's mount namespace."""
    kind = in_node(plan, node, "stat", "-f", "-c", "%T", f"/run/netns/{tun_name(plan, node)}",
                   check=False).strip()
    return kind == "nsfs"


def tunnel_netns_inode(plan: LabPlan, node: str) -> int:
    """The namespace's own inode (what /proc/PID/ns/net of a process inside it shows)."""
    return int(in_node(plan, node, "stat", "-L", "-c", "%i",
                       f"/run/netns/{tun_name(plan, node)}").strip())


def ip_json(plan: LabPlan, node: str, *argv: str, tunnel: bool = False) -> list[dict]:
    """`ip -j ARGV` in the node's namespace, or in its tunnel namespace."""
    where = ["-n", tun_name(plan, node)] if tunnel else []
    text = in_node(plan, node, "ip", *where, "-j", *argv)
    return json.loads(text) if text.strip() else []


def links(plan: LabPlan, node: str, tunnel: bool = False) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json(plan, node, "-d", "link", "show",
                                                     tunnel=tunnel)}


def kind(link: dict) -> str:
    return str((link.get("linkinfo") or {}).get("info_kind", ""))


def rule_priorities(plan: LabPlan, node: str, tunnel: bool = False) -> list[int]:
    return sorted(r.get("priority", 0) for r in ip_json(plan, node, "rule", "show",
                                                        tunnel=tunnel))


def addresses(plan: LabPlan, node: str, dev: str, tunnel: bool = False) -> set[str]:
    return {a["local"] for link in ip_json(plan, node, "-4", "addr", "show", "dev", dev,
                                           tunnel=tunnel) for a in link.get("addr_info", [])}


def routes_by_dst(plan: LabPlan, node: str, tunnel: bool = False) -> dict[str, dict]:
    """The main table (the only one looked up without rules), by destination."""
    return {r["dst"]: r for r in ip_json(plan, node, "route", "show", tunnel=tunnel)}


def role(plan: LabPlan, node: str) -> str | None:
    path = cluster.state_dir(plan.name, node) / cluster.AGENT_STATUS_FILE
    try:
        return json.loads(path.read_text()).get("role")
    except (OSError, ValueError):
        return None


def pool_named(plan: LabPlan, name: str) -> PoolPlan:
    return next(p for p in plan.pools if p.name == name)


def pids_in_netns(inode: int) -> list[int]:
    return nsutil.pids_in({inode})


def node_mount_namespaces(plan: LabPlan) -> set[int]:
    out = set()
    for _, node in plan.nodes():
        pid = runtime.process_pid(plan.name, node.name, runtime.HOLDER)
        assert pid is not None, f"{node.name}: no mount-namespace holder"
        out.add(os.stat(f"/proc/{pid}/ns/mnt").st_ino)
    return out


def pids_in_mount_namespaces(inodes: set[int]) -> dict[int, str]:
    """pid -> command line of every process in one of the mount namespaces `inodes`."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "mnt").st_ino in inodes:
                    out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                        b"\0", b" ").decode(errors="replace").strip()
    return out


def end_processes(mounts: set[int]) -> dict[int, str]:
    """SIGKILL what is left in the lab's mount namespaces (after `lab down`: a leak, see the
    test); returns what was found."""
    found = pids_in_mount_namespaces(mounts)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while set(pids_in_mount_namespaces(mounts)) & set(found):
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {found}"
        time.sleep(0.05)
    return found


# --- waits ----------------------------------------------------------------------------------

def wait_pairs(plan: LabPlan, timeout: float = 120.0, without: str = "") -> PingReport:
    """Until every pod pair answers, leaving out the pods of node `without` (powered off)."""
    off = {pod.name for _, node, pod in plan.pods() if node.name == without}
    deadline = time.monotonic() + timeout
    while True:
        report = ping_all(plan, scope="all", tries=1, timeout_s=1)
        pairs = [p for p in report.pairs if p.src not in off and p.dst not in off]
        failed = [f"{p.src}->{p.dst}" for p in pairs if not p.ok]
        if pairs and not failed:
            return report
        assert time.monotonic() < deadline, f"pairs not answering after {timeout:.0f}s: {failed}"


def gateways_from_kernel(plan: LabPlan, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """pool -> the nodes that route remote pod subnets into the tunnel (read in the node)."""
    return {pool.name: [n.name for n in pool.nodes
                        if n.name not in skip and carries_itself(plan.name, n.name)]
            for pool in plan.pools}


def settled_gateways(plan: LabPlan, skip: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                     timeout: float = 90.0) -> dict[str, str]:
    """pool -> its one active gateway, once the kernel, the agent's status file and the
    Gateway status agree (and it is not in `exclude`), and the other nodes' agents are not
    active gateways."""
    deadline = time.monotonic() + timeout
    while True:
        kernel = gateways_from_kernel(plan, skip)
        status = cluster.active_gateways(plan.name)
        ok = True
        for pool in plan.pools:
            found = kernel[pool.name]
            if len(found) != 1 or found[0] in exclude or status.get(pool.gateway, [])[:1] != found:
                ok = False
                continue
            roles = {n.name: role(plan, n.name) for n in pool.nodes if n.name not in skip}
            if roles[found[0]] != "active-gateway" or any(
                    r == "active-gateway" for n, r in roles.items() if n != found[0]):
                ok = False
        if ok:
            return {pool: nodes[0] for pool, nodes in kernel.items()}
        assert time.monotonic() < deadline, (
            f"gateways not settled: kernel {kernel}, status {status}, roles "
            f"{ {n.name: role(plan, n.name) for _, n in plan.nodes()} }")
        time.sleep(0.5)


def wait_no_tunnel_netns(plan: LabPlan, node: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while has_tunnel_netns(plan, node):
        assert time.monotonic() < deadline, f"{node} still has {tun_name(plan, node)}"
        time.sleep(0.2)


# --- the shapes -----------------------------------------------------------------------------

def assert_gateway_shape(plan: LabPlan, pool: PoolPlan, node: str) -> None:
    """raven0 and raven-wg0 only in the tunnel namespace, the veth pair across, the routes
    split between the two namespaces, no rule beyond the kernel's in either."""
    assert has_tunnel_netns(plan, node), f"{node}: no {tun_name(plan, node)}"
    outside, inside = links(plan, node), links(plan, node, tunnel=True)
    for dev in DEVICES:
        assert dev not in outside, f"{node}: {dev} in the node's namespace"
        assert dev in inside, f"{node}: no {dev} in the tunnel namespace: {sorted(inside)}"
    assert kind(inside["raven0"]) == "vxlan"
    # Made in the node's namespace and moved: its UDP socket is in another namespace.
    assert "link_netnsid" in inside["raven0"], inside["raven0"]
    assert kind(outside.get(VETH, {})) == "veth", f"{node}: {VETH}: {outside.get(VETH)}"
    assert kind(inside.get(VETH_PEER, {})) == "veth", f"{node}: {VETH_PEER}: {inside}"
    assert VETH not in inside and VETH_PEER not in outside
    assert VETH_IP in addresses(plan, node, VETH)
    assert VETH_PEER_IP in addresses(plan, node, VETH_PEER, tunnel=True)
    # No policy routing in either namespace: only the kernel's three rules.
    assert rule_priorities(plan, node) == KERNEL_RULES, ip_json(plan, node, "rule", "show")
    assert rule_priorities(plan, node, tunnel=True) == KERNEL_RULES, \
        ip_json(plan, node, "rule", "show", tunnel=True)
    # Routes: the remote pools into raven-wg0 inside, the pool's other nodes over raven0
    # inside, the rest back over the veth; in the node, the remote pools into the veth.
    remote = {n.pod_cidr for p in plan.pools if p.name != pool.name for n in p.nodes}
    inner, outer = routes_by_dst(plan, node, tunnel=True), routes_by_dst(plan, node)
    for cidr in remote:
        assert inner.get(cidr, {}).get("dev") == "raven-wg0", f"{node} inside: {cidr}: {inner}"
        assert outer.get(cidr, {}).get("dev") == VETH, f"{node}: {cidr}: {outer}"
        assert outer[cidr].get("gateway") == VETH_PEER_IP, outer[cidr]
    for other in pool.nodes:
        if other.name != node:
            route = inner.get(other.pod_cidr, {})
            assert route.get("dev") == "raven0", f"{node} inside: {other.pod_cidr}: {inner}"
            assert route.get("gateway") == vtep_for(other.underlay_ip)[0], route
    default = inner.get("default", {})
    assert (default.get("dev"), default.get("gateway")) == (VETH_PEER, VETH_IP), inner


def assert_member_shape(plan: LabPlan, node: NodePlan, candidate: bool) -> None:
    """Today's shape: no tunnel namespace, no veth, raven0 (and a standby candidate's warm
    raven-wg0) in the node's own namespace."""
    assert not has_tunnel_netns(plan, node.name), f"{node.name}: {tun_name(plan, node.name)}"
    outside = links(plan, node.name)
    assert kind(outside.get("raven0", {})) == "vxlan", f"{node.name}: {sorted(outside)}"
    assert "link_netnsid" not in outside["raven0"], outside["raven0"]  # never moved
    assert VETH not in outside, f"{node.name}: {VETH}"
    if candidate:
        assert "raven-wg0" in outside, f"{node.name}: no warm raven-wg0: {sorted(outside)}"


def assert_shapes(plan: LabPlan, active: dict[str, str], skip: tuple[str, ...] = ()) -> None:
    for pool in plan.pools:
        for node in pool.nodes:
            if node.name in skip:
                continue
            if node.name == active[pool.name]:
                assert_gateway_shape(plan, pool, node.name)
            else:
                assert_member_shape(plan, node, node.gateway_candidate)


# --- the test -------------------------------------------------------------------------------

def test_tunnel_namespace_gateways_and_a_failover(lab: TunnelLab) -> None:
    plan = lab.plan
    # 1. Every pod pair answers.
    report = wait_pairs(plan)
    assert len(report.pairs) == 4 * 3
    # 2. Each pool's active gateway has the shape; members and the standby do not.
    active = settled_gateways(plan)
    assert_shapes(plan, active)
    edge = pool_named(plan, EDGE)
    old = active[EDGE]
    new = next(n.name for n in edge.nodes if n.gateway_candidate and n.name != old)
    old_inode = tunnel_netns_inode(plan, old)

    # 3. Power the edge gateway off (test_failover's case a): the other candidate takes over.
    started = time.monotonic()
    faults.node_down(plan.name, old)
    try:
        wait_pairs(plan, without=old)
        resumed = time.monotonic() - started
        moved = settled_gateways(plan, skip=(old,), exclude=(old,))
        print(f"failover {old} -> {new}: pairs answer after {resumed:.1f}s; kernel, agents and "
              f"Gateway status agree after {time.monotonic() - started:.1f}s")
        assert moved == {**active, EDGE: new}
        assert_shapes(plan, moved, skip=(old,))
        # The powered-off node runs no agent, so nothing removes its tunnel namespace: its
        # kernel state stays, as RAM would (raven.lab.faults.node_down). What is checkable
        # while it is off: the namespace is still there, unused (the pool's traffic crosses
        # `new`, checked above), and what still runs in it.
        assert has_tunnel_netns(plan, old)
        off = {pid: lab_cmdline(pid) for pid in pids_in_netns(old_inode)}
        print(f"processes in {old}'s tunnel namespace while it is powered off: {off}")
    finally:
        # Back on (no reboot): a fresh agent adopts the namespace and, a standby now,
        # removes it and brings its devices back into the node's namespace.
        faults.node_up(plan.name, old)
    back = time.monotonic()
    wait_no_tunnel_netns(plan, old)
    print(f"{old}'s tunnel namespace unmounted {time.monotonic() - back:.1f}s after node-up")
    wait_pairs(plan)
    assert settled_gateways(plan) == {**active, EDGE: new}  # back as a standby: no move back
    assert_shapes(plan, {**active, EDGE: new})
    # Unmounted, the namespace must also be gone: nothing may still run in it.
    stale = {pid: lab_cmdline(pid) for pid in pids_in_netns(old_inode)}

    # 4. The lab goes (lab_factory removes it again, a no-op, when a step above failed),
    # leaving no namespace with its prefix, no process, no mount.
    processes = lab_processes(plan.name)
    teardown.down(plan.name)
    assert not [n for n in nsutil.list_netns() if n.startswith(plan.name + ".")]
    lab.leaked.update(end_processes(lab.mounts))  # a leak, ended here so that none stays
    assert_no_trace(plan.name, processes)
    # The probe responder of a tunnel namespace goes with it (the agent stops it when its plan
    # loses the namespace), and `lab down` ends every process of the lab's hosts.
    assert not stale, f"still running in {old}'s unmounted tunnel namespace: {stale}"
    assert not lab.leaked, f"left running by `lab down` in the lab's mount namespaces: {lab.leaked}"


def lab_cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    return ""
