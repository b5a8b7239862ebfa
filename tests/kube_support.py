"""Test support for Kubernetes-facing tests: the embedded API server in-process or as a process.

Used by tests/integration/test_kube*.py, test_controller*.py, test_manifests.py and
tests/e2e/test_agent*.py. A subprocess server is needed wherever a test restarts or kills the
API server (an in-process server keeps serving already-open keep-alive connections).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], object], timeout: float = 60.0, interval: float = 0.05,
             what: str = "condition") -> object:
    """Poll `check` until it returns a truthy value; raise AssertionError naming `what`.

    `timeout` is a liveness bound, not a speed requirement: it only decides how long a broken
    run takes to report. The default is generous for a loaded 2-core CI machine that also runs
    VM guests under software emulation."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the thing polled may not exist yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ApiServerProcess:
    """`raven apiserver` as a child process on a fixed port, restartable with the same data."""

    def __init__(self, data_dir: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"apiserver-{self.port}.log"

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "admin.kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ApiServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "raven.cli", "apiserver", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}", *self.extra_args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"apiserver exited: {self.log.read_text()[-2000:]}")
            if not self.kubeconfig.exists():
                return False
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(ready, what=f"apiserver on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def apiserver_process(data_dir: Path, extra_args: tuple[str, ...] = ()) -> Iterator[
        ApiServerProcess]:
    server = ApiServerProcess(data_dir, extra_args=extra_args)
    try:
        yield server.start()
    finally:
        server.stop()


def kubectl(kubeconfig: Path, *args: str, check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl against our server: the independent client and oracle."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    result = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                            input=stdin, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def raven_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "raven.cli", *args]
