"""A minimal OpenAPI v3 description: enough for kubectl to know what the server supports.

kubectl apply validates manifests by asking whether the server accepts the `fieldValidation`
query parameter on PATCH for the object's kind (it looks the operation up in /openapi/v3 by its
x-kubernetes-group-version-kind). We publish one PATCH/PUT/GET path per resource with that
parameter, and no schemas: kubectl then leaves validation to the server and computes strategic
merge patches from its built-in types. We accept the parameter and do not reject unknown fields.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raven.apiserver.resources import Registry, ResourceType

QUERY_PARAMETERS = ("fieldValidation", "fieldManager", "dryRun")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _operation(rtype: ResourceType, verb: str) -> dict[str, Any]:
    return {
        "operationId": f"{verb}{rtype.kind}",
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {
            "group": rtype.group, "version": rtype.version, "kind": rtype.kind,
        },
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in QUERY_PARAMETERS
        ],
        "responses": {"200": {"description": "OK"}},
    }


def group_version_doc(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    base = "/" + _gv_path(group, version)
    for rtype in types:
        scope = f"{base}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{base}/{rtype.plural}"  # noqa: E501
        item = {"get": _operation(rtype, "get"), "put": _operation(rtype, "put"),
                "patch": _operation(rtype, "patch"), "delete": _operation(rtype, "delete")}
        paths[f"{scope}/{{name}}"] = item
        paths[scope] = {"get": _operation(rtype, "list"), "post": _operation(rtype, "post")}
        if rtype.has_status:
            paths[f"{scope}/{{name}}/status"] = {
                "get": _operation(rtype, "get"), "put": _operation(rtype, "put"),
                "patch": _operation(rtype, "patch"),
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (raven embedded API server)", "version": "v1.30.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def root(registry: Registry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, versions in sorted(registry.group_versions().items()):
        for version in versions:
            doc = group_version_doc(registry, group, version)
            digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64]
            path = _gv_path(group, version)
            out[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": out}
