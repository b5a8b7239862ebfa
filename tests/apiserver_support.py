"""Start the embedded API server in a subprocess for tests; reusable by every test package.

Usage in a test module (tests/ is on sys.path through tests/conftest.py):

    from apiserver_support import apiserver, ApiServerProcess  # noqa: F401  (pytest fixture)

    def test_something(apiserver: ApiServerProcess) -> None:
        client = apiserver.api_client()          # kubernetes.client.ApiClient
        subprocess.run(["kubectl", "--kubeconfig", str(apiserver.kubeconfig), "get", "nodes"])

`apiserver` is function-scoped (a fresh server and data directory per test);
`apiserver_module` is module-scoped for suites that share one server (use unique names).
The server is stopped with SIGTERM (then SIGKILL) also when the test fails.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raven.apiserver.server import RunningApiServer

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^listening on (?P<url>\S+) kubeconfig (?P<kubeconfig>\S+)$")


@dataclass
class ApiServerProcess:
    """A running `raven apiserver` subprocess."""

    process: subprocess.Popen[str]
    data_dir: Path
    url: str
    kubeconfig: Path
    log_path: Path
    args: tuple[str, ...] = field(default=())

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient configured from the kubeconfig (official client)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def stop(self) -> int:
        return stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def start_apiserver_process(
    data_dir: Path, *extra_args: str, listen: str = "127.0.0.1:0", timeout: float = 30.0
) -> ApiServerProcess:
    """Start `raven apiserver` and wait for its `listening on` line (port 0 -> real port)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.apiserver.log"
    args = ("apiserver", "--data-dir", str(data_dir), "--listen", listen, *extra_args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "raven.cli", *args], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=log_file, text=True,
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0.01)):
                continue
            line = process.stdout.readline()
            if not line:
                break
            match = READY.match(line.strip())
            if match:
                return ApiServerProcess(
                    process, data_dir, match["url"], Path(match["kubeconfig"]), log_path, args
                )
    finally:
        selector.close()
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(
        f"raven apiserver did not report its address within {timeout} s; log:\n"
        f"{log_path.read_text() if log_path.exists() else ''}"
    )


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[ApiServerProcess]:
    """A fresh API server subprocess (TLS, port 0) with its own data directory."""
    server = start_apiserver_process(tmp_path / "apiserver")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def apiserver_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServerProcess]:
    """One API server subprocess shared by a test module (tests must use unique names)."""
    server = start_apiserver_process(tmp_path_factory.mktemp("apiserver") / "data")
    try:
        yield server
    finally:
        server.stop()


class Http:
    """One keep-alive HTTPS connection to an in-process server, JSON in and out (bytes are sent
    as they are), for requests the kubernetes client would refuse to send."""

    def __init__(self, server: RunningApiServer) -> None:
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        self.conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context,
                                                timeout=30)
        self.token = server.token

    def __call__(self, method: str, path: str, body: Any = None,
                 content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        self.conn.request(method, path, payload, {"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": content_type})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}

    def close(self) -> None:
        self.conn.close()


def stop_process(process: subprocess.Popen[str]) -> int:
    """SIGTERM, wait up to 10 s, then SIGKILL; closes its stdout; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode
