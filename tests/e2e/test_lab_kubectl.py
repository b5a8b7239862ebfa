"""kubectl logs / exec / nodes proxy in a lab, from the control-plane namespace (two-pools:
a public cloud pool and an edge pool behind cone NAT; no egress proxy yet).

The cloud pool's kubelets are dialled directly by the API server; the NAT'd pool's are not
reachable without a proxy and get a clear 503. Oracles: the lab plan (names, addresses) and the
pod's own kernel (`ip -json` run by the test in the pod's namespace).
"""

from __future__ import annotations

import json
import subprocess
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
    with overlay_lab("two-pools.yaml", "kc") as plan:
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
    # Behind NAT with no egress proxy: the control plane has no way in.
    edge = lab.pools[1].nodes[0].name
    nat = kubectl(lab, "get", "--raw", f"/api/v1/nodes/{edge}/proxy/healthz")
    assert nat.returncode != 0 and "cannot be reached" in nat.stderr
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
