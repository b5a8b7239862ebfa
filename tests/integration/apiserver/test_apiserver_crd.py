"""CustomResourceDefinitions through real clients: validated before they are stored, writes all
or nothing, and a server that always starts on its own data.

Oracles: the official kubernetes client (ApiextensionsV1Api), kubectl, raw HTTPS with
http.client, and the SQLite file read with the sqlite3 module (not through the store).
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import sqlite3
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crd(group: str, **changes: Any) -> dict[str, Any]:
    """A valid namespaced Widget CRD; `changes` maps dotted paths to replacement values."""
    body: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object",
                                               "x-kubernetes-preserve-unknown-fields": True}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
            }],
        },
    }
    for path, value in changes.items():
        target = body
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdecimal() else target[part]
        target[parts[-1]] = value
    return body


def group() -> str:
    return f"g{uuid.uuid4().hex[:6]}.example.com"


def call(server: RunningApiServer, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": content_type}
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, json.loads(data) if data else {}


@pytest.fixture
def ext(server: RunningApiServer) -> Iterator[client.ApiextensionsV1Api]:
    api_client = config.new_client_from_config(config_file=str(server.kubeconfig))
    try:
        yield client.ApiextensionsV1Api(api_client)
    finally:
        api_client.close()


def stored_crd_names(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "store.sqlite") as db:
        rows = db.execute("SELECT name FROM objects WHERE resource="
                          "'apiextensions.k8s.io/customresourcedefinitions'").fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize(("change", "field"), [
    ({"spec.names.shortNames": 5}, "spec.names.shortNames"),
    ({"spec.names.shortNames": ["Not A Label"]}, "spec.names.shortNames[0]"),
    ({"spec.names.categories": "all"}, "spec.names.categories"),
    ({"spec.names.kind": 5}, "spec.names.kind"),
    ({"spec.names.plural": "Widgets"}, "spec.names.plural"),
    ({"spec.versions.0.additionalPrinterColumns": [
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size", "priority": "high"}]},
     "spec.versions[0].additionalPrinterColumns[0].priority"),
    ({"spec.versions.0.additionalPrinterColumns": [
        {"name": "Size", "type": "float", "jsonPath": ".spec.size"}]},
     "spec.versions[0].additionalPrinterColumns[0].type"),
    ({"spec.versions.0.additionalPrinterColumns": "Size"},
     "spec.versions[0].additionalPrinterColumns"),
    ({"spec.versions.0.schema": {"openAPIV3Schema": {"type": "object", "properties": 5}}},
     "spec.versions[0].schema.openAPIV3Schema.properties"),
    ({"spec.versions.0.schema": None}, "spec.versions[0].schema.openAPIV3Schema"),
    ({"spec.versions.0.storage": False}, "spec.versions"),
    ({"spec.versions.0.served": "yes"}, "spec.versions[0].served"),
    ({"spec.versions.0.name": 1}, "spec.versions[0].name"),
    ({"spec.scope": "Global"}, "spec.scope"),
    ({"spec.versions": [5]}, "spec.versions[0]"),
])
def test_malformed_crd_is_422_and_stores_nothing(
    server: RunningApiServer, ext: client.ApiextensionsV1Api, change: dict[str, Any], field: str,
) -> None:
    name_group = group()
    # Raw HTTPS: the kubernetes client refuses to send some of these bodies itself.
    code, status = call(server, "POST", CRDS, crd(name_group, **change))
    assert code == 422, status
    assert status["reason"] == "Invalid"
    assert field in [c["field"] for c in status["details"]["causes"]], status
    assert f"widgets.{name_group}" not in stored_crd_names(server.server.data_dir)
    with pytest.raises(ApiException) as missing:
        ext.read_custom_resource_definition(f"widgets.{name_group}")
    assert missing.value.status == 404
    # Nothing broke: the next, valid CRD is stored and served.
    good = ext.create_custom_resource_definition(crd(group()))
    assert good.status.accepted_names.kind == "Widget"
    code, listing = call(server, "GET", f"/apis/{good.spec.group}/v1")
    assert code == 200 and [r["name"] for r in listing["resources"]] == ["widgets"]


def test_invalid_update_of_a_crd_changes_nothing(
    server: RunningApiServer, ext: client.ApiextensionsV1Api,
) -> None:
    name_group = group()
    created = ext.create_custom_resource_definition(crd(name_group))
    name = created.metadata.name
    for content_type, patch in [
        ("application/merge-patch+json", {"spec": {"names": {"shortNames": 5}}}),
        ("application/json-patch+json",
         [{"op": "replace", "path": "/spec/versions/0/additionalPrinterColumns/0/priority",
           "value": "high"}]),
        ("application/json-patch+json",
         [{"op": "add", "path": "/spec/versions/0/additionalPrinterColumns/0/priority",
           "value": "high"}]),
    ]:
        code, status = call(server, "PATCH", f"{CRDS}/{name}", patch, content_type)
        assert code == 422, status
    bad = copy.deepcopy(crd(name_group))
    bad["metadata"]["resourceVersion"] = created.metadata.resource_version
    bad["spec"]["names"]["shortNames"] = 5
    code, status = call(server, "PUT", f"{CRDS}/{name}", bad)
    assert code == 422 and "shortNames" in status["message"], status
    after = ext.read_custom_resource_definition(name)
    assert after.metadata.resource_version == created.metadata.resource_version
    assert after.spec.names.short_names == ["wd"]


def _insert(data_dir: Path, resource: str, namespace: str, name: str, obj: Any) -> None:
    """Write a row as an older server version (or a hand edit) could have left it."""
    with sqlite3.connect(data_dir / "store.sqlite") as db:
        rv = int(db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()[0]) + 1
        data = obj if isinstance(obj, str) else json.dumps(obj)
        if isinstance(obj, dict):
            obj["metadata"]["resourceVersion"] = str(rv)
            data = json.dumps(obj)
        db.execute("REPLACE INTO objects (resource, namespace, name, rv, data) VALUES "
                   "(?,?,?,?,?)", (resource, namespace, name, rv, data))
        db.execute("REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))


def test_server_starts_on_data_it_cannot_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    data_dir = tmp_path / "api"
    start(ApiServerSettings(data_dir=data_dir, port=0)).stop()  # a store with its namespaces
    broken_group, bad_column_group = group(), group()
    broken = crd(broken_group, **{"spec.names.shortNames": 5})
    broken["metadata"]["uid"] = str(uuid.uuid4())
    _insert(data_dir, "apiextensions.k8s.io/customresourcedefinitions", "",
            broken["metadata"]["name"], broken)
    wide = crd(bad_column_group, **{"spec.versions.0.additionalPrinterColumns": [
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size", "priority": "high"}]})
    wide["metadata"]["uid"] = str(uuid.uuid4())
    _insert(data_dir, "apiextensions.k8s.io/customresourcedefinitions", "",
            wide["metadata"]["name"], wide)
    _insert(data_dir, f"{bad_column_group}/widgets", "default", "w1",
            {"apiVersion": f"{bad_column_group}/v1", "kind": "Widget",
             "metadata": {"name": "w1", "namespace": "default", "uid": str(uuid.uuid4()),
                          "creationTimestamp": "2026-01-01T00:00:00Z"},
             "spec": {"size": 3}})
    _insert(data_dir, "/configmaps", "default", "garbled", "{not json")

    with caplog.at_level(logging.ERROR, logger="raven.apiserver"):
        running = start(ApiServerSettings(data_dir=data_dir, port=0))
    try:
        logged = caplog.text
        assert "skipping CustomResourceDefinition" in logged and broken_group in logged
        assert "garbled" in logged and "cannot be decoded" in logged
        # The undecodable CRD is not served; the other one is, with its (odd) column.
        code, _ = call(running, "GET", f"/apis/{broken_group}/v1")
        assert code == 404
        table = subprocess.run(
            ["kubectl", "--kubeconfig", str(running.kubeconfig), "get",
             f"widgets.{bad_column_group}", "-n", "default", "-o", "wide"],
            capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        assert table.stdout.split() == ["NAME", "SIZE", "w1", "3"]
        # CRD writes work: the broken CRD can be deleted, a new one created.
        code, status = call(running, "DELETE", f"{CRDS}/widgets.{broken_group}")
        assert code == 200, status
        code, status = call(running, "POST", CRDS, crd(group()))
        assert code == 201, status
    finally:
        running.stop()
    start(ApiServerSettings(data_dir=data_dir, port=0)).stop()  # and it starts again
