"""raven.kube against the embedded API server: typed errors, informers, leases, events, cache.

Every result is checked through kubectl or a separate read, not only through raven.kube itself.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_support import apiserver_process, free_port, kubectl, wait_for

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings
from raven.kube.cache import CachedInputs, InputCache
from raven.kube.client import EVENTS, GATEWAYS, LEASES, NODES, Kube, KubeSettings
from raven.kube.errors import (
    AlreadyExists,
    ConfigError,
    Conflict,
    Invalid,
    NotFound,
    Unavailable,
)
from raven.kube.events import EventRecorder
from raven.kube.informer import Informer
from raven.kube.lease import Heartbeat, LeaderElector, LeaderSettings
from raven.timefmt import parse_time


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningApiServer]:
    running = start(ApiServerSettings(data_dir=tmp_path / "api", port=0, watch_history=50))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kube(server: RunningApiServer) -> Iterator[Kube]:
    client = Kube(KubeSettings(kubeconfig=server.kubeconfig, request_timeout=5))
    try:
        yield client
    finally:
        client.close()


def node_obj(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def gateway_obj(name: str, node: str = "n1") -> dict:
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": name},
            "spec": {"endpoints": [{"nodeName": node, "type": "tunnel"}]}}


def test_verbs_and_typed_errors(kube: Kube, server: RunningApiServer) -> None:
    kube.create(NODES, node_obj("n1"))
    with pytest.raises(AlreadyExists):
        kube.create(NODES, node_obj("n1"))
    with pytest.raises(NotFound):
        kube.get(NODES, "missing")
    stale = kube.get(NODES, "n1")
    kube.merge_patch(NODES, "n1", {"metadata": {"annotations": {"a": "1"}}})
    stale["metadata"].setdefault("labels", {})["x"] = "y"
    with pytest.raises(Conflict):
        kube.replace(NODES, stale)
    bad = gateway_obj("gw-bad")
    bad["spec"]["endpoints"][0]["type"] = "wormhole"
    with pytest.raises(Invalid) as info:
        kube.create(GATEWAYS, bad)
    assert "spec.endpoints[0].type" in str(info.value)
    out = json.loads(kubectl(server.kubeconfig, "get", "node", "n1", "-o", "json").stdout)
    assert out["metadata"]["annotations"] == {"a": "1"}
    assert "x" not in (out["metadata"].get("labels") or {})


def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    running = start(ApiServerSettings(data_dir=tmp_path / "api", port=0))
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(running.kubeconfig.read_text().replace(
        f":{running.port}", f":{free_port()}"))
    running.stop()
    client = Kube(KubeSettings(kubeconfig=kubeconfig, request_timeout=2))
    with pytest.raises(Unavailable):
        client.list(NODES)
    assert Unavailable.retryable


def test_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Kube(KubeSettings(kubeconfig=tmp_path / "nope"))
    assert "--kubeconfig" in str(info.value)


def test_informer_tracks_adds_updates_deletes(kube: Kube, server: RunningApiServer) -> None:
    seen: list[tuple[str, str]] = []
    kube.create(NODES, node_obj("before"))
    informer = Informer(kube, NODES, on_change=lambda t, o: seen.append(
        (t, o["metadata"]["name"]))).start()
    try:
        wait_for(informer.synced.is_set, what="informer synced")
        kubectl(server.kubeconfig, "label", "node", "before", "k=v")
        kube.create(NODES, node_obj("after"))
        kubectl(server.kubeconfig, "delete", "node", "before")
        wait_for(lambda: ("DELETED", "before") in seen, what="delete event")
        assert [n["metadata"]["name"] for n in informer.items()] == ["after"]
        assert seen[:2] == [("ADDED", "before"), ("MODIFIED", "before")]
        assert ("ADDED", "after") in seen
        assert informer.lists == 1
    finally:
        informer.stop()


def test_single_object_watch_sees_only_its_node(kube: Kube) -> None:
    seen: list[str] = []
    informer = Informer(kube, NODES, field_selector="metadata.name=me",
                        on_change=lambda t, o: seen.append(o["metadata"]["name"])).start()
    try:
        wait_for(informer.synced.is_set, what="informer synced")
        for name in ("other-1", "me", "other-2"):
            kube.create(NODES, node_obj(name))
        kube.merge_patch(NODES, "other-1", {"metadata": {"labels": {"a": "b"}}})
        kube.merge_patch(NODES, "me", {"metadata": {"labels": {"a": "b"}}})
        wait_for(lambda: seen.count("me") == 2, what="two events for 'me'")
        assert set(seen) == {"me"}
        assert informer.get("me")["metadata"]["labels"] == {"a": "b"}
    finally:
        informer.stop()


def test_informer_relists_after_410_and_reports_the_difference(kube: Kube) -> None:
    deleted: list[str] = []
    informer = Informer(kube, NODES, on_change=lambda t, o: deleted.append(
        o["metadata"]["name"]) if t == "DELETED" else None).start()
    try:
        wait_for(informer.synced.is_set, what="informer synced")
        kube.create(NODES, node_obj("gone"))
        wait_for(lambda: informer.get("gone"), what="node seen")
        first_rv = informer.resource_version
        informer.stop()  # "offline" while history is compacted past its resourceVersion
        kube.delete(NODES, "gone")
        for i in range(60):  # more events than the server's watch_history (50)
            kube.create(NODES, node_obj(f"churn-{i}"))
        informer._stop.clear()  # restart the same informer: it resumes from first_rv
        informer.resource_version = first_rv
        informer.start()
        wait_for(lambda: informer.lists == 2, what="relist after 410")
        wait_for(lambda: len(informer.items()) == 60, what="store rebuilt")
        assert informer.get("gone") is None
        assert deleted == ["gone"]
    finally:
        informer.stop()


def test_informer_resumes_across_api_server_restart(tmp_path: Path) -> None:
    with apiserver_process(tmp_path / "api") as api:
        client = Kube(KubeSettings(kubeconfig=api.kubeconfig, request_timeout=3))
        seen: list[str] = []
        informer = Informer(client, GATEWAYS, on_change=lambda t, o: seen.append(
            f"{t} {o['metadata']['name']}")).start()
        try:
            wait_for(informer.synced.is_set, what="informer synced")
            client.create(GATEWAYS, gateway_obj("gw-1"))
            wait_for(lambda: "ADDED gw-1" in seen, what="gw-1")
            api.restart()
            kubectl(api.kubeconfig, "apply", "-f", "-", stdin=json.dumps(gateway_obj("gw-2")))
            wait_for(lambda: "ADDED gw-2" in seen, what="gw-2 after the restart")
            # Resumed from its resourceVersion, or (when the restarted server no longer has
            # that history and answers 410) relisted: either way consumers see each change
            # exactly once, never a duplicate ADDED for what they already have.
            assert seen == ["ADDED gw-1", "ADDED gw-2"]
        finally:
            informer.stop()
            client.close()


def test_heartbeat_creates_then_renews_its_lease(kube: Kube, server: RunningApiServer) -> None:
    beat = Heartbeat(kube, "edge-1")
    beat.renew(1_700_000_000.0)
    beat.renew(1_700_000_005.5)
    out = json.loads(kubectl(server.kubeconfig, "get", "lease", "-n", "kube-system",
                             "raven-agent-edge-1", "-o", "json").stdout)
    assert out["spec"]["holderIdentity"] == "edge-1"
    assert parse_time(out["spec"]["renewTime"]) == pytest.approx(1_700_000_005.5)
    kubectl(server.kubeconfig, "delete", "lease", "-n", "kube-system", "raven-agent-edge-1")
    beat.renew(1_700_000_010.0)  # a deleted lease is recreated
    kubectl(server.kubeconfig, "get", "lease", "-n", "kube-system", "raven-agent-edge-1")


def test_leader_election_one_holder_takeover_after_expiry_and_release(kube: Kube) -> None:
    settings = LeaderSettings(name="test-leader", lease_duration=10)
    a = LeaderElector(kube, "replica-a", settings)
    b = LeaderElector(kube, "replica-b", settings)
    t = 1_700_000_000.0
    assert a.try_acquire_or_renew(t)
    assert not b.try_acquire_or_renew(t + 1)
    assert a.try_acquire_or_renew(t + 5)  # renewal
    assert not b.try_acquire_or_renew(t + 12)  # b saw a renew at t+5 (its clock: t+12)
    assert b.try_acquire_or_renew(t + 23)  # a silent for > 10 s of b's clock
    assert not a.try_acquire_or_renew(t + 24)
    b.release()
    assert a.try_acquire_or_renew(t + 25)  # released: no need to wait for expiry
    lease = kube.get(LEASES, "test-leader", "kube-system")
    assert lease["spec"]["holderIdentity"] == "replica-a"
    assert lease["spec"]["leaseTransitions"] == 2


def test_leader_takeover_is_timed_on_the_monotonic_clock_not_the_wall_clock(kube: Kube) -> None:
    """A standby whose wall clock jumps an hour ahead (NTP step, VM resume) must not take a
    lease its holder renewed a second ago; one whose wall clock stands still must still take
    over once the holder has been silent for the lease's duration on its own clock."""
    settings = LeaderSettings(name="test-leader-mono", lease_duration=10)
    a = LeaderElector(kube, "replica-a", settings)
    b = LeaderElector(kube, "replica-b", settings)
    wall = 1_700_000_000.0
    assert a.try_acquire_or_renew(wall, monotonic=100.0)
    assert not b.try_acquire_or_renew(wall, monotonic=500.0)  # b first sees a's record
    assert not b.try_acquire_or_renew(wall + 3600, monotonic=501.0)  # wall jumped, 1 s passed
    assert not b.try_acquire_or_renew(wall, monotonic=509.0)
    assert b.try_acquire_or_renew(wall, monotonic=511.0)  # a silent for 11 s of b's clock
    assert kube.get(LEASES, "test-leader-mono", "kube-system")["spec"]["holderIdentity"] == (
        "replica-b")


def test_leader_election_race_has_one_winner(kube: Kube) -> None:
    settings = LeaderSettings(name="race", lease_duration=10)
    results: dict[str, bool] = {}

    def contend(name: str) -> None:
        results[name] = LeaderElector(kube, name, settings).try_acquire_or_renew(1e9)

    threads = [threading.Thread(target=contend, args=(f"r{i}",)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    winners = [n for n, won in results.items() if won]
    assert len(winners) == 1
    assert kube.get(LEASES, "race", "kube-system")["spec"]["holderIdentity"] == winners[0]


def test_events_are_recorded_in_default_namespace(kube: Kube, server: RunningApiServer) -> None:
    gw = kube.create(GATEWAYS, gateway_obj("gw-ev"))
    EventRecorder(kube, "test").record(gw, "ActiveEndpointElected", "n1 elected", 1.7e9)
    items, _ = kube.list(EVENTS, "default")
    assert [e["reason"] for e in items] == ["ActiveEndpointElected"]
    out = kubectl(server.kubeconfig, "get", "events", "-n", "default", "-o", "json").stdout
    event = json.loads(out)["items"][0]
    assert event["involvedObject"]["kind"] == "Gateway"
    assert event["involvedObject"]["name"] == "gw-ev"


def test_input_cache_round_trip_and_bad_files(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "state" / "inputs.json")
    assert cache.load() is None
    inputs = CachedInputs(123.0, {"metadata": {"name": "n"}}, ({"metadata": {"name": "g"}},))
    cache.save(inputs)
    assert cache.load() == inputs
    assert oct(os.stat(cache.path).st_mode & 0o777) == "0o600"
    assert [p.name for p in cache.path.parent.iterdir()] == ["inputs.json"]  # no temp left
    cache.path.write_text("{torn")
    assert cache.load() is None
