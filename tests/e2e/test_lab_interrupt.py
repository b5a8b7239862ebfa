"""`raven lab up` either finishes or leaves nothing: closed output pipe, SIGINT, SIGTERM, SIGHUP.

Each test runs the CLI as an operator would (a subprocess), interrupts it at a known point (a
progress line it printed: an event, not a sleep), and checks with the same independent oracles
as `lab down` (ip netns, /proc, mountinfo, the run directory) that nothing of the lab is left.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from overlay_support import TOPOLOGIES, assert_no_trace, lab_processes

from raven.lab import runtime, teardown

pytestmark = pytest.mark.root

UP = [sys.executable, "-m", "raven.cli", "lab", "up"]


def unique_lab_name() -> str:
    return f"rvt-int-{secrets.token_hex(3)}"


def big_topology(path: Path) -> Path:
    """Big enough (about 70 namespaces) that the build has seconds left after its 2nd line."""
    pools = [{"name": f"p{i}", "nat": ("none", "cone")[i % 2], "pods": 2,
              "nodes": [{"name": f"p{i}-n{j}", "podCIDR": f"10.{100 + i}.{j}.0/24",
                         "gatewayCandidate": j == 0} for j in range(5)]} for i in range(4)]
    path.write_text(yaml.safe_dump({"name": "big", "pools": pools}))
    return path


class Lines:
    """The lines a process writes to a pipe, readable with a timeout (a reader thread)."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"exited before printing {needle!r}: {''.join(self.seen)}")
            self.seen.append(line)
            if needle in line:
                return

    def rest(self, timeout: float = 120) -> str:
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_during_network_build_leaves_nothing(sig: signal.Signals) -> None:
    lab = unique_lab_name()
    proc = subprocess.Popen([*UP, str(TOPOLOGIES / "three-pools.yaml"), "--name", lab,
                             "--network-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        err = Lines(proc.stderr)
        err.wait_for("[lab] pool routers")  # namespaces exist, holders started
        seen = lab_processes(lab)
        assert seen, "the holders should run when the routers are being built"
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig
        text = err.rest()
        assert f"interrupted by {sig.name}" in text and "Traceback" not in text, text
        assert proc.stdout.read() == ""  # no lab name: it was not made
        assert_no_trace(lab, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown.down(lab)


def test_sigterm_while_the_overlay_starts_leaves_nothing() -> None:
    lab = unique_lab_name()
    proc = subprocess.Popen([*UP, str(TOPOLOGIES / "single-pool.yaml"), "--name", lab],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        err = Lines(proc.stderr)
        err.wait_for("[lab] gateway controller")  # API server and kubelet stand-in run
        assert runtime.process_running(lab, "control-plane", "apiserver")
        seen = lab_processes(lab)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        assert "Traceback" not in err.rest()
        assert_no_trace(lab, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown.down(lab)


def test_sigterm_during_the_demo_leaves_nothing() -> None:
    lab = unique_lab_name()
    proc = subprocess.Popen([sys.executable, "-m", "raven.cli", "lab", "demo", "--network-only",
                             "--topology", "single-pool", "--name", lab],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = Lines(proc.stdout)
        out.wait_for("pool routers")
        seen = lab_processes(lab)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        assert "Traceback" not in proc.stderr.read()
        assert_no_trace(lab, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown.down(lab)


def test_pipe_to_head_leaves_nothing(tmp_path: Path) -> None:
    """The operator's `raven lab up ... 2>&1 | head -2`: head exits after two progress lines."""
    lab = unique_lab_name()
    topology = big_topology(tmp_path / "big.yaml")
    argv = " ".join([*UP, str(topology), "--name", lab, "--network-only"])
    try:
        shell = subprocess.run(["bash", "-c", f"{argv} 2>&1 | head -2; "
                                "exit ${PIPESTATUS[0]}"], capture_output=True, text=True,
                               timeout=300)
        assert shell.returncode == 141, shell  # 128 + SIGPIPE, after the teardown
        assert len(shell.stdout.splitlines()) == 2 and shell.stderr == ""
        assert_no_trace(lab, {})
    finally:
        teardown.down(lab)


@pytest.mark.parametrize("closed", ["stderr", "stdout"])
def test_output_closed_from_the_start_leaves_nothing(closed: str) -> None:
    """A reader that is gone before anything is written: the first progress line (stderr) or
    the lab's name at the very end (stdout) fails, and `up` removes the lab."""
    lab = unique_lab_name()
    read_end, write_end = os.pipe()
    os.close(read_end)
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, closed: write_end}
    try:
        proc = subprocess.run([*UP, str(TOPOLOGIES / "single-pool.yaml"), "--name", lab,
                               "--network-only"], timeout=300, **pipes)
        assert proc.returncode == 141
        assert_no_trace(lab, {})
    finally:
        os.close(write_end)
        teardown.down(lab)


def test_existing_lab_is_never_removed_by_a_failed_up(lab_factory) -> None:
    plan = lab_factory("single-pool.yaml")
    again = subprocess.run([*UP, str(TOPOLOGIES / "single-pool.yaml"), "--name", plan.name,
                            "--network-only"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert runtime.read_state(plan.name)["phase"] == "ready"
    assert lab_processes(plan.name)
