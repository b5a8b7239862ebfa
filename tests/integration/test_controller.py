"""The gateway controller against the embedded API server, through the kubernetes client.

Oracle: kubectl (a different client) reads what the controller wrote: Gateway status, Events,
the leader Lease. Heartbeats are real agent Leases written with raven.kube.lease.Heartbeat.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kube_support import apiserver_process, kubectl, raven_cmd, wait_for

from raven import constants
from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings
from raven.controller import ControllerSettings, GatewayController
from raven.election import ElectionOptions
from raven.kube.backoff import BackoffSettings
from raven.kube.client import GATEWAYS, NODES, Kube, KubeSettings
from raven.kube.lease import Heartbeat, LeaderSettings

KEYS = {"hz-1": "A" * 43 + "=", "hz-2": "B" * 43 + "=", "bj-1": "C" * 43 + "="}


def node_obj(name: str, ip: str, cidr: str, pool: str | None, external: str = "") -> dict:
    addresses = [{"type": "InternalIP", "address": ip}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
                     "labels": {constants.GATEWAY_LABEL: pool} if pool else {},
                     "annotations": {constants.ANNOTATION_PUBLIC_KEY: KEYS.get(name, "")}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": addresses,
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def gateway_obj(name: str, endpoints: list[str], under_nat: bool = False) -> dict:
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": name},
            "spec": {"endpoints": [{"nodeName": n, "type": "tunnel", "port": 4500,
                                    "underNAT": under_nat} for n in endpoints]}}


@dataclass
class Cluster:
    server: RunningApiServer
    kube: Kube
    controller: GatewayController
    stop: threading.Event

    def gw(self, name: str) -> dict[str, Any]:
        """Read through kubectl, not through the code under test."""
        out = kubectl(self.server.kubeconfig, "get", "gateways.raven.openyurt.io", name,
                      "-o", "json").stdout
        return json.loads(out)

    def active(self, name: str) -> list[str]:
        status = self.gw(name).get("status") or {}
        return [e["nodeName"] for e in status.get("activeEndpoints") or []]

    def events(self, reason: str) -> list[dict[str, Any]]:
        out = kubectl(self.server.kubeconfig, "get", "events", "-n", "default", "-o",
                      "json").stdout
        return [e for e in json.loads(out)["items"] if e["reason"] == reason]

    def beat(self, node: str, ago: float = -3600.0) -> None:
        """Renew `node`'s heartbeat Lease as of `ago` seconds in the past; the default (an hour
        ahead) keeps it fresh for the whole test however slow the machine is."""
        Heartbeat(self.kube, node).renew(time.time() - ago)


def controller_settings(kubeconfig: Path, identity: str = "test") -> ControllerSettings:
    return ControllerSettings(
        kube=KubeSettings(kubeconfig=kubeconfig, request_timeout=5,
                          backoff=BackoffSettings(initial=0.05, maximum=0.5)),
        identity=identity,
        leader=LeaderSettings(lease_duration=3, renew_period=1.0, retry_period=0.3),
        election=ElectionOptions(heartbeat_timeout=5.0),
        resync_period=0.3,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    server = start(ApiServerSettings(data_dir=tmp_path / "api", port=0))
    kube = Kube(KubeSettings(kubeconfig=server.kubeconfig, request_timeout=5))
    kube.create(NODES, node_obj("hz-1", "192.0.2.1", "10.244.0.0/24", "gw-hz"))
    kube.create(NODES, node_obj("hz-2", "192.0.2.2", "10.244.1.0/24", "gw-hz",
                                external="198.51.100.2"))
    kube.create(NODES, node_obj("bj-1", "203.0.113.1", "10.244.9.0/24", "gw-bj"))
    controller = GatewayController(controller_settings(server.kubeconfig))
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield Cluster(server, kube, controller, stop)
    finally:
        stop.set()
        thread.join(timeout=10)
        kube.close()
        server.stop()


def test_elects_first_healthy_endpoint_and_fills_status(cluster: Cluster) -> None:
    cluster.beat("hz-1")
    cluster.beat("hz-2")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1", "hz-2"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    status = cluster.gw("gw-hz")["status"]
    assert status["nodes"] == [
        {"nodeName": "hz-1", "privateIP": "192.0.2.1", "subnets": ["10.244.0.0/24"]},
        {"nodeName": "hz-2", "privateIP": "192.0.2.2", "subnets": ["10.244.1.0/24"]},
    ]
    (active,) = status["activeEndpoints"]
    assert active["config"][constants.ENDPOINT_CONFIG_PUBLIC_KEY] == KEYS["hz-1"]
    assert active["publicIP"] == "192.0.2.1"  # not under NAT, no ExternalIP: InternalIP
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    wait_for(lambda: cluster.events("ActiveEndpointElected"), what="elected event")
    event = cluster.events("ActiveEndpointElected")[0]
    assert event["involvedObject"]["name"] == "gw-hz" and "hz-1" in event["message"]


def test_active_endpoint_is_sticky_when_spec_order_changes(cluster: Cluster) -> None:
    cluster.beat("hz-1")
    cluster.beat("hz-2")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1", "hz-2"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    kubectl(cluster.server.kubeconfig, "patch", "gateways.raven.openyurt.io", "gw-hz",
            "--type", "merge", "-p", json.dumps({"spec": gateway_obj(
                "gw-hz", ["hz-2", "hz-1"])["spec"]}))
    writes = cluster.controller.writes
    wait_for(lambda: cluster.controller.reconciles > 3 and cluster.gw("gw-hz")["metadata"].get(
        "generation") == 2, what="reconciles after the spec change")
    seen = cluster.controller.reconciles
    wait_for(lambda: cluster.controller.reconciles >= seen + 3, what="three more reconciles")
    assert cluster.active("gw-hz") == ["hz-1"]
    assert cluster.controller.writes == writes  # status already right: nothing written


def test_stale_heartbeat_moves_the_endpoint_and_records_the_loss(cluster: Cluster) -> None:
    cluster.beat("hz-1")
    cluster.beat("hz-2")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1", "hz-2"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    cluster.beat("hz-1", ago=60)  # hz-1's agent stopped renewing a minute ago
    wait_for(lambda: cluster.active("gw-hz") == ["hz-2"], what="failover to hz-2")
    status = cluster.gw("gw-hz")["status"]
    assert status["activeEndpoints"][0]["publicIP"] == "198.51.100.2"  # ExternalIP
    assert status["activeEndpoints"][0]["config"]["public-key"] == KEYS["hz-2"]
    lost = wait_for(lambda: cluster.events("ActiveEndpointLost"), what="lost event")
    assert "hz-1" in lost[0]["message"] and lost[0]["type"] == "Warning"


def test_a_restarted_controller_does_not_hold_renewals_it_could_not_see_against_the_active(
        cluster: Cluster) -> None:
    """After a control-plane outage every Lease is as old as the outage and agents renew again
    one by one: the active gateway's renewal may come after a standby's. The new leader keeps
    the active gateway for a heartbeat timeout from its start (it is not the evidence of a dead
    node), and moves it once that passes without a renewal (the positive control)."""
    cluster.beat("hz-1")
    cluster.beat("hz-2")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1", "hz-2"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    cluster.stop.set()  # the controller goes away (it releases its leader Lease)
    wait_for(lambda: cluster.controller.elector.is_leader is False, what="old leader stopped")
    cluster.beat("hz-1", ago=600)  # the active's last renewal before the outage
    cluster.beat("hz-2")  # the standby renewed first after it (and stays fresh)
    # A heartbeat timeout long enough that three reconciles surely fit into it on a loaded
    # machine (the grace under test lasts one timeout from the takeover).
    settings = controller_settings(cluster.server.kubeconfig, "restarted")
    restarted = GatewayController(replace(settings, election=replace(
        settings.election, heartbeat_timeout=30.0)))
    stop = threading.Event()
    thread = threading.Thread(target=restarted.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: restarted.reconciles >= 3, what="three reconciles of the new leader")
        assert cluster.active("gw-hz") == ["hz-1"]  # main before the fix: ["hz-2"]
        # hz-1 never renews: one heartbeat timeout (30 s) after the takeover it is stale.
        wait_for(lambda: cluster.active("gw-hz") == ["hz-2"], what="failover to hz-2",
                 timeout=120)
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_pool_that_went_silent_keeps_its_gateway_until_a_candidate_is_heard(
        cluster: Cluster) -> None:
    """A pool cut off from the control plane stops renewing at the cut, but its Leases expire
    one by one: when the active gateway's has expired and the standby's has not yet, but it
    missed a renewal (older than half the timeout), the pool went silent at once and the
    controller keeps the active gateway (main before the fix: moved to hz-2, a node the cut-off
    pool never chose). A standby that renews is heard and takes over (the positive control).
    (The harness's timeout is 5 s: hz-2 stays fresh for 2.4 s after the cut, several resyncs;
    on a machine too slow for that, every heartbeat is stale at the check and the status is
    kept by rule 4 alike, so the test cannot fail for slowness, only prove less.)"""
    cluster.beat("hz-1")
    cluster.beat("hz-2")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1", "hz-2"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    # A new leader counts an active endpoint's older renewals as made at its takeover (rule 5):
    # the cut below must come one timeout after the takeover (the leader Lease's acquireTime).
    lease = json.loads(kubectl(cluster.server.kubeconfig, "get", "lease", "-n",
                               constants.RAVEN_NAMESPACE, constants.CONTROLLER_LEASE_NAME,
                               "-o", "json").stdout)
    took_over = datetime.fromisoformat(lease["spec"]["acquireTime"].replace("Z", "+00:00"))
    wait_for(lambda: time.time() > took_over.timestamp() + 5.0 + 0.5,
             what="one heartbeat timeout after the takeover")
    # The cut: hz-1 renewed last 5.1 s ago (stale), hz-2 2.6 s ago (fresh, but older than
    # half the timeout: it missed a renewal too).
    cluster.beat("hz-1", ago=5.1)
    cluster.beat("hz-2", ago=2.6)
    done = cluster.controller.reconciles
    wait_for(lambda: cluster.controller.reconciles >= done + 2,
             what="two reconciles after the cut")
    assert cluster.active("gw-hz") == ["hz-1"]
    ready = next(c for c in cluster.gw("gw-hz")["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "KeptWithoutHeartbeat", ready
    cluster.beat("hz-2")  # hz-2's agent renews: the pool is heard
    wait_for(lambda: cluster.active("gw-hz") == ["hz-2"], what="failover to hz-2")


def test_pool_without_heartbeat_gets_a_condition_not_an_endpoint(cluster: Cluster) -> None:
    cluster.kube.create(GATEWAYS, gateway_obj("gw-bj", ["bj-1"], under_nat=True))

    def ready_condition() -> dict[str, Any] | None:
        status = cluster.gw("gw-bj").get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)

    ready = wait_for(ready_condition, what="Ready condition")
    assert ready["status"] == "False" and ready["reason"] == "NoActiveEndpoint"
    assert "bj-1" in ready["message"] and "heartbeat" in ready["message"]
    assert not cluster.gw("gw-bj")["status"].get("activeEndpoints")
    cluster.beat("bj-1")
    wait_for(lambda: cluster.active("gw-bj") == ["bj-1"], what="bj-1 elected")
    active = cluster.gw("gw-bj")["status"]["activeEndpoints"][0]
    assert "publicIP" not in active  # under NAT without ExternalIP: no public address


def test_fleet_conflict_is_explained_and_status_is_kept(cluster: Cluster) -> None:
    cluster.beat("hz-1")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    # A second Gateway claims hz-1 and names a node that does not exist.
    cluster.kube.create(GATEWAYS, gateway_obj("gw-zz", ["hz-1", "ghost"]))

    def spec_valid(name: str) -> dict[str, Any] | None:
        status = cluster.gw(name).get("status") or {}
        return next((c for c in status.get("conditions") or []
                     if c["type"] == "SpecValid" and c["status"] == "False"), None)

    cond = wait_for(lambda: spec_valid("gw-zz"), what="SpecValid=False on gw-zz")
    assert "hz-1" in cond["message"] and "ghost" in cond["message"]
    assert cluster.active("gw-hz") == ["hz-1"]  # the first pool's status is not lost


def test_status_is_written_only_on_change(cluster: Cluster) -> None:
    cluster.beat("hz-1")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"], what="hz-1 elected")
    rv = cluster.gw("gw-hz")["metadata"]["resourceVersion"]
    reconciles = cluster.controller.reconciles
    cluster.beat("hz-1")  # heartbeats and unrelated node changes wake the controller...
    kubectl(cluster.server.kubeconfig, "label", "node", "bj-1", "unrelated=yes")
    wait_for(lambda: cluster.controller.reconciles >= reconciles + 5, what="5 reconciles")
    assert cluster.gw("gw-hz")["metadata"]["resourceVersion"] == rv  # ...but nothing is written
    # A real change (new member) is written once.
    kubectl(cluster.server.kubeconfig, "label", "node", "bj-1", "--overwrite",
            f"{constants.GATEWAY_LABEL}=gw-hz")
    wait_for(lambda: len(cluster.gw("gw-hz")["status"]["nodes"]) == 3, what="bj-1 member")


def test_controller_survives_api_server_restart(tmp_path: Path) -> None:
    with apiserver_process(tmp_path / "api") as api:
        kube = Kube(KubeSettings(kubeconfig=api.kubeconfig, request_timeout=3))
        kube.create(NODES, node_obj("hz-1", "192.0.2.1", "10.244.0.0/24", "gw-hz"))
        Heartbeat(kube, "hz-1").renew(time.time() + 3600)
        controller = GatewayController(controller_settings(api.kubeconfig))
        stop = threading.Event()
        thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
        thread.start()
        try:
            kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1"]))
            wait_for(lambda: controller.writes >= 1, what="first write")
            api.restart()
            Heartbeat(kube, "hz-1").renew(time.time() + 3600)
            kube.create(NODES, node_obj("hz-2", "192.0.2.2", "10.244.1.0/24", "gw-hz"))

            def members() -> int:
                out = kubectl(api.kubeconfig, "get", "gateways.raven.openyurt.io", "gw-hz",
                              "-o", "jsonpath={.status.nodes[*].nodeName}").stdout
                return len(out.split())

            wait_for(lambda: members() == 2, what="hz-2 added after the restart")
        finally:
            stop.set()
            thread.join(timeout=10)
            kube.close()


def _holder(kubeconfig: Path) -> str:
    return kubectl(kubeconfig, "get", "lease", "-n", "kube-system",
                   constants.CONTROLLER_LEASE_NAME, "-o",
                   "jsonpath={.spec.holderIdentity}").stdout.strip()


def test_leader_handover_between_two_controller_processes(tmp_path: Path) -> None:
    with apiserver_process(tmp_path / "api") as api:
        kube = Kube(KubeSettings(kubeconfig=api.kubeconfig, request_timeout=3))
        for name, ip, cidr in (("hz-1", "192.0.2.1", "10.244.0.0/24"),
                               ("hz-2", "192.0.2.2", "10.244.1.0/24")):
            kube.create(NODES, node_obj(name, ip, cidr, "gw-hz"))
            Heartbeat(kube, name).renew(time.time() + 3600)  # fresh for the whole test
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for ident in ("ctl-a", "ctl-b"):
                log = open(tmp_path / f"{ident}.log", "wb")  # noqa: SIM115
                procs[ident] = subprocess.Popen(
                    raven_cmd("controller", "--kubeconfig", str(api.kubeconfig), "--identity",
                              ident, "--lease-duration", "3", "--renew-period", "1",
                              "--retry-period", "0.3", "--resync", "0.5"),
                    stdout=log, stderr=subprocess.STDOUT)
            kube.create(GATEWAYS, gateway_obj("gw-a", ["hz-1"]))
            first = wait_for(lambda: _holder(api.kubeconfig), what="a leader")
            wait_for(lambda: "hz-1" in kubectl(api.kubeconfig, "get", "gateway", "gw-a", "-o",
                                               "jsonpath={.status.activeEndpoints}").stdout,
                     what="gw-a elected by the first leader")
            # Hard failure: the leader is killed; the standby takes over after lease expiry.
            procs[first].send_signal(signal.SIGKILL)
            procs[first].wait(timeout=10)
            second = "ctl-b" if first == "ctl-a" else "ctl-a"
            wait_for(lambda: _holder(api.kubeconfig) == second, timeout=30,
                     what="standby holds the lease")
            kube.create(GATEWAYS, gateway_obj("gw-b", ["hz-2"]))
            wait_for(lambda: "hz-2" in kubectl(api.kubeconfig, "get", "gateway", "gw-b", "-o",
                                               "jsonpath={.status.activeEndpoints}").stdout,
                     timeout=30, what="gw-b elected by the new leader")
            # Clean shutdown releases the lease at once.
            procs[second].send_signal(signal.SIGTERM)
            assert procs[second].wait(timeout=15) == 0
            assert _holder(api.kubeconfig) == ""
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            kube.close()


def two_elected_pools(cluster: Cluster) -> None:
    """gw-hz (hz-1) and gw-bj (bj-1), both heartbeating, both elected."""
    cluster.beat("hz-1")
    cluster.beat("bj-1")
    cluster.kube.create(GATEWAYS, gateway_obj("gw-hz", ["hz-1"]))
    cluster.kube.create(GATEWAYS, gateway_obj("gw-bj", ["bj-1"]))
    wait_for(lambda: cluster.active("gw-hz") == ["hz-1"] and cluster.active("gw-bj") == ["bj-1"],
             what="both pools elected")


def test_node_moving_pools_writes_each_gateway_once(cluster: Cluster) -> None:
    two_elected_pools(cluster)
    reconciles = cluster.controller.reconciles
    wait_for(lambda: cluster.controller.reconciles >= reconciles + 3, what="settled")
    writes = cluster.controller.writes
    kubectl(cluster.server.kubeconfig, "label", "node", "hz-2", "--overwrite",
            f"{constants.GATEWAY_LABEL}=gw-bj")

    def members(name: str) -> list[str]:
        return [n["nodeName"] for n in cluster.gw(name)["status"]["nodes"]]

    wait_for(lambda: members("gw-bj") == ["bj-1", "hz-2"] and members("gw-hz") == ["hz-1"],
             what="hz-2 moved to gw-bj")
    reconciles = cluster.controller.reconciles
    wait_for(lambda: cluster.controller.reconciles >= reconciles + 5, what="5 more reconciles")
    assert cluster.controller.writes == writes + 2  # one per changed Gateway, no flapping
    for name in ("gw-hz", "gw-bj"):
        cond = next(c for c in cluster.gw(name)["status"]["conditions"]
                    if c["type"] == "SpecValid")
        assert cond["status"] == "True"


def test_a_malformed_public_key_is_isolated_to_its_node(cluster: Cluster) -> None:
    two_elected_pools(cluster)
    kubectl(cluster.server.kubeconfig, "annotate", "node", "hz-1", "--overwrite",
            f"{constants.ANNOTATION_PUBLIC_KEY}=not-a-wireguard-key")

    def ready(name: str) -> dict[str, Any]:
        status = cluster.gw(name).get("status") or {}
        return next(c for c in status.get("conditions") or [] if c["type"] == "Ready")

    cond = wait_for(lambda: (c := ready("gw-hz"))["reason"] == "PublicKeyInvalid" and c,
                    what="gw-hz names the bad key")
    assert cond["status"] == "False" and "node hz-1" in cond["message"]
    (active,) = cluster.gw("gw-hz")["status"]["activeEndpoints"]
    assert "public-key" not in active.get("config", {})  # never handed to other pools
    assert ready("gw-bj")["status"] == "True"  # the other pool is not affected
    kubectl(cluster.server.kubeconfig, "annotate", "node", "hz-1", "--overwrite",
            f"{constants.ANNOTATION_PUBLIC_KEY}={KEYS['hz-1']}")
    wait_for(lambda: ready("gw-hz")["status"] == "True", what="fixed annotation accepted")
    (active,) = cluster.gw("gw-hz")["status"]["activeEndpoints"]
    assert active["config"]["public-key"] == KEYS["hz-1"]
