"""A JSON patch cannot grow an object without bound (issue 13, round two).

Found: `copy` of a value into itself doubles it and nests it a level deeper, so a 1 KB body of
30 operations made a 2**30-node object (memory exhausted under the store's write path), and
`add` operations one level below the last could nest an object past the depth the JSON encoder
and deepcopy recurse to (a later write of it: 500). Now both are 422 and nothing is written;
the server keeps serving.
"""

from __future__ import annotations

import json
import uuid

import pytest
from apiserver_support import ApiServerProcess, apiserver_module  # noqa: F401
from kubernetes import client
from kubernetes.client.rest import ApiException


def _patch(api_client: client.ApiClient, name: str, ops: list[dict]) -> ApiException:
    apps = client.AppsV1Api(api_client)
    with pytest.raises(ApiException) as caught:
        apps.patch_namespaced_deployment(name, "default", ops)  # list body: json-patch
    return caught.value


def _deployment(api_client: client.ApiClient) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    client.AppsV1Api(api_client).create_namespaced_deployment("default", {
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}},
    })
    return name


def test_a_copy_bomb_is_refused_and_writes_nothing(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    with apiserver_module.api_client() as api_client:
        name = _deployment(api_client)
        before = client.AppsV1Api(api_client).read_namespaced_deployment(name, "default")
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {}},
               {"op": "add", "path": "/spec/template/spec/containers/0/args",
                "value": [["x"] * 16]}]
        ops += [{"op": "copy", "from": "/spec/template/spec/containers/0/args",
                 "path": "/spec/template/spec/containers/0/args/-"}] * 60
        error = _patch(api_client, name, ops)
        assert error.status == 422, error.body
        assert "json patch" in json.loads(error.body)["message"]
        after = client.AppsV1Api(api_client).read_namespaced_deployment(name, "default")
        assert after.metadata.resource_version == before.metadata.resource_version


def test_adds_that_nest_past_the_depth_bound_are_refused(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    with apiserver_module.api_client() as api_client:
        name = _deployment(api_client)
        path = "/spec/template/metadata/annotations"
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {}}]
        deep = "/spec/x"
        ops.append({"op": "add", "path": deep, "value": {}})
        for _ in range(250):
            deep += "/x"
            ops.append({"op": "add", "path": deep, "value": {}})
        error = _patch(api_client, name, ops)
        assert error.status == 422, error.body
        assert "levels deep" in json.loads(error.body)["message"]
        # A deep value added at a shallow path is measured too.
        value: dict = {}
        for _ in range(150):
            value = {"x": value}
        error = _patch(api_client, name, [
            {"op": "add", "path": "/spec/y", "value": value},  # 152 levels: allowed
            {"op": "copy", "from": "/spec/y", "path": "/spec/y" + "/x" * 60 + "/z"}])
        assert error.status == 422
        assert "levels deep" in json.loads(error.body)["message"]
        # Ordinary patches still apply.
        client.AppsV1Api(api_client).patch_namespaced_deployment(name, "default", [
            {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
            {"op": "copy", "from": "/metadata/labels", "path": path}])
