"""`lab up` starts members' agents at nice 10 and gives them the ordinary priority once every
gateway candidate is in its pool (raven.lab.cluster.renice_agents). The agent's children that
run in sessions of their own (wireguard-go, the probe responder) must get it back too.

Plain processes stand in for the agent and its child (no namespaces); the oracle is the
nice field of /proc/PID/stat. Needs root (lowering a nice value).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from raven.lab import cluster, runtime

pytestmark = pytest.mark.root

# The stand-in agent: starts a child in its own session (as the agent starts its responder),
# prints the child's pid and waits.
AGENT = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def nice_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])  # field 19: nice


def test_renice_reaches_children_in_their_own_sessions(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAVEN_LAB_RUN_ROOT", str(tmp_path))
    agent = subprocess.Popen([sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True,
                             start_new_session=True, preexec_fn=lambda: os.nice(10))
    try:
        assert agent.stdout is not None
        child = int(agent.stdout.readline())
        assert (nice_of(agent.pid), nice_of(child)) == (10, 10)
        record = runtime.pid_path("lab", "member-1", cluster.AGENT)
        record.parent.mkdir(parents=True)
        runtime.write_json_atomic(record, {"pid": agent.pid,
                                           "start_time": runtime.proc_start_time(agent.pid)})
        node = SimpleNamespace(name="member-1", is_vm=False)
        cluster.renice_agents("lab", [node])  # type: ignore[list-item]
        assert (nice_of(agent.pid), nice_of(child)) == (0, 0)
    finally:
        agent.kill()
        agent.wait()
        if "child" in locals():
            os.kill(child, 9)
