"""Start the lab's kubelet API stand-in (raven.lab.kubelet_api) as a real process for tests.

    kubelet = start_kubelet_process(apiserver.data_dir, tmp_path, "n1", [pod("web-0", tmp_path)])
    kubelet.port, kubelet.node_object(), kubelet.stop()

Its serving certificate is issued from the API server's cluster CA for 127.0.0.1, and it
requires client certificates from that CA (the API server's kubelet client certificate).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiserver_support import stop_process

from raven.apiserver import security

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"listening on https://(?P<host>\S+):(?P<port>\d+)$")


def pod_entry(name: str, folder: Path, container: str = "main", namespace: str = "default",
              ip: str = "10.0.0.5") -> dict[str, Any]:
    return {"namespace": namespace, "name": name, "container": container, "lab": None,
            "log": str(folder / f"{name}.log"), "ip": ip}


@dataclass
class KubeletProcess:
    process: subprocess.Popen[str]
    node: str
    host: str
    port: int
    log_path: Path

    def node_object(self, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return node_object(self.node, self.host, self.port, labels)

    def stop(self) -> int:
        return stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def node_object(name: str, address: str, port: int,
                labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}},
            "status": {"addresses": [{"type": "InternalIP", "address": address}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}


def pod_object(name: str, node: str, container: str = "main",
               namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": container, "image": "lab"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5"}}


def start_kubelet_process(ca_dir: Path, folder: Path, node: str, pods: list[dict[str, Any]],
                          host: str = "127.0.0.1", timeout: float = 30.0) -> KubeletProcess:
    """A kubelet stand-in on HOST:0 serving `pods`; returns once it printed its port."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{node}.kubelet.crt", folder / f"{node}.kubelet.key"
    security.issue_certificate(ca_dir, cert, key, f"kubelet-{node}", [host])
    pods_file = folder / f"{node}.pods.json"
    pods_file.write_text(json.dumps({"node": node, "pods": pods}))
    log_path = folder / f"{node}.kubelet.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "raven.lab.kubelet_api", "--listen", f"{host}:0",
             "--cert", str(cert), "--key", str(key), "--client-ca",
             str(ca_dir / security.CA_CERT), "--pods", str(pods_file)],
            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE, stderr=log_file, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0.01)):
                continue
            line = process.stdout.readline()
            if not line:
                break
            match = READY.search(line.strip())
            if match:
                return KubeletProcess(process, node, host, int(match["port"]), log_path)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"the kubelet stand-in did not start; log:\n{log_path.read_text()}")
