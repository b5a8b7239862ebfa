"""`raven graph` and `raven controller` as an operator runs them, against the embedded API server:
the DOT drawn from real Gateways, a clear message instead of a traceback on bad input, and the
controller's /healthz, /readyz and /metrics."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kube_support import free_port, raven_cmd, wait_for

from raven.apiserver.server import RunningApiServer
from raven.kube.client import GATEWAYS, NODES, Kube, KubeSettings
from raven.kube.lease import Heartbeat


def gateway(name: str, node: str, ip: str, cidr: str, nat: bool) -> dict:
    endpoint = {"nodeName": node, "type": "tunnel", "port": 4500, "underNAT": nat,
                "config": {"public-key": (name[-1] * 43) + "="}}
    if not nat:
        endpoint["publicIP"] = ip
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": name},
            "spec": {"endpoints": [{k: v for k, v in endpoint.items() if k != "config"}]},
            "status": {"nodes": [{"nodeName": node, "privateIP": ip, "subnets": [cidr]}],
                       "activeEndpoints": [endpoint]}}


def test_graph_draws_pools_tunnels_and_relays(server: RunningApiServer) -> None:
    kube = Kube(KubeSettings(kubeconfig=server.kubeconfig))
    for obj in (gateway("gw-a", "a1", "192.0.2.1", "10.244.0.0/24", nat=False),
                gateway("gw-b", "b1", "198.51.100.1", "10.244.1.0/24", nat=True),
                gateway("gw-c", "c1", "203.0.113.1", "10.244.2.0/24", nat=True)):
        status = obj.pop("status")
        created = kube.create(GATEWAYS, obj)
        created["status"] = status
        kube.replace_status(GATEWAYS, created)
    result = subprocess.run(raven_cmd("graph", "--kubeconfig", str(server.kubeconfig)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    dot = result.stdout
    assert dot.startswith("digraph raven {") and dot.rstrip().endswith("}")
    for pool in ("gw-a", "gw-b", "gw-c"):
        assert f'subgraph "cluster_{pool}"' in dot
    assert re.search(r'"gw-a/a1" -> "gw-b/b1" \[dir=both, color=blue', dot)
    assert re.search(r'"gw-a/a1" -> "gw-c/c1" \[dir=both, color=blue', dot)
    # b and c are both behind NAT: they meet through the public pool a.
    assert re.search(r'"gw-b/b1" -> "gw-c/c1" \[.*label="relayed via gw-a"', dot)
    kube.close()


def test_graph_svg_without_graphviz_is_a_clear_error(server: RunningApiServer,
                                                     tmp_path: Path) -> None:
    # An empty PATH hides Graphviz whether or not this machine has it (python is absolute).
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(raven_cmd("graph", "--kubeconfig", str(server.kubeconfig), "-o",
                                      str(tmp_path / "g.svg")), capture_output=True, text=True,
                            env={**os.environ, "PATH": str(empty)})
    assert result.returncode == 1
    assert "Graphviz `dot`" in result.stderr and "Traceback" not in result.stderr


def test_graph_with_missing_kubeconfig_names_the_fix(tmp_path: Path) -> None:
    result = subprocess.run(raven_cmd("graph", "--kubeconfig", str(tmp_path / "none")),
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "--kubeconfig" in result.stderr and "Traceback" not in result.stderr


def test_controller_serves_health_and_metrics(server: RunningApiServer) -> None:
    kube = Kube(KubeSettings(kubeconfig=server.kubeconfig))
    kube.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "a1", "labels": {"raven.openyurt.io/gateway": "gw-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}})
    Heartbeat(kube, "a1").renew(time.time() + 600)
    obj = gateway("gw-a", "a1", "192.0.2.1", "10.244.0.0/24", nat=False)
    obj.pop("status")
    kube.create(GATEWAYS, obj)
    port = free_port()
    proc = subprocess.Popen(raven_cmd("controller", "--kubeconfig", str(server.kubeconfig),
                                      "--metrics-listen", f"127.0.0.1:{port}", "--resync", "0.5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def fetch(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.read().decode()

        wait_for(lambda: fetch("/readyz"), what="/readyz")
        assert fetch("/healthz").strip()
        metrics = wait_for(lambda: (m := fetch("/metrics")) and
                           "raven_controller_status_writes_total 1.0" in m and m,
                           what="a status write in the metrics")
        assert "raven_controller_leader 1.0" in metrics
        assert "raven_controller_reconcile_duration_seconds_count" in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        kube.close()


def test_graph_renders_svg_when_graphviz_is_installed(server: RunningApiServer,
                                                      tmp_path: Path) -> None:
    if not shutil.which("dot"):
        pytest.skip("Graphviz `dot` is not installed on this machine (apt-get install graphviz)")
    kube = Kube(KubeSettings(kubeconfig=server.kubeconfig))
    obj = gateway("gw-a", "a1", "192.0.2.1", "10.244.0.0/24", nat=False)
    obj.pop("status")
    kube.create(GATEWAYS, obj)
    kube.close()
    out = tmp_path / "g.svg"
    result = subprocess.run(raven_cmd("graph", "--kubeconfig", str(server.kubeconfig), "-o",
                                      str(out)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    svg = html.unescape(out.read_text())  # Graphviz writes '-' as &#45;
    assert "<svg" in svg and "pool gw-a" in svg
