"""The lab's pods as Kubernetes Pods, and a kubelet API (raven.lab.kubelet_api) on every node.

`start(lab)` is called by raven.lab.cluster once the API server runs (it owns the cluster CA):
- per pod: a sandbox process (Kubernetes' pause container: the pod's network and UTS namespaces,
  hostname = the pod's name), supervised as `sandbox` in the pod's target;
- per node: a serving certificate from the cluster CA for the node's underlay address, the
  node's pods file, and the supervised process `kubelet-api` in the node's namespaces on
  <underlay IP>:10250 (client certificates from the cluster CA required);
- every lab pod as a Pod in namespace `default`, named as in `raven lab status`, with
  spec.nodeName, one container `app`, status.podIP(s), hostIP and phase Running;
- each pod's log is <run dir>/pods/<pod>/app.log (a start line from its kubelet; anything a test
  or demo appends with `kubelet_api.log_line` shows in `kubectl logs`).
Rules kept:
- everything lives under the lab's run directory and runs under the lab supervisor, so
  `raven lab down` stops and removes it; a node that is powered off loses its kubelet API with
  its other processes and `node_up` starts it again (`ensure_running`);
- Pods are applied with kubectl in the control-plane namespace (never the root namespace).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from raven.apiserver import security
from raven.errors import CommandError
from raven.lab import cluster, runtime
from raven.lab import netns as nsutil
from raven.lab.kubelet_api import SANDBOX
from raven.lab.plan import LabPlan, NodePlan, PodPlan, PoolPlan

KUBELET_API = "kubelet-api"  # supervisor name, on every node
KUBELET_PORT = 10250
NAMESPACE = "default"
CONTAINER = "app"
IMAGE = "raven-lab/netns-pod"


def kubelet_dir(lab: str, node: str) -> Path:
    return runtime.run_dir(lab) / "kubelet" / node


def pod_log(lab: str, pod: str) -> Path:
    return runtime.run_dir(lab) / "pods" / pod / f"{CONTAINER}.log"


def _pods_document(lab: str, node: NodePlan) -> dict[str, Any]:
    return {"node": node.name, "pods": [
        {"namespace": NAMESPACE, "name": pod.name, "container": CONTAINER, "lab": lab,
         "log": str(pod_log(lab, pod.name)), "ip": pod.ip} for pod in node.pods]}


def pod_object(pool: PoolPlan, node: NodePlan, pod: PodPlan, started: str) -> dict[str, Any]:
    """The Pod a kubelet would report for a lab pod (always Running: a netns has no lifecycle)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": "raven-lab",
                                "raven.openyurt.io/lab-pool": pool.name}},
        "spec": {"nodeName": node.name,
                 "containers": [{"name": CONTAINER, "image": IMAGE}]},
        "status": {
            "phase": "Running", "hostIP": node.underlay_ip, "podIP": pod.ip,
            "podIPs": [{"ip": ip} for ip in pod.addresses()], "startTime": started,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": CONTAINER, "image": IMAGE, "imageID": "",
                                   "ready": True, "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": started}}}],
        },
    }


def pod_objects(plan: LabPlan, started: str) -> list[dict[str, Any]]:
    return [pod_object(pool, node, pod, started)
            for pool, node in plan.nodes() for pod in node.pods]


def start_node(lab: str, pool: PoolPlan, node: NodePlan) -> int:
    """Certificate, pods file and the kubelet API process of one node; returns its pid."""
    folder = kubelet_dir(lab, node.name)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_dir = cluster.apiserver_dir(lab)
    cert, key = folder / "kubelet.crt", folder / "kubelet.key"
    if not cert.exists() or not key.exists():
        security.issue_certificate(ca_dir, cert, key, f"system:node:{node.name}",
                                   [*node.underlay_ips(), node.name])
    pods = folder / "pods.json"
    runtime.write_json_atomic(pods, _pods_document(lab, node))
    ready_file(lab, node.name).unlink(missing_ok=True)
    listen = [arg for ip in node.underlay_ips()
              for arg in ("--listen", f"[{ip}]:{KUBELET_PORT}" if ":" in ip
                          else f"{ip}:{KUBELET_PORT}")]
    return runtime.start_process(lab, node.name, KUBELET_API, [
        sys.executable, "-m", "raven.lab.kubelet_api",
        *listen, "--cert", str(cert), "--key", str(key),
        "--client-ca", str(ca_dir / security.CA_CERT), "--pods", str(pods),
        "--ready-file", str(ready_file(lab, node.name))])


def ready_file(lab: str, node: str) -> Path:
    return kubelet_dir(lab, node) / "ready"


def wait_ready(lab: str, nodes: list[str], timeout: float = 30.0) -> None:
    """Until every listed node's kubelet API listens; CommandError with its log otherwise."""
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            if ready_file(lab, node).exists():
                waiting.remove(node)
            elif not runtime.process_running(lab, node, KUBELET_API) or \
                    time.monotonic() > deadline:
                tail = runtime.log_path(lab, node, KUBELET_API).read_text(
                    errors="replace").splitlines()[-5:]
                raise CommandError(f"lab {lab!r}: the kubelet API of {node!r} is not listening: "
                                   + " | ".join(tail))
        if waiting:
            time.sleep(0.05)


def ensure_running(lab: str, node_name: str) -> None:
    """Start the node's kubelet API if the lab runs the overlay and it is not running."""
    if not cluster.has_overlay(lab) or runtime.process_running(lab, node_name, KUBELET_API):
        return
    plan = runtime.load_plan(lab)
    for pool, node in plan.nodes():
        if node.name == node_name:
            start_node(lab, pool, node)
            wait_ready(lab, [node_name])


def start_sandboxes(lab: str, plan: LabPlan) -> None:
    """Every pod's sandbox (raven.lab.netns.pod_sandbox_argv), started from here: the pods'
    network namespaces are reachable by name only outside the nodes' mount namespaces."""
    for _, node in plan.nodes():
        for pod in node.pods:
            if not runtime.process_running(lab, pod.name, SANDBOX):
                runtime.start_process(lab, pod.name, SANDBOX, nsutil.pod_sandbox_argv(pod.name))


def start(lab: str, started: str) -> None:
    """Pod sandboxes and kubelet APIs on every node, then the Pods (`started`: their RFC 3339
    start time)."""
    plan = runtime.load_plan(lab)
    start_sandboxes(lab, plan)
    for pool, node in plan.nodes():
        if not runtime.process_running(lab, node.name, KUBELET_API):
            start_node(lab, pool, node)
    wait_ready(lab, [node.name for _, node in plan.nodes()])
    cluster.kubectl(lab, "apply", "-f", "-",
                    stdin="\n".join(json.dumps(p) for p in pod_objects(plan, started)))
