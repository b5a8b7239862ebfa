"""The proxy on a lab (three-pools: cloud, cone-NAT edge, symmetric-NAT edge): the agents run a
proxy server on cloud-1 and proxy clients on the NAT'd pools' gateways, which dial out through
their NATs; from the control plane, a CONNECT through the cloud's proxy server reaches an
HTTPS echo server on a non-gateway node of each NAT'd pool; other ports and addresses are
refused; after the proxy server's agent restarts, the clients reconnect.
Oracle: HTTPS answers from the echo servers (they name their node), the proxy's status codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from overlay_support import overlay_lab

from raven.lab import cluster, kubelets, runtime
from raven.lab.plan import LabPlan
from raven.lab.topology import CONTROL_PLANE

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROBE = Path(__file__).with_name("proxy_probe.py")
ECHO_PORT = 10250  # where the kubelet listens; the lab has no kubelet, the echo server stands in


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("three-pools.yaml", area="px") as plan:
        for _, node in plan.nodes():
            if node.name in ("cone-2", "sym-2", "cloud-2"):
                # The echo server answers on the kubelet's port instead of the lab's kubelet API.
                runtime.stop_process(plan.name, node.name, kubelets.KUBELET_API)
                runtime.start_process(plan.name, node.name, "echo", [
                    sys.executable, "-m", "raven.lab.echo", "--listen",
                    f"{node.underlay_ip}:{ECHO_PORT}"])
        yield plan


def ip_of(plan: LabPlan, node: str) -> str:
    return next(n.underlay_ip for _, n in plan.nodes() if n.name == node)


def probe(plan: LabPlan, *targets: str) -> list[dict]:
    crt, key = cluster.proxy_ca_paths(plan.name)
    proc = subprocess.run([*runtime.exec_argv(plan.name, CONTROL_PLANE), sys.executable,
                           str(PROBE), str(cluster.kubeconfig_path(plan.name)), str(crt),
                           str(key), *targets], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def wait_reachable(plan: LabPlan, targets: list[str], timeout: float = 90.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        results = probe(plan, *targets)
        if all(r.get("status") == 200 for r in results):
            return results
        if time.monotonic() > deadline:
            raise AssertionError(f"not reachable through the proxy: {results}")
        time.sleep(1.0)


def test_connect_through_nat_reaches_kubelet_ports_only(lab: LabPlan) -> None:
    cone, sym = ip_of(lab, "cone-2"), ip_of(lab, "sym-2")
    results = wait_reachable(lab, [f"{cone}:{ECHO_PORT}", f"{sym}:{ECHO_PORT}"])
    assert [r["body"].strip() for r in results] == ["ok cone-2", "ok sym-2"]
    cloud_1 = ip_of(lab, "cloud-1")
    assert {r["via"] for r in results} == {f"{cloud_1}:10263"}
    refused = probe(lab, f"{cone}:22", f"{sym}:10251", f"{ip_of(lab, 'cloud-2')}:{ECHO_PORT}",
                    f"203.0.113.1:{ECHO_PORT}")
    # Non-kubelet ports are refused by the server; nodes of the public pool and addresses
    # outside the cluster get no proxy at all (proxy_for says: dial directly).
    assert [r.get("status") for r in refused[:2]] == [403, 403]
    assert [r["via"] for r in refused[2:]] == [None, None]
    log = runtime.log_path(lab.name, "cloud-1", cluster.AGENT).read_text()
    assert "403 for kube-apiserver@" in log and f"-> {cone}:22" in log


def test_clients_reconnect_after_the_proxy_server_restarts(lab: LabPlan) -> None:
    cone = ip_of(lab, "cone-2")
    wait_reachable(lab, [f"{cone}:{ECHO_PORT}"])
    cluster.stop_agent(lab.name, "cloud-1")
    cluster.start_agent(lab.name, "cloud-1")
    results = wait_reachable(lab, [f"{cone}:{ECHO_PORT}", f"{ip_of(lab, 'sym-2')}:{ECHO_PORT}"])
    assert [r["body"].strip() for r in results] == ["ok cone-2", "ok sym-2"]
