"""`raven lab down` leaves no namespace, process, link, mount or file, also after a killed `up`.

Oracles: `ip netns list`, /proc (pids with their start times), /proc/self/mountinfo, the run
directory and the root namespace's netns ids. Labs are built by the CLI in a subprocess, like
an operator would.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kube_support import wait_for
from overlay_support import assert_no_trace, lab_processes, raven

from raven.lab import netns as nsutil
from raven.lab import runtime, teardown

pytestmark = pytest.mark.root

TOPOLOGIES = Path(__file__).resolve().parents[2] / "test-topologies"


def unique_lab_name() -> str:
    return f"rvt-lab-{secrets.token_hex(3)}"


def test_down_removes_everything() -> None:
    lab = unique_lab_name()
    try:
        up = raven("lab", "up", str(TOPOLOGIES / "single-pool.yaml"), "--name", lab,
                   "--network-only")
        assert up.returncode == 0, up.stderr
        assert "ready" in up.stderr
        plan = runtime.load_plan(lab)
        node, pod = plan.nodes()[0][1], plan.pods()[0][2]
        pids = [runtime.start_process(lab, node.name, "sleeper", ["sleep", "600"]),
                runtime.start_process(lab, pod.name, "sleeper", ["sleep", "600"])]
        for pid in pids:  # wait until nsenter / ip netns exec have exec'd into the namespace
            wait_for(lambda p=pid: Path(f"/proc/{p}/comm").read_text().strip() == "sleep",
                     what=f"pid {pid} exec'd into sleep")
        processes = lab_processes(lab)
        assert set(pids) <= set(processes)
        # holders of both nodes and the control plane, plus the two sleepers
        assert len(processes) >= len(plan.hosts()) + 2
        assert len(teardown.lab_namespaces(lab)) == len(plan.netns_names())
        down = raven("lab", "down", lab)
        assert down.returncode == 0, down.stderr
        assert_no_trace(lab, processes)
        again = raven("lab", "down", lab)  # idempotent
        assert again.returncode == 0, again.stderr
    finally:
        teardown.down(lab)


def big_topology(path: Path) -> Path:
    """A lab large enough (about 150 namespaces) that a kill lands in the middle of `up`."""
    pools = []
    for i in range(8):
        pools.append({
            "name": f"p{i}", "nat": ("none", "cone", "symmetric")[i % 3], "pods": 2,
            "nodes": [{"name": f"p{i}-n{j}", "podCIDR": f"10.{100 + i}.{j}.0/24",
                       "gatewayCandidate": j == 0} for j in range(6)],
        })
    path.write_text(yaml.safe_dump({"name": "big", "pools": pools}))
    return path


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every descendant of `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in out:
                start = runtime.proc_start_time(child)
                if start is not None:
                    out[child] = start
                    todo.append(child)
    return out


def wait_settled(processes: dict[int, int], timeout: float = 120.0) -> None:
    """Until each of `processes` has exited or is a holder's `sleep`."""
    def busy() -> list[int]:
        left = []
        for pid, start in processes.items():
            if runtime.proc_start_time(pid) != start:
                continue  # exited (or the pid was reused)
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                    continue
            except OSError:
                continue
            left.append(pid)
        return left

    deadline = time.monotonic() + timeout
    while (left := busy()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"children of the killed `lab up` still busy: {left}"


@pytest.mark.parametrize("kill_when", ["namespaces", "holders"])
def test_down_after_a_killed_up(tmp_path: Path, kill_when: str) -> None:
    lab = unique_lab_name()
    topology = big_topology(tmp_path / "big.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "raven.cli", "lab", "up", str(topology),
                             "--name", lab, "--network-only"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if kill_when == "namespaces" and any(
                    n.startswith(lab + ".") for n in nsutil.list_netns()):
                break
            if kill_when == "holders" and list(
                    (runtime.run_dir(lab) / "pids").glob("*.holder.json")):
                break
            time.sleep(0.002)
        # Frozen first, so the set of its children is final when it dies.
        proc.send_signal(signal.SIGSTOP)
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = runtime.read_state(lab)
        assert state is not None and state["phase"] == "building", "kill did not land mid-build"
        # The orphaned `ip`/`nft` children finish what they were doing (a namespace made after
        # `down` would be left behind); the holders they started stay (`sleep`).
        wait_settled(children)
        seen = lab_processes(lab)
        if kill_when == "holders":
            assert seen, "expected holder processes to survive the killed up"
        down = raven("lab", "down", lab)
        assert down.returncode == 0, down.stderr
        assert_no_trace(lab, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown.down(lab)


def test_down_finds_a_lab_whose_run_dir_is_gone(lab_factory) -> None:
    plan = lab_factory("single-pool.yaml")
    processes = lab_processes(plan.name)
    assert processes
    shutil.rmtree(runtime.run_dir(plan.name))  # e.g. /run wiped, namespaces left behind
    assert plan.name in teardown.discover_labs()  # found by the lo marker alias
    teardown.down(plan.name)
    assert_no_trace(plan.name, processes)


def test_a_failed_up_removes_what_it_made(tmp_path: Path) -> None:
    """Fault injection from outside: an `nft` that fails makes the NAT phase fail mid-build."""
    import os

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nft").write_text("#!/bin/sh\necho 'nft: injected failure' >&2\nexit 1\n")
    (fake / "nft").chmod(0o755)
    lab = unique_lab_name()
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    try:
        result = subprocess.run([sys.executable, "-m", "raven.cli", "lab", "up",
                                 str(TOPOLOGIES / "two-pools.yaml"), "--name", lab,
                                 "--network-only"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode != 0
        assert "injected failure" in result.stderr and "Traceback" not in result.stderr
        assert "removing what was made" in result.stderr
        assert_no_trace(lab, {})
    finally:
        teardown.down(lab)
