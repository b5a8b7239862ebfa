"""Adversarial acceptance of issue 13, round two: inputs the first fixes missed.

- A JSON or YAML string holding a lone UTF-16 surrogate escape (`"\\ud800"`) decodes to a Python
  string that no response and no stored row can encode: it was a 400 by accident ("the query is
  not valid") or, when the string reached an error message (a name), a connection closed with no
  answer at all. Now a 400 naming the string, for every verb and resource.
- A CRD's `spec.scope` was mutable: flipping Namespaced -> Cluster -> Namespaced left objects that
  no path could reach by name. It is immutable, as in kube-apiserver.

Real clients: http.client (TLS, the server's CA) for bodies no Kubernetes client sends, the
official client for the CRD.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from apiserver_support import ApiServerProcess, apiserver_module  # noqa: F401
from kubernetes import client
from kubernetes.client.rest import ApiException

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def request(server: ApiServerProcess, method: str, path: str, body: bytes,
            content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    try:
        conn.request(method, path, body=body, headers={
            "Authorization": f"Bearer {server.token}", "Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


LONE_SURROGATE_BODIES = [
    (b'{"metadata":{"name":"\\ud800"}}', "application/json"),
    (b'{"metadata":{"name":"NAME"},"data":{"k":"\\udfff"}}', "application/json"),
    (b'{"metadata":{"name":"NAME","labels":{"\\uDC80":"x"}}}', "application/json"),
    (b'{"metadata":{"name":"NAME"},"data":{"k":"a\\ud83d"}}', "application/json"),
    (b'metadata: {name: NAME}\ndata: {k: "\\ud800"}\n', "application/yaml"),
    (b'metadata: {name: NAME}\ndata: {k: "\\U0000dc00"}\n', "application/yaml"),
]


@pytest.mark.parametrize(("body", "content_type"), LONE_SURROGATE_BODIES)
def test_a_lone_surrogate_in_a_body_is_a_400_for_every_verb(
    apiserver_module: ApiServerProcess, body: bytes, content_type: str,  # noqa: F811
) -> None:
    server = apiserver_module
    name = f"s-{uuid.uuid4().hex[:8]}"
    code, _ = request(server, "POST", CONFIGMAPS,
                      json.dumps({"metadata": {"name": name}, "data": {"k": "v"}}).encode())
    assert code == 201
    body = body.replace(b"NAME", name.encode())
    attempts = [("POST", CONFIGMAPS, content_type),
                ("PUT", f"{CONFIGMAPS}/{name}", content_type),
                ("PATCH", f"{CONFIGMAPS}/{name}", "application/merge-patch+json"),
                ("PATCH", f"{CONFIGMAPS}/{name}", "application/strategic-merge-patch+json")]
    if content_type != "application/json":
        attempts = attempts[:2]
    for method, path, media in attempts:
        code, status = request(server, method, path, body, media)
        assert code == 400, (method, status)
        assert status["kind"] == "Status"
        assert "surrogate" in status["message"], status
    # Nothing was written; a valid surrogate pair still is an emoji.
    code, stored = request(server, "GET", f"{CONFIGMAPS}/{name}", b"")
    assert code == 200 and stored["data"] == {"k": "v"}
    code, patched = request(server, "PATCH", f"{CONFIGMAPS}/{name}",
                            b'{"data":{"k":"\\ud83d\\ude00"}}', "application/merge-patch+json")
    assert code == 200 and patched["data"]["k"] == "\U0001F600"


def test_a_lone_surrogate_in_an_access_review_or_delete_options_is_a_400(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    server = apiserver_module
    code, status = request(
        server, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        b'{"spec":{"resourceAttributes":{"verb":"\\ud800"}}}')
    assert code == 400 and "surrogate" in status["message"]
    code, status = request(server, "DELETE", f"{CONFIGMAPS}/nothing",
                           b'{"propagationPolicy":"\\ud800"}')
    assert code == 400 and "surrogate" in status["message"]


def _crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                           "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {
                                   "type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def test_a_crd_scope_cannot_change_so_no_object_becomes_unreachable(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.example.com"
    with apiserver_module.api_client() as api_client:
        ext = client.ApiextensionsV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        ext.create_custom_resource_definition(_crd(group))
        custom.create_namespaced_custom_object(
            group, "v1", "default", "widgets",
            {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w1"}})
        crd = ext.read_custom_resource_definition(f"widgets.{group}")
        crd.spec.scope = "Cluster"
        for write in (
            lambda: ext.replace_custom_resource_definition(f"widgets.{group}", crd),
            lambda: ext.patch_custom_resource_definition(
                f"widgets.{group}", {"spec": {"scope": "Cluster"}}),
        ):
            with pytest.raises(ApiException) as caught:
                write()
            assert caught.value.status == 422
            assert "spec.scope" in caught.value.body and "immutable" in caught.value.body
        assert custom.get_namespaced_custom_object(
            group, "v1", "default", "widgets", "w1")["metadata"]["name"] == "w1"
        # Other updates of the same CRD still work.
        ext.patch_custom_resource_definition(
            f"widgets.{group}", {"spec": {"names": {"shortNames": ["wdg"]}}})


def _raw_request(server: ApiServerProcess, target: bytes) -> tuple[int, dict[str, Any]]:
    """One GET with a request target sent byte for byte (http.client refuses non-ASCII)."""
    context = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as plain, \
            context.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + f"Authorization: Bearer {server.token}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_raw_utf8_in_a_path_names_the_same_object_as_its_percent_escapes(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    name = f"ops team \u00fc {uuid.uuid4().hex[:6]}"  # RBAC names only follow path-segment rules
    with apiserver_module.api_client() as api_client:
        client.RbacAuthorizationV1Api(api_client).create_cluster_role(
            {"metadata": {"name": name}, "rules": []})
    base = b"/apis/rbac.authorization.k8s.io/v1/clusterroles/"
    code, obj = _raw_request(apiserver_module, base + name.replace(" ", "%20").encode())
    assert code == 200 and obj["metadata"]["name"] == name
    # A raw byte that is not UTF-8 is refused like its escape %FF, never read as Latin-1.
    code, status = _raw_request(apiserver_module, base + b"\xff\xfe")
    assert code == 400 and status["reason"] == "BadRequest", status
    # Raw UTF-8 in a query value too: a label selector on a value with no match is fine.
    code, listed = _raw_request(
        apiserver_module, b"/api/v1/namespaces?labelSelector=a%3D\xc3\xbc")
    assert code == 400 or listed["kind"] == "NamespaceList"


@pytest.mark.parametrize("path", ["/api/v1/namespaces?watch=true&timeoutSeconds=5",
                                  "/api/v1/watch/namespaces?timeoutSeconds=5"])
def test_head_of_a_watch_is_405_without_a_body(
    apiserver_module: ApiServerProcess, path: str,  # noqa: F811
) -> None:
    """HEAD of a watch streamed events after the headers: a response body to a HEAD, which a
    keep-alive client reads as the start of its next response."""
    context = ssl.create_default_context(cafile=str(apiserver_module.data_dir / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", apiserver_module.port, context=context,
                                       timeout=30)
    try:
        headers = {"Authorization": f"Bearer {apiserver_module.token}"}
        conn.request("HEAD", path, headers=headers)
        response = conn.getresponse()
        assert response.status == 405
        assert response.read() == b""
        conn.request("GET", "/version", headers=headers)  # the connection is still in step
        follow = conn.getresponse()
        assert follow.status == 200 and json.loads(follow.read())["major"]
    finally:
        conn.close()


def test_deletecollection_refused_for_one_item_deletes_none(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    """It deleted the items sorted before the refused one, then answered the refusal."""
    tag = uuid.uuid4().hex[:8]
    with apiserver_module.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespace({"metadata": {"name": f"aaa-{tag}"}})  # sorts before "default"
        code, status = request(apiserver_module, "DELETE", "/api/v1/namespaces", b"")
        assert code == 403, status
        assert core.read_namespace(f"aaa-{tag}").metadata.name == f"aaa-{tag}"
        first = core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"a-{tag}", "labels": {"t": tag}}})
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"b-{tag}", "labels": {"t": tag}}})
        with pytest.raises(ApiException) as caught:
            core.delete_collection_namespaced_config_map(
                "default", label_selector=f"t={tag}",
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                    resource_version=first.metadata.resource_version)))
        assert caught.value.status == 409
        assert len(core.list_namespaced_config_map(
            "default", label_selector=f"t={tag}").items) == 2
        core.delete_collection_namespaced_config_map("default", label_selector=f"t={tag}")
        assert core.list_namespaced_config_map("default", label_selector=f"t={tag}").items == []
        core.delete_namespace(f"aaa-{tag}")


def test_creates_racing_a_crd_delete_leave_no_object_behind(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    """A create routed just before its CRD was deleted stored its object after the cascade:
    it outlived the CRD and came back when the CRD was made again (3 of 3 rounds, before)."""
    group = f"race{uuid.uuid4().hex[:8]}.example.com"
    plural_path = f"/apis/{group}/v1/namespaces/default/widgets"
    context = ssl.create_default_context(cafile=str(apiserver_module.data_dir / "ca.crt"))
    headers = {"Authorization": f"Bearer {apiserver_module.token}",
               "Content-Type": "application/json"}
    with apiserver_module.api_client() as api_client:
        ext = client.ApiextensionsV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        for round_ in range(3):
            ext.create_custom_resource_definition(_crd(group))
            stop = threading.Event()

            def creator(worker: int, stop: threading.Event, round_: int) -> None:
                conn = http.client.HTTPSConnection("127.0.0.1", apiserver_module.port,
                                                   context=context, timeout=30)
                index = 0
                while not stop.is_set():
                    body = {"apiVersion": f"{group}/v1", "kind": "Widget",
                            "metadata": {"name": f"w{round_}-{worker}-{index}"}}
                    conn.request("POST", plural_path, json.dumps(body), headers)
                    conn.getresponse().read()
                    index += 1
                conn.close()

            threads = [threading.Thread(target=creator, args=(w, stop, round_))
                       for w in range(3)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            ext.delete_custom_resource_definition(f"widgets.{group}")
            time.sleep(0.2)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            ext.create_custom_resource_definition(_crd(group))
            listed = custom.list_cluster_custom_object(group, "v1", "widgets")
            assert listed["items"] == [], [i["metadata"]["name"] for i in listed["items"]]
            ext.delete_custom_resource_definition(f"widgets.{group}")


@pytest.mark.parametrize("name", ["ops,team", "a=b", "back\\slash", "x,metadata.name!=x"])
def test_watch_and_field_selectors_on_names_with_selector_syntax(
    apiserver_module: ApiServerProcess, name: str,  # noqa: F811
) -> None:
    """The single-object watch built `metadata.name=<name>` unescaped ("ops,team": 400), and
    field selector values were not unescaped the way client-go escapes them (kubectl get NAME
    -w sends `metadata.name=ops\\,team`)."""
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    with apiserver_module.api_client() as api_client:
        rbac = client.RbacAuthorizationV1Api(api_client)
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": []})
        escaped = name.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
        listed = rbac.list_cluster_role(field_selector=f"metadata.name={escaped}")
        assert [r.metadata.name for r in listed.items] == [name]
    segment = quote(name, safe="")
    for path in (f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{segment}"
                 "?watch=1&timeoutSeconds=1",
                 f"/apis/rbac.authorization.k8s.io/v1/watch/clusterroles/{segment}"
                 "?timeoutSeconds=1"):
        context = ssl.create_default_context(
            cafile=str(apiserver_module.data_dir / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", apiserver_module.port,
                                           context=context, timeout=30)
        try:
            conn.request("GET", path,
                         headers={"Authorization": f"Bearer {apiserver_module.token}"})
            response = conn.getresponse()
            lines = [json.loads(line) for line in response.read().splitlines() if line]
        finally:
            conn.close()
        assert response.status == 200, lines
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", name)]


@pytest.mark.parametrize(("resource_version", "code"),
                         [("abc", 400), ("-1", 400), ("99999999999999", 504), ("", 200)])
def test_send_initial_events_checks_its_resource_version(
    apiserver_module: ApiServerProcess, resource_version: str, code: int,  # noqa: F811
) -> None:
    """With sendInitialEvents=true the resourceVersion was not looked at: garbage or one from
    the future (a store restored from a backup) started a watch as if it were fine."""
    context = ssl.create_default_context(cafile=str(apiserver_module.data_dir / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", apiserver_module.port, context=context,
                                       timeout=30)
    try:
        conn.request("GET", "/api/v1/namespaces?watch=1&timeoutSeconds=1&sendInitialEvents=true"
                     f"&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
                     f"&resourceVersion={resource_version}",
                     headers={"Authorization": f"Bearer {apiserver_module.token}"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == code, body[:300]
    if code == 504:
        assert json.loads(body)["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
