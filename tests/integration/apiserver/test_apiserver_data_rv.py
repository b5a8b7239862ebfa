"""resourceVersions from the future (a client that saw a newer store, e.g. before a restore from
backup) are refused as kube-apiserver refuses them: 504 Timeout "Too large resource version"
with the ResourceVersionTooLarge cause and retryAfterSeconds, which client-go answers by
relisting from scratch. Oracle: the official kubernetes client and raw HTTPS.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from apiserver_support import start_apiserver_process
from kube_support import free_port, wait_for
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings
from raven.kube.client import NODES, Kube, KubeSettings
from raven.kube.errors import Expired
from raven.kube.informer import Informer

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def get(server: RunningApiServer, path: str) -> tuple[int, dict[str, Any], str]:
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
        response = conn.getresponse()
        body = response.read()
        if response.getheader("Transfer-Encoding") == "chunked":  # a watch stream
            return response.status, {"events": body.decode().splitlines()}, ""
        return response.status, json.loads(body), response.getheader("Retry-After") or ""
    finally:
        conn.close()


def assert_too_large(status: dict[str, Any], wanted: int) -> None:
    assert status["kind"] == "Status" and status["code"] == 504
    assert status["reason"] == "Timeout"
    assert f"Too large resource version: {wanted}" in status["message"]
    assert status["details"]["retryAfterSeconds"] == 1
    assert {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"} in \
        status["details"]["causes"]


def current_rv(server: RunningApiServer) -> int:
    code, listing, _ = get(server, CONFIGMAPS)
    assert code == 200
    return int(listing["metadata"]["resourceVersion"])


@pytest.mark.parametrize("query", [
    "?watch=true&resourceVersion={rv}",
    "?watch=true&resourceVersion={rv}&allowWatchBookmarks=true",
    "?resourceVersion={rv}",
    "?resourceVersion={rv}&resourceVersionMatch=NotOlderThan",
    "?resourceVersion={rv}&resourceVersionMatch=Exact",
])
def test_future_resource_versions_are_too_large(server: RunningApiServer, query: str) -> None:
    future = current_rv(server) + 1000
    code, status, retry_after = get(server, CONFIGMAPS + query.format(rv=future))
    assert code == 504 and retry_after == "1"
    assert_too_large(status, future)
    # The current resourceVersion is fine for both.
    now = current_rv(server)
    code, _, _ = get(server, f"{CONFIGMAPS}?resourceVersion={now}")
    assert code == 200
    code, _, _ = get(server, f"{CONFIGMAPS}?watch=true&resourceVersion={now}&timeoutSeconds=1")
    assert code == 200


@pytest.mark.parametrize("rv", ["abc", "-1", "1e3", "%C2%B2"])
def test_malformed_resource_versions_are_400(server: RunningApiServer, rv: str) -> None:
    code, status, _ = get(server, f"{CONFIGMAPS}?resourceVersion={rv}")
    assert code == 400 and status["reason"] == "BadRequest", status


def test_after_a_restore_clients_are_told_to_relist(tmp_path: Path) -> None:
    data_dir, backup = tmp_path / "api", tmp_path / "backup"
    running = start(ApiServerSettings(data_dir=data_dir, port=0))
    running.stop()
    shutil.copytree(data_dir, backup)  # a backup taken early
    running = start(ApiServerSettings(data_dir=data_dir, port=0))
    try:
        core = client.CoreV1Api(config.new_client_from_config(
            config_file=str(running.kubeconfig)))
        for n in range(20):
            core.create_namespaced_config_map("default", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"cm-{n}")))
        seen_rv = core.list_namespaced_config_map("default").metadata.resource_version
    finally:
        running.stop()
    shutil.rmtree(data_dir)
    shutil.copytree(backup, data_dir)  # restore
    running = start(ApiServerSettings(data_dir=data_dir, port=0))
    try:
        core = client.CoreV1Api(config.new_client_from_config(
            config_file=str(running.kubeconfig)))
        # An informer resumes its watch from what it saw, then relists from there: both 504.
        for call in (
            lambda: core.list_namespaced_config_map("default", watch=True, timeout_seconds=1,
                                                    resource_version=seen_rv,
                                                    _preload_content=False),
            lambda: core.list_namespaced_config_map("default", resource_version=seen_rv),
        ):
            with pytest.raises(ApiException) as err:
                call()
            assert err.value.status == 504
            assert_too_large(json.loads(err.value.body), int(seen_rv))
        # A list from scratch (what client-go does next) answers the restored state.
        fresh = core.list_namespaced_config_map("default")
        assert fresh.items == [] and int(fresh.metadata.resource_version) < int(seen_rv)
    finally:
        running.stop()


def test_a_raven_informer_relists_after_a_restore(tmp_path: Path) -> None:
    """raven.kube's informer treats "Too large resource version" as client-go does: list again,
    and see the restored state (not retry the same watch for ever). The server runs as a
    subprocess, stopped and restarted on the same port, as an operator restores a backup."""
    data_dir, backup = tmp_path / "api", tmp_path / "backup"
    listen = f"127.0.0.1:{free_port()}"
    process = start_apiserver_process(data_dir, listen=listen)
    process.stop()
    shutil.copytree(data_dir, backup)  # same token and CA: the kubeconfig stays valid
    process = start_apiserver_process(data_dir, listen=listen)
    kube = Kube(KubeSettings(kubeconfig=process.kubeconfig, request_timeout=5))
    informer = Informer(kube, NODES).start()
    try:
        assert informer.synced.wait(20)
        for n in range(5):
            kube.create(NODES, {"apiVersion": "v1", "kind": "Node",
                                "metadata": {"name": f"gone-{n}"}})
        wait_for(lambda: len(informer.items()) == 5, what="the informer to see the nodes")
        seen_rv = int(informer.resource_version)
        process.stop()
        shutil.rmtree(data_dir)
        shutil.copytree(backup, data_dir)  # restore: the store is older than the informer
        process = start_apiserver_process(data_dir, listen=listen)
        # What the informer meets when it resumes from what it saw: Expired, so it lists again
        # (a watch it would retry for ever otherwise).
        with pytest.raises(Expired) as err:
            kube.watch(NODES, str(seen_rv), timeout_seconds=1)
        assert err.value.status == 504 and "Too large resource version" in str(err.value)
        wait_for(lambda: informer.items() == [] and informer.lists >= 2, timeout=60,
                 what="the informer to relist the restored store")
        assert int(informer.resource_version) < seen_rv
        kube.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "new"}})
        wait_for(lambda: [n["metadata"]["name"] for n in informer.items()] == ["new"],
                 what="the informer to follow the restored store")
    finally:
        informer.stop()
        kube.close()
        process.stop()
