"""kubectl logs / exec / nodes proxy in a lab, from the control-plane namespace (three-pools:
a public cloud pool, an edge pool behind cone NAT with two gateway candidates, one behind
symmetric NAT).

The cloud pool's kubelets are dialled directly by the API server; the NAT'd pools' through
Raven's proxy server on the cloud's active proxy endpoint, found from the Gateway status, also
after the cone pool's active proxy endpoint fails over. Oracles: the lab plan (names,
addresses), the pod's own kernel (`ip -json` run by the test in the pod's namespace) and the
Gateway status.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from overlay_support import overlay_lab

from raven.lab import cluster, faults, kubelets, runtime
from raven.lab import netns as nsutil
from raven.lab.kubelet_api import log_line
from raven.lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("three-pools.yaml", "kc") as plan:
        yield plan


def kubectl(plan: LabPlan, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(plan.name, *args, check=False, timeout=60)


def test_lab_pods_are_pods(lab: LabPlan) -> None:
    items = json.loads(kubectl(lab, "get", "pods", "-o", "json").stdout)["items"]
    got = {p["metadata"]["name"]: (p["spec"]["nodeName"], p["status"]["podIP"],
                                   p["status"]["phase"]) for p in items}
    assert got == {pod.name: (node.name, pod.ip, "Running") for _, node, pod in lab.pods()}


def test_kubectl_logs_of_a_cloud_pod(lab: LabPlan) -> None:
    pod = lab.pools[0].nodes[0].pods[0]
    with kubelets.pod_log(lab.name, pod.name).open("a") as handle:
        handle.write(log_line("hello from the test", 0.0))
    out = kubectl(lab, "logs", pod.name).stdout.splitlines()
    assert out[0] == (f"pod default/{pod.name} started on node {lab.pools[0].nodes[0].name} "
                      f"with IP {pod.ip} (raven lab)")
    assert out[-1] == "hello from the test"


def test_kubectl_exec_runs_in_the_pod(lab: LabPlan) -> None:
    node = lab.pools[0].nodes[1]
    pod = node.pods[0]
    assert kubectl(lab, "exec", pod.name, "--", "hostname").stdout == f"{pod.name}\n"
    shown = json.loads(kubectl(lab, "exec", pod.name, "--", "ip", "-json", "-4", "addr", "show",
                               "eth0").stdout)
    oracle = json.loads(nsutil.run([*nsutil.netns_exec_argv(pod.netns), "ip", "-json", "-4",
                                    "addr", "show", "eth0"]).stdout)
    assert shown == oracle
    assert shown[0]["addr_info"][0]["local"] == pod.ip
    failed = kubectl(lab, "exec", pod.name, "--", "sh", "-c", "echo oops >&2; exit 5")
    assert failed.returncode == 5 and "oops" in failed.stderr


def test_node_proxy_healthz_and_metrics(lab: LabPlan) -> None:
    for node in lab.pools[0].nodes:
        raw = f"/api/v1/nodes/{node.name}/proxy"
        assert kubectl(lab, "get", "--raw", f"{raw}/healthz").stdout == "ok"
        assert "kubelet_running_pods 1.0" in kubectl(lab, "get", "--raw", f"{raw}/metrics").stdout


def test_refusals(lab: LabPlan) -> None:
    cloud = lab.pools[0].nodes[0].name
    wrong_port = kubectl(lab, "get", "--raw", f"/api/v1/nodes/{cloud}:22/proxy/")
    assert "Forbidden" in wrong_port.stderr and "kubelet port 10250" in wrong_port.stderr
    outside = kubectl(lab, "get", "--raw", "/api/v1/nodes/203.0.113.1/proxy/")
    assert "Forbidden" in outside.stderr and "not a node of this cluster" in outside.stderr
    edge = lab.pools[1].nodes[0].name
    nat = kubectl(lab, "get", "--raw", f"/api/v1/nodes/{edge}:22/proxy/")
    assert "Forbidden" in nat.stderr and "kubelet port 10250" in nat.stderr
    assert kubectl(lab, "get", "nodes").returncode == 0


def test_a_powered_off_node_is_503_and_serves_again_after_node_up(lab: LabPlan) -> None:
    node = lab.pools[0].nodes[1].name
    faults.node_down(lab.name, node)
    try:
        down = kubectl(lab, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz")
        assert down.returncode != 0 and "cannot be reached" in down.stderr
        assert not runtime.process_running(lab.name, node, kubelets.KUBELET_API)
    finally:
        faults.node_up(lab.name, node)
    assert kubectl(lab, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz").stdout == "ok"


# --- behind NAT: through Raven's proxy -----------------------------------------------------------

def wait_healthz(plan: LabPlan, node: str, timeout: float = 120.0) -> None:
    """Until nodes/NODE/proxy/healthz answers ok (proxy clients dial out after the overlay is up
    and after a failover); AssertionError with the last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = kubectl(plan, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz")
        if result.stdout == "ok":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{node}: {result.stderr.strip()}")
        time.sleep(1.0)


def proxy_log_tail(plan: LabPlan, nodes: list[str], lines: int = 20) -> str:
    """The proxy's last log lines on `nodes` (their agents' logs), for a failure message."""
    out = []
    for node in nodes:
        path = runtime.log_path(plan.name, node, cluster.AGENT)
        text = path.read_text(errors="replace") if path.exists() else ""
        kept = [line for line in text.splitlines() if "raven.proxy" in line][-lines:]
        out.append(f"--- {node} ({path}):\n" + "\n".join(kept))
    return "\n".join(out)


@pytest.mark.parametrize("pool_index", [1, 2])
def test_nat_pools_through_the_proxy(lab: LabPlan, pool_index: int) -> None:
    pool = lab.pools[pool_index]
    assert not pool.public
    for node in pool.nodes:
        wait_healthz(lab, node.name)
        pod = node.pods[0]
        assert kubectl(lab, "exec", pod.name, "--", "hostname").stdout == f"{pod.name}\n"
        assert f"started on node {node.name}" in kubectl(lab, "logs", pod.name).stdout


def test_large_exec_output_arrives_whole_through_the_proxy(lab: LabPlan) -> None:
    """About 580 KB of stdout (many WebSocket frames, beyond every HTTP/2 flow-control window)
    from a pod of the symmetric-NAT pool: every byte arrives, in order, and the exit code is
    the command's. Oracle: the same command run by the test in the pod's own namespace."""
    node = lab.pools[2].nodes[1]
    wait_healthz(lab, node.name)
    pod = node.pods[0]
    command = "seq 1 100000; echo end >&2"
    oracle = nsutil.run([*nsutil.netns_exec_argv(pod.netns), "sh", "-c", command]).stdout
    assert len(oracle) > 500_000
    result = kubectl(lab, "exec", pod.name, "--", "sh", "-c", command)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(oracle) and result.stdout == oracle
    assert result.stderr == "end\n"


def test_still_reachable_after_the_cone_pools_proxy_endpoint_fails_over(lab: LabPlan) -> None:
    pool = lab.pools[1]
    gateway = json.loads(kubectl(lab, "get", "gateways.raven.openyurt.io", pool.gateway,
                                 "-o", "json").stdout)
    active = [e["nodeName"] for e in gateway["status"]["activeEndpoints"]
              if e.get("type") == "proxy"]
    assert len(active) == 1
    survivor = next(n for n in pool.nodes if n.name != active[0])
    faults.node_down(lab.name, active[0])
    try:
        wait_healthz(lab, survivor.name)
        pod = survivor.pods[0]
        result = kubectl(lab, "exec", pod.name, "--", "hostname")
        server = lab.pools[0].nodes[0].name  # the cloud's proxy server
        assert result.stdout == f"{pod.name}\n", (  # why, when it fails
            f"kubectl: {result.stderr}\n{proxy_log_tail(lab, [server, survivor.name])}")
        refreshed = json.loads(kubectl(lab, "get", "gateways.raven.openyurt.io", pool.gateway,
                                       "-o", "json").stdout)
        assert [e["nodeName"] for e in refreshed["status"]["activeEndpoints"]
                if e.get("type") == "proxy"] == [survivor.name]
    finally:
        faults.node_up(lab.name, active[0])
    wait_healthz(lab, active[0])
