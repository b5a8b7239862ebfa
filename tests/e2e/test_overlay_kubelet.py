"""The lab's kubelet stand-in against the embedded API server, read back with the official client.

A bare single-pool lab (no overlay) gives the stand-in real hosts to watch; the API server runs
as a subprocess on loopback. With a 2 s grace: nodes register with addresses, podCIDR and the
pool label; a node powered off (fault marker) or cut off (its pool disconnected) turns Ready
Unknown after the grace and Ready True again when it is back; labels and annotations set by
others (the agents' keys) survive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_support import ApiServerProcess, apiserver  # noqa: F401  (fixture)
from overlay_support import TOPOLOGIES, unique_lab_name

from raven.kube.client import Kube, KubeSettings
from raven.lab import build, teardown
from raven.lab.kubelet import Kubelet, disconnected_marker, down_marker
from raven.lab.plan import LabPlan
from raven.lab.topology import load_topology

pytestmark = [pytest.mark.root]


@pytest.fixture
def bare_lab() -> Iterator[LabPlan]:
    lab = unique_lab_name("kl")
    try:
        yield build.up(load_topology(TOPOLOGIES / "single-pool.yaml"), lab)
    finally:
        teardown.down(lab)


def ready_of(core: object, name: str) -> str:
    node = core.read_node(name)  # type: ignore[attr-defined]
    return next(c.status for c in node.status.conditions if c.type == "Ready")


def wait_ready(core: object, name: str, want: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ready_of(core, name) == want:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"node {name}: Ready never became {want}")


def test_kubelet_stand_in_registers_and_tracks_readiness(
        bare_lab: LabPlan, apiserver: ApiServerProcess, tmp_path: Path) -> None:  # noqa: F811
    from kubernetes import client

    plan = bare_lab
    kube = Kube(KubeSettings(kubeconfig=apiserver.kubeconfig))
    kubelet = Kubelet(plan.name, plan, kube, grace=2.0)
    stop = threading.Event()
    thread = threading.Thread(target=kubelet.run, args=(stop, 0.1), daemon=True)
    thread.start()
    core = client.CoreV1Api(apiserver.api_client())
    try:
        pool = plan.pools[0]
        first, second = pool.nodes[0], pool.nodes[1]
        for node in pool.nodes:
            wait_ready(core, node.name, "True")
            obj = core.read_node(node.name)
            assert obj.metadata.labels["raven.openyurt.io/gateway"] == pool.gateway
            assert obj.spec.pod_cidr == node.pod_cidr
            assert [(a.type, a.address) for a in obj.status.addresses if a.type == "InternalIP"] \
                == [("InternalIP", node.underlay_ip)]
        core.patch_node(first.name, {"metadata": {"annotations": {"example/key": "kept"}}})

        down_marker(plan.name, first.name).parent.mkdir(parents=True, exist_ok=True)
        down_marker(plan.name, first.name).touch()
        took = wait_ready(core, first.name, "Unknown")
        assert took >= 1.0  # not before the grace (2 s, minus the polling slack)
        assert ready_of(core, second.name) == "True"
        down_marker(plan.name, first.name).unlink()
        wait_ready(core, first.name, "True")
        assert core.read_node(first.name).metadata.annotations["example/key"] == "kept"

        disconnected_marker(plan.name, pool.name).parent.mkdir(parents=True, exist_ok=True)
        disconnected_marker(plan.name, pool.name).touch()
        for node in pool.nodes:
            wait_ready(core, node.name, "Unknown")
        disconnected_marker(plan.name, pool.name).unlink()
        for node in pool.nodes:
            wait_ready(core, node.name, "True")
        reason = next(c.reason for c in core.read_node(first.name).status.conditions
                      if c.type == "Ready")
        assert reason == "KubeletReady"
    finally:
        stop.set()
        thread.join(timeout=10)
        kube.close()
