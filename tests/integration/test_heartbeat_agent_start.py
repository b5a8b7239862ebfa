"""raven.kube.lease.Heartbeat marks each agent process's start on its Lease (acquireTime, once
per Heartbeat, i.e. per agent process; leaseTransitions counts them), read back with kubectl;
the controller's reading of it (raven.gateway_status.agent_starts_from_leases) agrees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_support import kubectl

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings
from raven.gateway_status import agent_starts_from_leases, heartbeats_from_leases
from raven.kube.client import LEASES, Kube, KubeSettings
from raven.kube.lease import Heartbeat
from raven.timefmt import parse_time

T0 = 1_700_000_000.0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[RunningApiServer, Kube]]:
    running = start(ApiServerSettings(data_dir=tmp_path / "api", port=0, watch_history=50))
    client = Kube(KubeSettings(kubeconfig=running.kubeconfig, request_timeout=5))
    try:
        yield running, client
    finally:
        client.close()
        running.stop()


def lease(server: RunningApiServer) -> dict:
    return json.loads(kubectl(server.kubeconfig, "get", "lease", "-n", "kube-system",
                              "raven-agent-edge-1", "-o", "json").stdout)["spec"]


def test_each_agent_process_sets_acquire_time_once_and_renewals_keep_it(
        api: tuple[RunningApiServer, Kube]) -> None:
    server, kube = api
    first = Heartbeat(kube, "edge-1")
    first.renew(T0)
    first.renew(T0 + 5)
    spec = lease(server)
    assert parse_time(spec["acquireTime"]) == pytest.approx(T0)
    assert parse_time(spec["renewTime"]) == pytest.approx(T0 + 5)
    transitions = spec["leaseTransitions"]
    # A new agent process (power cycle, crash, restart) finds the Lease and marks its start.
    second = Heartbeat(kube, "edge-1")
    second.renew(T0 + 12)
    second.renew(T0 + 17)
    spec = lease(server)
    assert parse_time(spec["acquireTime"]) == pytest.approx(T0 + 12)
    assert parse_time(spec["renewTime"]) == pytest.approx(T0 + 17)
    assert spec["leaseTransitions"] == transitions + 1
    listed, _ = kube.list(LEASES, "kube-system")
    assert agent_starts_from_leases(listed)["edge-1"] == pytest.approx(T0 + 12)
    assert heartbeats_from_leases(listed)["edge-1"] == pytest.approx(T0 + 17)
