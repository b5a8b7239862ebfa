"""raven.lab.vmguest, the command channel into a lab VM, exercised on this machine (no VM).

The server runs here on loopback, as it runs in a guest on its control NIC; the client is the
same script a lab runs on the host. Oracles: exit codes, bytes through stdout/stderr, and
/proc: the command's process really exists, gets the forwarded signal, and is gone after its
host-side client is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raven.lab import vmguest

SCRIPT = str(Path(vmguest.__file__).resolve())


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-I", "-S", SCRIPT, "serve", address],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and "serving" in proc.stdout.readline()
    yield address
    proc.kill()
    proc.wait()


def call(address: str, *argv: str, stdin: str | None = None, **kw: object
         ) -> subprocess.CompletedProcess[str]:
    extra = ["--stdin"] if stdin is not None else []
    return subprocess.run([sys.executable, "-I", "-S", SCRIPT, "call", address, *extra, "--",
                           *argv], input=stdin, capture_output=True, text=True, timeout=30, **kw)


def test_output_stdin_and_exit_code_pass_through(server: str) -> None:
    proc = call(server, sys.executable, "-c",
                "import sys; d = sys.stdin.read(); print(d.upper()); "
                "print('err', file=sys.stderr); sys.exit(7)", stdin="hello")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "HELLO\n", "err\n")
    assert call(server, "true").returncode == 0
    missing = call(server, "/nonexistent/tool")
    assert missing.returncode == 127 and "cannot run" in missing.stderr


def test_ping_reports_uptime(server: str) -> None:
    proc = subprocess.run([sys.executable, "-I", "-S", SCRIPT, "call", server, "--"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and '"uptime"' in proc.stdout


def test_unreachable_guest_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens there once closed
    proc = call(f"127.0.0.1:{port}", "true")
    assert proc.returncode == 255 and "cannot reach the guest" in proc.stderr


def _child_pid(pidfile: Path) -> int:
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return int(pidfile.read_text())


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


SLEEPER = ("import os, signal, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
           "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); time.sleep(60)")


def test_sigterm_to_the_client_reaches_the_command(server: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    client = subprocess.Popen([sys.executable, "-I", "-S", SCRIPT, "call", server, "--",
                               sys.executable, "-c", SLEEPER, str(pidfile)])
    pid = _child_pid(pidfile)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=20) == 42  # the command's own exit code, after its handler ran
    assert _gone(pid)


def test_a_killed_client_takes_its_command_along(server: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    client = subprocess.Popen([sys.executable, "-I", "-S", SCRIPT, "call", server, "--",
                               sys.executable, "-c", SLEEPER, str(pidfile)])
    pid = _child_pid(pidfile)
    os.kill(client.pid, signal.SIGKILL)
    client.wait()
    assert _gone(pid), "the guest command outlived its host-side client"
