"""The whole overlay on three-pools (cloud, cone-NAT edge, symmetric-NAT edge), with faults.

One lab per module (built by raven.lab.build + raven.lab.cluster: API server, controller,
kubelet stand-in, one agent per node). Every test starts from, and leaves, full connectivity.
Oracles: ICMP crossing the lab, `wg show`, `ip -json`, `bridge -json`, `nft -j`, kubectl.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from icmp_stream_support import start_stream
from overlay_support import (
    in_devices,
    in_node,
    lab_snapshot,
    node_of,
    overlay_lab,
    pod,
    pod_addresses,
    vtep_mac,
    wg_public_key,
)

from raven.lab import cluster, faults, runtime
from raven.lab.gateway_load import tunnel_routes
from raven.lab.ping import PingReport, ping_all
from raven.lab.plan import LabPlan, PoolPlan

pytestmark = [pytest.mark.root, pytest.mark.slow]

RAVEN = [sys.executable, "-m", "raven.cli"]
VTEPS = ipaddress.ip_network("240.0.0.0/4")


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("three-pools.yaml") as plan:
        yield plan


def wait_pairs(plan: LabPlan, timeout: float = 120.0, skip_nodes: tuple[str, ...] = ()
               ) -> tuple[PingReport, float]:
    """Ping until every pair (pods on `skip_nodes` left out) answers; (report, seconds)."""
    skip_pods = {p.name for _, n, p in plan.pods() if n.name in skip_nodes}
    started = time.monotonic()
    while True:
        report = ping_all(plan, tries=1, timeout_s=1)
        pairs = [p for p in report.pairs if p.src not in skip_pods and p.dst not in skip_pods]
        if all(p.ok for p in pairs):
            return report, time.monotonic() - started
        if time.monotonic() - started > timeout:
            failed = [f"{p.src}->{p.dst}" for p in pairs if not p.ok]
            raise AssertionError(f"{len(failed)} pairs fail after {timeout}s: {failed}")
        time.sleep(0.5)


def wait_agents_planned_with(plan: LabPlan, gateway: str, resource_version: int,
                             timeout: float = 120.0) -> None:
    """Until every agent's last plan was made from `gateway` at `resource_version` or later
    (the agent's status file names the Gateways it planned from): an event to wait on, instead
    of a sleep that hopes the agents have caught up."""
    deadline = time.monotonic() + timeout
    behind: list[str] = []
    while time.monotonic() < deadline:
        behind = []
        for _, node in plan.nodes():
            path = cluster.state_dir(plan.name, node.name) / cluster.AGENT_STATUS_FILE
            try:
                seen = json.loads(path.read_text()).get("gateways", {}).get(gateway)
            except (OSError, ValueError):
                seen = None
            if seen is None or int(seen) < resource_version:
                behind.append(f"{node.name}: {seen}")
        if not behind:
            return
        time.sleep(0.2)
    raise AssertionError(f"agents have not planned with {gateway} at {resource_version}: "
                         f"{behind}")


@pytest.fixture
def healthy(lab: LabPlan) -> Iterator[LabPlan]:
    wait_pairs(lab)
    yield lab
    for pool in lab.pools:  # undo whatever a failed test left broken
        faults.reconnect(lab.name, pool.name)
    for _, node in lab.nodes():
        if not runtime.process_running(lab.name, node.name, cluster.AGENT):
            faults.node_up(lab.name, node.name)
    faults.control_plane_start(lab.name, settle=0)


def wait_ready_reason(plan: LabPlan, gateway: str, reason: str, timeout: float = 120.0) -> None:
    """Until the Gateway's Ready condition has `reason`."""
    deadline = time.monotonic() + timeout
    ready: dict = {}
    while time.monotonic() < deadline:
        obj = kubectl_json(plan, "get", "gateway", gateway)
        ready = next((c for c in (obj.get("status") or {}).get("conditions", [])
                      if c["type"] == "Ready"), {})
        if ready.get("reason") == reason:
            return
        time.sleep(0.5)
    raise AssertionError(f"Gateway {gateway}: Ready never had reason {reason}: {ready}")


def node_pool(plan: LabPlan, name: str) -> PoolPlan:
    return next(p for p in plan.pools if p.name == name)


def kubectl_json(plan: LabPlan, *args: str) -> dict:
    return cluster.kubectl_json(plan.name, *args)


def active(plan: LabPlan) -> dict[str, str]:
    """pool name -> its active gateway node (Gateway status)."""
    by_gateway = cluster.active_gateways(plan.name)
    return {p.name: by_gateway[p.gateway][0] for p in plan.pools if by_gateway.get(p.gateway)}


def recent_events(plan: LabPlan) -> str:
    items = kubectl_json(plan, "get", "events")["items"]
    return "\n".join(f"{e.get('lastTimestamp')} {e['reason']}: {e['message']}"
                     for e in items[-6:])


def test_all_pairs_and_the_relay(healthy: LabPlan) -> None:
    plan = healthy
    result = subprocess.run([*RAVEN, "lab", "ping", plan.name, "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    pairs = json.loads(result.stdout)["pairs"]
    assert len(pairs) == 30 and all(p["ok"] for p in pairs)
    assert {(p["src_pool"], p["dst_pool"]) for p in pairs} == {
        (a.name, b.name) for a in plan.pools for b in plan.pools}
    # The tunnels as `wg show` sees them: the two NAT'd pools each peer only with the cloud
    # gateway, which carries the other NAT'd pool's subnets (the relay).
    gw = active(plan)
    keys = {pool: wg_public_key(plan, node) for pool, node in gw.items()}
    peers = {}
    warm = {}
    for pool, node in gw.items():
        lines = in_devices(plan, node, "wg", "show", "raven-wg0", "dump").splitlines()[1:]
        # "(none)": a direct-path probe peer between NAT'd pools (docs/gateway.md 4a) that
        # carries nothing yet; cone <-> symmetric never goes direct.
        allowed = {f.split("\t")[0]: set(f.split("\t")[3].split(",")) - {"(none)"}
                   for f in lines}
        # Peers that carry pod subnets; the others are warm standbys that allow only their
        # candidate's VTEP /32 (the data-path probe address, docs/gateway.md §3a).
        pods = {k: {ip for ip in v if not ipaddress.ip_network(ip).subnet_of(VTEPS)}
                for k, v in allowed.items()}
        peers[pool] = {k: v for k, v in pods.items() if v}
        warm[pool] = {k for k, v in pods.items() if not v and allowed[k]}
    assert set(peers["cloud"]) == {keys["edge-cone"], keys["edge-sym"]}
    standby = next(n.name for n in plan.pools[1].nodes if n.name != gw["edge-cone"])
    assert warm["cloud"] == {wg_public_key(plan, standby)}
    assert set(peers["edge-cone"]) == {keys["cloud"]}
    assert set(peers["edge-sym"]) == {keys["cloud"]}
    sym_subnets = {n.pod_cidr for n in plan.pools[2].nodes}
    assert sym_subnets <= peers["edge-cone"][keys["cloud"]]


def test_kubeconfig_and_cluster_objects(healthy: LabPlan) -> None:
    plan = healthy
    out = subprocess.run([*RAVEN, "lab", "kubeconfig", plan.name], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(cluster.kubeconfig_path(plan.name))
    nodes = {n["metadata"]["name"]: n for n in kubectl_json(plan, "get", "nodes")["items"]}
    assert set(nodes) == {n.name for _, n in plan.nodes()}
    for pool, node in plan.nodes():
        obj = nodes[node.name]
        assert obj["metadata"]["labels"]["raven.openyurt.io/gateway"] == pool.gateway
        assert obj["spec"]["podCIDR"] == node.pod_cidr
        assert {"type": "InternalIP", "address": node.underlay_ip} in obj["status"]["addresses"]
        ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        key = obj["metadata"]["annotations"]["raven.openyurt.io/wireguard-public-key"]
        assert len(key) == 44
    gateways = {g["metadata"]["name"]: g for g in cluster.gateways(plan.name)}
    assert set(gateways) == {p.gateway for p in plan.pools}
    for pool in plan.pools:
        spec = gateways[pool.gateway]["spec"]
        candidates = [n.name for n in pool.nodes if n.gateway_candidate]
        for kind in ("tunnel", "proxy"):  # every candidate is both (docs/proxy.md)
            assert [e["nodeName"] for e in spec["endpoints"] if e["type"] == kind] == candidates
        assert all(e["underNAT"] == (pool.nat != "none") for e in spec["endpoints"])


def test_agent_restart_on_active_gateways_loses_no_packet(healthy: LabPlan) -> None:
    plan = healthy
    before = active(plan)
    src, dst = pod(plan, "cloud-2-pod0"), pod(plan, "cone-2-pod0")  # members: both gateways
    pids = {pool: runtime.process_pid(plan.name, before[pool], cluster.AGENT)
            for pool in ("cloud", "edge-cone")}
    # An echo stream that covers both restarts until each new agent is ready, however long
    # that takes here; every echo has GRACE seconds to be answered (icmp_stream_support).
    stream = start_stream(["ip", "netns", "exec", src.netns], dst.ip, rate=50)
    try:
        time.sleep(2)  # traffic flows before the first restart
        faults.agent_restart(plan.name, before["edge-cone"], ready_timeout=120)
        time.sleep(2)
        faults.agent_restart(plan.name, before["cloud"], ready_timeout=120)
        result = stream.stop()
    finally:
        stream.kill()
    sent, received = result["sent"], result["received"]
    assert sent >= 200, result  # 50 per second for at least the 4 s of sleeps
    # a restart slower than the heartbeat timeout would move the gateway: say so if it did
    assert active(plan) == before, recent_events(plan)
    assert received == sent, f"lost {sent - received} of {sent} packets at 50 pps: {result}"
    for pool in ("cloud", "edge-cone"):
        assert runtime.process_pid(plan.name, before[pool], cluster.AGENT) != pids[pool]


def test_invalid_gateway_is_refused_or_surfaced_and_data_plane_untouched(
        healthy: LabPlan) -> None:
    plan = healthy
    before = lab_snapshot(plan)
    bad = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
           "metadata": {"name": "gw-bad-port"},
           "spec": {"endpoints": [{"nodeName": "cloud-2", "type": "tunnel", "port": 70000}]}}
    refused = cluster.kubectl(plan.name, "apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert refused.returncode != 0
    assert "gw-bad-port" in refused.stderr and "port" in refused.stderr
    gone = cluster.kubectl(plan.name, "get", "gateway", "gw-bad-port", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    # Valid alone, wrong in the fleet: cloud-1 already belongs to gw-cloud.
    conflict = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
                "metadata": {"name": "gw-zz-conflict"},
                "spec": {"endpoints": [{"nodeName": "cloud-1", "type": "tunnel", "port": 4500}]}}
    cluster.kubectl(plan.name, "apply", "-f", "-", stdin=json.dumps(conflict))
    try:
        deadline = time.monotonic() + 30
        condition: dict = {}
        while time.monotonic() < deadline:
            obj = kubectl_json(plan, "get", "gateway", "gw-zz-conflict")
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
            condition = conds.get("SpecValid", {})
            if condition.get("status") == "False":
                break
            time.sleep(0.5)
        assert condition.get("status") == "False", condition
        assert "cloud-1" in condition["message"]
        wait_agents_planned_with(plan, "gw-zz-conflict", int(obj["metadata"]["resourceVersion"]))
        assert lab_snapshot(plan) == before
        wait_pairs(plan, timeout=60)  # already answering: a liveness bound, not a speed
    finally:
        cluster.kubectl(plan.name, "delete", "gateway", "gw-zz-conflict", check=False)


def agent_actions(plan: LabPlan, since: float) -> list[str]:
    """What the agents logged doing to the kernel (or deciding about paths) since wall time
    `since`, for a failure message: a lost stream is explained by the change next to it."""
    lines = []
    for _, node in plan.nodes():
        path = runtime.log_path(plan.name, node.name, cluster.AGENT)
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            wanted = ("applied", "path to", "gateway")
            if " INFO " not in line or not any(w in line for w in wanted):
                continue
            try:
                stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            except ValueError:
                continue
            if stamp >= since - 1:
                lines.append(f"{node.name}: {line[11:23]} {line[24:][:200]}")
    return sorted(lines, key=lambda x: x.split(": ", 1)[1])


def test_control_plane_stopped_60s_changes_nothing(healthy: LabPlan) -> None:
    plan = healthy
    before = lab_snapshot(plan)
    pairs = (("cloud-2-pod0", "sym-2-pod0"), ("cone-2-pod0", "sym-2-pod0"),
             ("sym-1-pod0", "cloud-1-pod0"))
    started = time.time()
    streams = [start_stream(["ip", "netns", "exec", pod(plan, a).netns], pod(plan, b).ip)
               for a, b in pairs]
    marks: dict[str, str] = {}
    try:
        time.sleep(2)  # traffic flows before the stop
        faults.control_plane_stop(plan.name)
        marks["stopped"] = time.strftime("%H:%M:%S")
        try:
            time.sleep(60)  # the outage under test: 60 s without API server and controller
            during = lab_snapshot(plan)
        finally:
            marks["start"] = time.strftime("%H:%M:%S")
            faults.control_plane_start(plan.name)
            marks["started"] = time.strftime("%H:%M:%S")
        results = [stream.stop() for stream in streams]
    finally:
        for stream in streams:
            stream.kill()
    for (src, dst), result in zip(pairs, results, strict=True):
        assert result["sent"] >= 3000, result  # 50 per second for the 62 s of sleeps
        assert result["received"] == result["sent"], (
            f"{src} -> {dst} lost {result['sent'] - result['received']} of {result['sent']} "
            f"packets (50 per second from {time.strftime('%H:%M:%S', time.localtime(started))}"
            f", control plane {marks}): {result}\nagents:\n"
            + "\n".join(agent_actions(plan, started)))
    assert during == before
    wait_pairs(plan, timeout=30)


def test_gateway_failover_in_a_pool_with_two_candidates(healthy: LabPlan) -> None:
    plan = healthy
    failed = faults.gateway_fail(plan.name, "edge-cone")
    try:
        standby = cluster.wait_active(plan.name, "edge-cone", timeout=120, exclude=(failed,))
        assert standby != failed
        _, seconds = wait_pairs(plan, timeout=60, skip_nodes=(failed,))
        print(f"failover: pairs answer again {seconds:.1f}s after the new election")
        assert in_devices(plan, standby, "wg", "show", "raven-wg0", "public-key").strip()
    finally:
        faults.node_up(plan.name, failed)
    wait_pairs(plan)


def carrying_cloud_routes(plan: LabPlan, pool: str) -> dict[str, bool]:
    """Candidate of `pool` -> whether it routes the cloud pool's pod subnets into the tunnel
    (table 9028, or main via raven-wg0: raven.route_placement)."""
    cloud_pods = {n.pod_cidr for n in plan.pools[0].nodes}
    return {candidate: {r["dst"] for r in tunnel_routes(plan.name, candidate)} >= cloud_pods
            for candidate in (n.name for n in node_pool(plan, pool).nodes
                              if n.gateway_candidate)}


def settled_gateway(plan: LabPlan, pool: str, timeout: float = 120.0) -> str:
    """The pool's gateway once the controller's status and the one candidate carrying the
    pool's traffic agree (a move the pool made at the lab's start may still be settling)."""
    deadline = time.monotonic() + timeout
    while True:
        named = active(plan).get(pool)
        carriers = carrying_cloud_routes(plan, pool)
        if named and carriers.get(named) and sum(carriers.values()) == 1:
            return named
        assert time.monotonic() < deadline, f"status names {named}, carriers {carriers}"
        time.sleep(0.5)


def test_gateway_rebooted_while_its_pool_is_disconnected(healthy: LabPlan) -> None:
    plan = healthy
    gw = settled_gateway(plan, "edge-cone")
    mac, key, pods = vtep_mac(plan, gw), wg_public_key(plan, gw), pod_addresses(plan)
    node = node_of(plan, gw)
    ifindex = json.loads(in_devices(plan, gw, "ip", "-j", "link", "show", "raven0"))[0][
        "ifindex"]
    faults.disconnect(plan.name, "edge-cone")
    try:
        # The event the reboot must come after: the controller has seen every heartbeat of the
        # pool go stale and says it keeps the gateway anyway (docs/gateway.md).
        wait_ready_reason(plan, node_pool(plan, "edge-cone").gateway, "KeptWithoutHeartbeat")
        faults.node_down(plan.name, gw)
        faults.node_up(plan.name, gw, reboot=True)
        wait_pairs(plan, timeout=60)
        # the reboot really wiped the node: raven0 is a new device
        again = json.loads(in_devices(plan, gw, "ip", "-j", "link", "show", "raven0"))[0]
        assert again["ifindex"] != ifindex
        assert vtep_mac(plan, gw) == mac
        assert wg_public_key(plan, gw) == key
        assert pod_addresses(plan) == pods
        # The controller, cut off from the pool, keeps the status it had...
        assert active(plan)["edge-cone"] == gw
        # ...but the pool itself failed over to its other candidate while gw was off (issue 12,
        # case c), and the rebooted gw came back as a standby: the routes to the cloud's pods
        # are on the other candidate only (never on two carriers at once).
        carriers = carrying_cloud_routes(plan, "edge-cone")
        assert carriers[gw] is False and sorted(carriers.values()) == [False, True], carriers
        assert node.underlay_ip in in_node(plan, gw, "ip", "-4", "addr", "show", "eth0")
    finally:
        faults.reconnect(plan.name, "edge-cone")
    wait_pairs(plan)
