"""Bounded fuzzing over HTTPS: patches of every type and object bodies of any shape get an
answer below 500, and a refused request changes nothing. Oracle: the HTTP status codes and a
re-read of the object (resourceVersion unchanged after a refusal).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from apiserver_support import Http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CM = "/api/v1/namespaces/default/configmaps"
GATEWAYS = "/apis/raven.openyurt.io/v1beta1/gateways"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json")
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

keys = st.sampled_from(["metadata", "name", "labels", "annotations", "data", "spec", "status",
                        "finalizers", "$patch", "$retainKeys", "$setElementOrder/data",
                        "$deleteFromPrimitiveList/finalizers", "endpoints", "nodeName",
                        "generateName", "resourceVersion", "a", "b", ""]) | st.text(max_size=6)
scalars = (st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False)
           | st.text(max_size=8) | st.sampled_from(["replace", "delete", "merge", "/", "/data",
                                                   "/metadata/name", "-", "All", "\u00b2"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
pointers = st.lists(st.sampled_from(["metadata", "data", "labels", "name", "a", "0", "-",
                                     "\u00b2", "~1", ""]), max_size=4).map(
    lambda parts: "/" + "/".join(parts)) | values
operations = st.lists(st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test"]) | values,
     "path": pointers},
    optional={"value": values, "from": pointers}) | values, max_size=4)


def fresh(http_api: Http, path: str, body: dict[str, Any]) -> dict[str, Any]:
    name = f"f-{uuid.uuid4().hex[:8]}"
    body = json.loads(json.dumps(body))
    body["metadata"]["name"] = name
    code, obj = http_api("POST", path, body)
    assert code == 201, obj
    return obj


def check_patch(http_api: Http, path: str, obj: dict[str, Any], content_type: str,
                patch: Any) -> None:
    url = f"{path}/{obj['metadata']['name']}"
    code, answer = http_api("PATCH", url, patch, content_type)
    assert code < 500, (content_type, patch, answer)
    if code >= 400:
        assert answer["kind"] == "Status" and answer["code"] == code
        after = http_api("GET", url)[1]
        assert after["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


@FUZZ
@given(content_type=st.sampled_from(PATCH_TYPES), patch=values | operations)
def test_configmap_patches_never_500(http_api: Http, content_type: str, patch: Any) -> None:
    obj = fresh(http_api, CM, {"metadata": {"name": "", "labels": {"a": "1"},
                                            "finalizers": ["x/y"]}, "data": {"a": "1"}})
    check_patch(http_api, CM, obj, content_type, patch)


@FUZZ
@given(content_type=st.sampled_from(PATCH_TYPES), patch=values | operations)
def test_gateway_patches_never_500(http_api: Http, content_type: str, patch: Any) -> None:
    obj = fresh(http_api, GATEWAYS, {
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway", "metadata": {"name": ""},
        "spec": {"endpoints": [{"nodeName": "n1", "type": "tunnel", "port": 4500,
                                "underNAT": False, "publicIP": "192.0.2.10"}],
                 "tunnelConfig": {"Replicas": 1}}})
    check_patch(http_api, GATEWAYS, obj, content_type, patch)


@FUZZ
@given(path=st.sampled_from([CM, "/api/v1/namespaces/default/secrets", "/api/v1/nodes",
                             "/api/v1/namespaces", "/api/v1/namespaces/default/events",
                             GATEWAYS,
                             "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                             "/apis/apps/v1/namespaces/default/deployments",
                             "/apis/coordination.k8s.io/v1/namespaces/default/leases"]),
       body=st.dictionaries(keys, values, max_size=5),
       metadata=st.dictionaries(keys, values, max_size=4))
def test_object_bodies_never_500(http_api: Http, path: str, body: dict[str, Any],
                                 metadata: dict[str, Any]) -> None:
    body = dict(body, metadata=metadata)
    code, answer = http_api("POST", path, body)
    assert code < 500, (path, body, answer)
    if code == 201:
        name = answer["metadata"]["name"]
        code, answer = http_api("PUT", f"{path}/{name}", dict(body, metadata=dict(
            answer["metadata"])))
        assert code < 500, (path, body, answer)
