"""Malformed requests get a 4xx Status, never a 500; names in paths are decoded and checked.

Real clients only: the official kubernetes client and kubectl where they can send the request,
http.client (TLS, verified against the server's CA) for what they never send. One server
subprocess is shared by the module.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from apiserver_support import ApiServerProcess, apiserver_module  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


class Http:
    """Keep-alive http.client connection to the server, reopened when the server closes it."""

    def __init__(self, server: ApiServerProcess) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
        self.conn: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                token: bool = True) -> tuple[int, dict[str, str], bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.server.port,
                                                    context=self.context, timeout=60)
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {self.server.token}"
        self.conn.request(method, path, body=body, headers=all_headers)
        response = self.conn.getresponse()
        data = response.read()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, data
        if response.will_close:
            self.close()
        return result

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def raw(apiserver_module: ApiServerProcess) -> Iterator[Http]:  # noqa: F811
    session = Http(apiserver_module)
    try:
        yield session
    finally:
        session.close()


def status_of(code: int, body: bytes) -> dict[str, Any]:
    status = json.loads(body)
    assert status["kind"] == "Status" and status["code"] == code
    return status


# --------------------------------------------------------------------------- query


@pytest.mark.parametrize("query", [
    "limit=%C2%B2", "limit=-1", "limit=ten", "watch=true&timeoutSeconds=%C2%B2",
    "watch=true&resourceVersion=%C2%B2", "watch=true&resourceVersion=%D9%A3",
    "watch=true&timeoutSeconds=1e3",
])
def test_malformed_counts_in_queries_are_400(raw: Http, query: str) -> None:
    code, _, body = raw.request("GET", f"{CONFIGMAPS}?{query}")
    assert code == 400
    name = query.rsplit("&", 1)[-1].split("=")[0]
    assert name in status_of(400, body)["message"]


def test_limit_still_pages_with_the_kubernetes_client(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    for i in range(3):
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"{prefix}-{i}", labels={"page": prefix})))
    first = core.list_namespaced_config_map("default", label_selector=f"page={prefix}", limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    rest = core.list_namespaced_config_map("default", label_selector=f"page={prefix}", limit=2,
                                           _continue=first.metadata._continue)
    assert [c.metadata.name for c in rest.items] == [f"{prefix}-2"]


# --------------------------------------------------------------------------- bodies


def test_deeply_nested_json_is_400(raw: Http) -> None:
    for depth in (300, 100_000):
        code, _, body = raw.request("POST", CONFIGMAPS, b"[" * depth + b"]" * depth,
                                     {"Content-Type": "application/json"})
        assert code == 400 and "nested" in status_of(400, body)["message"]


@pytest.mark.parametrize(("method", "path", "media", "payload"), [
    ("POST", CONFIGMAPS, "application/json", b"[1, 2]"),
    ("POST", CONFIGMAPS, "application/json", b'"configmap"'),
    ("POST", CONFIGMAPS, "application/json", b"null"),
    ("POST", CONFIGMAPS, "application/yaml", b"- a\n- b\n"),
    ("PUT", CONFIGMAPS + "/kube-root", "application/json", b"5"),
    ("PATCH", CONFIGMAPS + "/kube-root", "application/merge-patch+json", b"[]"),
    ("PATCH", CONFIGMAPS + "/kube-root", "application/strategic-merge-patch+json", b"true"),
    ("PATCH", CONFIGMAPS + "/kube-root", "application/json-patch+json", b"{}"),
    ("DELETE", CONFIGMAPS + "/kube-root", "application/json", b"[]"),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "application/json",
     b"[]"),
])
def test_bodies_that_are_not_objects_are_400(raw: Http, method: str, path: str, media: str,
                                             payload: bytes) -> None:
    code, _, body = raw.request(method, path, payload, {"Content-Type": media})
    assert code == 400, body
    assert "JSON" in status_of(400, body)["message"]


def test_yaml_alias_bomb_is_refused_unexpanded(raw: Http) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n"
            + "\n".join("  " + line for line in lines) + "\n").encode()
    code, _, body = raw.request("POST", CONFIGMAPS, bomb, {"Content-Type": "application/yaml"})
    assert code == 400 and "aliases" in status_of(400, body)["message"]


def test_yaml_bodies_still_create(raw: Http, api: client.ApiClient) -> None:
    name = f"yaml-{uuid.uuid4().hex[:6]}"
    manifest = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n"
    code, _, body = raw.request("POST", CONFIGMAPS, manifest.encode(),
                                 {"Content-Type": "application/yaml"})
    assert code == 201, body
    assert client.CoreV1Api(api).read_namespaced_config_map(name, "default").data == {"k": "v"}


# --------------------------------------------------------------------------- names


def test_names_with_spaces_and_unicode_are_reachable(api: client.ApiClient,
                                                     apiserver_module: ApiServerProcess,  # noqa: F811
                                                     ) -> None:
    """RBAC names only follow path-segment rules; whatever is stored must be reachable."""
    rbac = client.RbacAuthorizationV1Api(api)
    name = f"ops team ü {uuid.uuid4().hex[:4]}"
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name)))
    assert rbac.read_cluster_role(name).metadata.name == name
    shown = subprocess.run(
        ["kubectl", "--kubeconfig", str(apiserver_module.kubeconfig), "get", "clusterrole",
         name, "-o", "jsonpath={.metadata.name}"],
        capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout == name, shown.stderr
    rbac.delete_cluster_role(name)
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(name)
    assert gone.value.status == 404


@pytest.mark.parametrize(("segment", "problem"), [
    ("a%2Fb", "'/'"), ("100%25", "'%'"), ("%2E%2E", "'..'"), ("%2E", "'.'"),
])
def test_names_breaking_path_segment_rules_are_400(raw: Http, segment: str,
                                                   problem: str) -> None:
    for path in (f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{segment}",
                 f"/api/v1/namespaces/{segment}/configmaps/x"):
        code, _, body = raw.request("GET", path)
        assert code == 400 and problem in status_of(400, body)["message"]


def test_rbac_names_breaking_path_segment_rules_cannot_be_created(api: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    for name in ("a/b", "..", "50%"):
        with pytest.raises(ApiException) as err:
            rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name)))
        assert err.value.status == 422


# --------------------------------------------------------------------------- fuzz

SEGMENTS = st.one_of(
    st.sampled_from(["api", "apis", "v1", "namespaces", "default", "configmaps", "nodes",
                     "gateways", "raven.openyurt.io", "v1beta1", "watch", "status", "finalize",
                     "openapi", "v3", "healthz", "version", "%2F", "%25", "%2E", "%FF", "%",
                     "..", "kube-root", "clusterroles", "rbac.authorization.k8s.io"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), max_size=6)
    .map(lambda t: quote(t, safe="")),
)
TEMPLATES = ["/api/v1/namespaces/default/configmaps", "/api/v1/namespaces/default/configmaps/{}",
             "/api/v1/namespaces/{}/configmaps", "/api/v1/nodes/{}", "/api/v1/nodes/{}/status",
             "/api/v1/namespaces/{}", "/api/v1/namespaces/{}/finalize",
             "/apis/raven.openyurt.io/v1beta1/gateways",
             "/apis/raven.openyurt.io/v1beta1/gateways/{}/status",
             "/apis/raven.openyurt.io/v1alpha1/gateways/{}", "/api/v1/watch/namespaces/{}/events",
             "/apis/coordination.k8s.io/v1/namespaces/default/leases/{}",
             "/apis/rbac.authorization.k8s.io/v1/clusterroles/{}", "/openapi/v3/apis/{}/v1"]
# Mostly paths the server serves (where the interesting code runs), some arbitrary ones.
PATHS = st.one_of(
    st.sampled_from(TEMPLATES).map(lambda t: t.format("kube-system")),
    st.tuples(st.sampled_from(TEMPLATES), SEGMENTS).map(lambda t: t[0].format(t[1])),
    st.lists(SEGMENTS, max_size=7).map(lambda segments: "/" + "/".join(segments)),
)
COUNT_KEYS = st.sampled_from(["limit", "timeoutSeconds", "resourceVersion"])
ODD_NUMBERS = st.sampled_from(["²", "٣", "-1", "1.5", "1e3", "0x1", "99999999999999999999", " 1"])
QUERY = st.lists(st.one_of(st.tuples(COUNT_KEYS, ODD_NUMBERS), st.tuples(
    st.sampled_from(["limit", "continue", "watch", "timeoutSeconds", "resourceVersion",
                     "labelSelector", "fieldSelector", "dryRun", "fieldManager", "force"]),
    st.one_of(st.sampled_from(["1", "0", "true", "All", "²", "-1", "", "a=b", "x!=", "%"]),
              st.text(max_size=6)))), max_size=3)
BODY = st.one_of(
    st.none(), st.binary(max_size=64),
    st.sampled_from([b"{}", b"[]", b"null", b'{"metadata":{"name":"fz"}}', b'{"metadata":5}',
                     b'{"metadata":{"name":5}}', b'{"metadata":{"labels":[1]}}',
                     b'[{"op":"add","path":"/x","value":1}]', b"a: &x 1\nb: *x\n"]),
)
MEDIA = st.sampled_from(["application/json", "application/yaml", "application/merge-patch+json",
                         "application/strategic-merge-patch+json", "application/json-patch+json",
                         "application/apply-patch+yaml", "text/plain"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE"]), path=PATHS,
       query=QUERY, body=BODY, media=MEDIA)
def test_any_request_gets_a_well_formed_non_500_answer(
    apiserver_module: ApiServerProcess,  # noqa: F811
    method: str, path: str, query: list[tuple[str, str]], body: bytes | None, media: str,
) -> None:
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query)
    if (method == "GET" and any(k == "watch" for k, _ in query)) or "/watch/" in path:
        path += ("&" if "?" in path else "?") + "timeoutSeconds=0"  # watches end at once
    session = Http(apiserver_module)
    try:
        code, _, data = session.request(method, path, body, {"Content-Type": media})
    finally:
        session.close()
    assert 200 <= code < 500, (code, data[:300])
    if code >= 400:
        status_of(code, data)
