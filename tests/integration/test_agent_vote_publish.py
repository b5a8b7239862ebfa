"""The agent's pool-gateway vote (raven.agent.Agent.publish_pool_gateway) against the embedded
API server, through the official client: each write is conditional on the Node as the agent
last saw it, so a write that timed out while the pool was cut off and reaches the API server
after the heal (after its retry) cannot reset the retry's offline flag. Oracle: the Node read
back from the API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_support import wait_for

from raven import constants
from raven.agent import Agent
from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings
from raven.kube.client import NODES, Kube, KubeSettings
from raven.kube.errors import Conflict
from raven.kube.informer import Informer
from raven.settings import AgentSettings

VOTE = constants.ANNOTATION_POOL_GATEWAY
OFFLINE = constants.ANNOTATION_POOL_GATEWAY_OFFLINE


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    server: RunningApiServer = start(ApiServerSettings(data_dir=tmp_path / "api", port=0))
    client = Kube(KubeSettings(kubeconfig=server.kubeconfig, request_timeout=5))
    try:
        client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        yield client
    finally:
        client.close()
        server.stop()


def annotations(kube: Kube) -> dict[str, str]:
    return kube.get(NODES, "n1")["metadata"].get("annotations") or {}


def test_a_vote_is_written_on_the_node_as_last_seen(kube: Kube, tmp_path: Path) -> None:
    agent = Agent(AgentSettings(node="n1", state_dir=tmp_path / "state"), kube=kube)
    agent.node = Informer(kube, NODES, field_selector="metadata.name=n1", name="node")
    agent.annotations.kube, agent.annotations.informer = kube, agent.node  # as connect() does
    agent.node.start()
    try:
        assert agent.node.synced.wait(10)
        agent.pool_gateway = "n2"
        assert agent.publish_pool_gateway()
        assert annotations(kube)[VOTE] == "n2" and annotations(kube)[OFFLINE] == "false"
        seen = kube.get(NODES, "n1")["metadata"]["resourceVersion"]
        wait_for(lambda: (agent.node.get("n1") or {}).get("metadata", {}).get(
            "resourceVersion") == seen, timeout=10)
        agent.node.stop()  # the agent's view stays at `seen`
        # The retry after a cut-off lands first (flagged); the agent's stale view must not
        # overwrite it.
        kube.merge_patch(NODES, "n1", {"metadata": {"annotations": {
            VOTE: "n3", OFFLINE: "true"}}})
        agent.pool_gateway = "n4"
        assert not agent.publish_pool_gateway()  # Conflict: retried later, not flagged
        assert annotations(kube)[VOTE] == "n3" and annotations(kube)[OFFLINE] == "true"
        assert not agent._cut_off  # the API server answered: not cut off
        # The same conditional write as a late request would carry: refused by the server.
        with pytest.raises(Conflict):
            kube.merge_patch(NODES, "n1", {"metadata": {"resourceVersion": seen, "annotations": {
                VOTE: "n2", OFFLINE: "false"}}})
        assert annotations(kube)[OFFLINE] == "true"
    finally:
        agent.node.stop()
