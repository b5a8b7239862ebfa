"""`raven lab agent-restart` waits for the new agent, or says why it is not ready; the lab's API
server keeps its data private.

One single-pool overlay lab for the module. Oracles: /proc (the agent's pid and start time), the
kernel of the node (`ip -j link`), file modes from stat(2).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator

import pytest
from overlay_support import in_devices, overlay_lab, raven

from raven.lab import cluster, runtime
from raven.lab.plan import LabPlan

pytestmark = pytest.mark.root

NODE = "cloud-2"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("single-pool.yaml", area="ar") as plan:
        yield plan


def agent_identity(plan: LabPlan, node: str) -> tuple[int, int] | None:
    pid = runtime.process_pid(plan.name, node, cluster.AGENT)
    if pid is None:
        return None
    start = runtime.proc_start_time(pid)
    return (pid, start) if start is not None else None


def test_agent_restart_returns_once_the_new_agent_is_ready(lab: LabPlan) -> None:
    before = agent_identity(lab, NODE)
    assert before is not None
    result = raven("lab", "agent-restart", lab.name, NODE)
    assert result.returncode == 0, result.stderr
    assert f"agent on {NODE} restarted and ready" in result.stdout
    after = agent_identity(lab, NODE)
    assert after is not None and after != before  # a new process, still running
    links = {link["ifname"] for link in json.loads(in_devices(lab, NODE, "ip", "-j", "link",
                                                             "show"))}
    assert "raven0" in links


def test_agent_restart_reports_an_agent_that_cannot_start(lab: LabPlan) -> None:
    key = cluster.state_dir(lab.name, NODE) / "wireguard.key"
    good = key.read_bytes()
    try:
        key.write_text("this is not a key\n")  # the agent refuses to start with a broken key
        result = raven("lab", "agent-restart", lab.name, NODE)
        assert result.returncode == 1, result
        assert "restarted" not in result.stdout
        assert f"the agent on {NODE!r} exited before it was ready" in result.stderr
        assert "not a base64 WireGuard private key" in result.stderr  # the agent's own reason
        assert "Traceback (most recent call last)" not in result.stderr.split("log")[0]
        assert agent_identity(lab, NODE) is None
    finally:
        key.write_bytes(good)
        if agent_identity(lab, NODE) is None:
            before = cluster.agent_status_stamp(lab.name, NODE)
            cluster.start_agent(lab.name, NODE)
            cluster.wait_agent_ready(lab.name, NODE, before)


def test_apiserver_data_is_private(lab: LabPlan) -> None:
    data = cluster.apiserver_dir(lab.name)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    secrets = [p for p in files if p.suffix in (".key", ".kubeconfig") or "token" in p.name]
    assert cluster.kubeconfig_path(lab.name) in secrets and len(secrets) >= 3, files
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [*files, *(p for p in data.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path  # nothing for group/other
