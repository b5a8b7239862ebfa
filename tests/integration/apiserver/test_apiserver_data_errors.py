"""Requests with fields of the wrong type or invalid names are 400/422 naming the problem, never
500, and store nothing. Oracle: raw HTTPS (http.client) and reads through the official client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_support import Http
from kubernetes import client, config

from raven.apiserver.server import RunningApiServer

CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def core(server: RunningApiServer) -> Iterator[client.CoreV1Api]:
    api_client = config.new_client_from_config(config_file=str(server.kubeconfig))
    try:
        yield client.CoreV1Api(api_client)
    finally:
        api_client.close()


def configmap(name: Any, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, **fields}


@pytest.mark.parametrize(("body", "field"), [
    (configmap(5), "metadata.name"),
    (configmap(["a"]), "metadata.name"),
    (configmap({"a": 1}), "metadata.name"),
    ({"metadata": {"generateName": 5}}, "metadata.generateName"),
    (configmap("has space"), "metadata.name"),
    (configmap("UPPER"), "metadata.name"),
    (configmap("ünicode"), "metadata.name"),
    (configmap("trailing-newline\n"), "metadata.name"),
    (configmap("a" * 254), "metadata.name"),
    (configmap("ok", data=5), "data"),
    (configmap("ok", data={"k": 5}), "data[k]"),
    (configmap("ok", data={"bad key": "v"}), "data[bad key]"),
    ({"metadata": {"name": "ok", "labels": "a=b"}}, "metadata.labels"),
    ({"metadata": {"name": "ok", "labels": {"a": 5}}}, "metadata.labels[a]"),
    ({"metadata": {"name": "ok", "annotations": ["a"]}}, "metadata.annotations"),
    ({"metadata": {"name": "ok", "finalizers": "x"}}, "metadata.finalizers"),
])
def test_create_with_bad_fields_is_422(
    http_api: Http, core: client.CoreV1Api, body: dict[str, Any], field: str,
) -> None:
    before = len(core.list_namespaced_config_map("default").items)
    code, status = http_api("POST", CM, body)
    assert code == 422, status
    assert status["reason"] == "Invalid"
    assert field in [c["field"] for c in status["details"]["causes"]], status
    assert len(core.list_namespaced_config_map("default").items) == before


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/namespaces", {"metadata": {"name": "dotted.name"}}, "metadata.name"),
    ("/api/v1/namespaces/default/services", {"metadata": {"name": "1starts-with-digit"}},
     "metadata.name"),
    ("/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}, "stringData": ["x"]},
     "stringData"),
    ("/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}, "data": 5}, "data"),
    ("/api/v1/namespaces", {"metadata": {"name": "nsx"}, "spec": "x"}, "spec"),
    ("/api/v1/nodes", {"metadata": {"name": "n1"}, "status": []}, "status"),
])
def test_per_kind_rules_are_422(http_api: Http, path: str, body: dict[str, Any],
                                field: str) -> None:
    code, status = http_api("POST", path, body)
    assert code == 422, status
    assert field in [c["field"] for c in status["details"]["causes"]], status


def test_valid_names_per_kind_are_accepted(http_api: Http) -> None:
    assert http_api("POST", CM, configmap("dotted.name-1"))[0] == 201
    assert http_api("POST", "/api/v1/namespaces/default/services",
                    {"metadata": {"name": "svc-1"}})[0] == 201
    assert http_api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                    {"metadata": {"name": "system:Weird Name"}})[0] == 201


@pytest.fixture
def existing(http_api: Http) -> dict[str, Any]:
    code, obj = http_api("POST", CM, configmap("target", data={"a": "1"}))
    assert code == 201
    return obj


@pytest.mark.parametrize(("content_type", "patch", "code"), [
    ("application/json-patch+json", [{"op": "add", "path": 5, "value": 1}], 400),
    ("application/json-patch+json", [{"op": "add", "path": ["data"], "value": 1}], 400),
    ("application/json-patch+json", [{"op": "move", "from": 5, "path": "/data/b"}], 400),
    ("application/json-patch+json", [{"op": "copy", "from": None, "path": "/data/b"}], 400),
    ("application/json-patch+json", [{"op": "copy", "from": "/data/a", "path": 7}], 400),
    ("application/json-patch+json", [{"op": "frobnicate", "path": "/data"}], 400),
    ("application/json-patch+json", [{"op": "remove", "path": "/data/\u00b2"}], 422),
    ("application/json-patch+json", {"op": "add"}, 400),
    ("application/strategic-merge-patch+json", {"$setElementOrder/data": 5}, 400),
    ("application/strategic-merge-patch+json", {"$deleteFromPrimitiveList/x": 5}, 400),
    ("application/strategic-merge-patch+json", {"$retainKeys": 5}, 400),
    ("application/strategic-merge-patch+json", {"$patch": 5}, 400),
    ("application/strategic-merge-patch+json", {"metadata": {"$patch": ["x"]}}, 400),
    ("application/strategic-merge-patch+json",
     {"metadata": {"finalizers": ["a"], "$setElementOrder/finalizers": "x"}}, 400),
    ("application/strategic-merge-patch+json", {"data": 5}, 422),
    ("application/merge-patch+json", {"metadata": {"name": 5}}, 422),
    ("application/merge-patch+json", {"metadata": {"labels": {"a": {"b": "c"}}}}, 422),
    ("application/merge-patch+json", {"data": {"a": 1}}, 422),
])
def test_bad_patches_are_400_or_422_and_change_nothing(
    http_api: Http, existing: dict[str, Any], content_type: str, patch: Any, code: int,
) -> None:
    got, status = http_api("PATCH", f"{CM}/target", patch, content_type)
    assert got == code, status
    assert status["kind"] == "Status" and status["code"] == code
    after = http_api("GET", f"{CM}/target")[1]
    assert after["metadata"]["resourceVersion"] == existing["metadata"]["resourceVersion"]


@pytest.mark.parametrize(("options", "code"), [
    ({"preconditions": "x"}, 400),
    ({"preconditions": {"uid": 5}}, 400),
    ({"preconditions": {"resourceVersion": ["1"]}}, 400),
    ({"dryRun": 5}, 400),
    ({"dryRun": "All"}, 400),
    ({"dryRun": ["Some"]}, 422),
    ({"gracePeriodSeconds": "soon"}, 400),
    ({"propagationPolicy": 1}, 400),
    (["All"], 400),
])
def test_bad_delete_options_are_refused_and_delete_nothing(
    http_api: Http, existing: dict[str, Any], options: Any, code: int,
) -> None:
    got, status = http_api("DELETE", f"{CM}/target", options)
    assert got == code, status
    assert http_api("GET", f"{CM}/target")[0] == 200
    got, status = http_api("DELETE", CM, options)  # deletecollection too
    assert got == code, status
    assert http_api("GET", f"{CM}/target")[0] == 200


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize("token", [
    "not-base64!", base64.urlsafe_b64encode(b"\xff\xfe").decode(), _token(5),
    _token(["a", "b"]), _token([{"x": 1}, "b", "3"]), _token(["", ["n"], "3"]),
    _token(["", "n", "x"]), _token(["", "n", "\u00b2"]), _token({"a": 1}),
])
def test_malformed_continue_tokens_are_400(http_api: Http, token: str) -> None:
    code, status = http_api("GET", f"{CM}?limit=1&continue={token}")
    assert code == 400, status
    assert "continue token" in status["message"]


def test_continue_tokens_still_page(http_api: Http) -> None:
    for n in range(3):
        assert http_api("POST", CM, configmap(f"page-{n}"))[0] == 201
    names, token = [], ""
    while True:
        code, page = http_api("GET", f"{CM}?limit=1" + (f"&continue={token}" if token else ""))
        assert code == 200
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert names == ["page-0", "page-1", "page-2"]


def test_a_refused_namespace_delete_deletes_nothing(http_api: Http) -> None:
    assert http_api("POST", "/api/v1/namespaces", {"metadata": {"name": "keep"}})[0] == 201
    path = "/api/v1/namespaces/keep/configmaps"
    assert http_api("POST", path, configmap("inside"))[0] == 201
    code, status = http_api("DELETE", "/api/v1/namespaces/keep",
                            {"preconditions": {"uid": "not-its-uid"}})
    assert code == 409, status
    assert http_api("GET", f"{path}/inside")[0] == 200
    assert http_api("GET", "/api/v1/namespaces/keep")[0] == 200


def test_a_status_of_the_wrong_type_is_422(http_api: Http) -> None:
    code, created = http_api("POST", "/api/v1/nodes", {"metadata": {"name": "n-status"}})
    assert code == 201, created
    body = dict(created, status=["not", "an", "object"])
    code, status = http_api("PUT", "/api/v1/nodes/n-status/status", body)
    assert code == 422 and "status" in [c["field"] for c in status["details"]["causes"]]
    after = http_api("GET", "/api/v1/nodes/n-status")[1]
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
