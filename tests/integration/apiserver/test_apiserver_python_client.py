"""The embedded API server through the official `kubernetes` Python client (no mocks).

One server subprocess is shared by the module; every test uses its own unique names.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_support import ApiServerProcess, apiserver_module  # noqa: F401
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

GROUP, V1BETA1, V1ALPHA1 = "raven.openyurt.io", "v1beta1", "v1alpha1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = unique("rvt-ns")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def gateway(name: str, node: str = "n1", public_ip: str = "192.0.2.10") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{V1BETA1}", "kind": "Gateway", "metadata": {"name": name},
        "spec": {
            "endpoints": [{"nodeName": node, "type": "tunnel", "port": 4500,
                           "underNAT": False, "publicIP": public_ip}],
            "tunnelConfig": {"Replicas": 1},
        },
    }


def node(name: str, labels: dict[str, str] | None = None) -> client.V1Node:
    return client.V1Node(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1NodeSpec(pod_cidr="10.244.1.0/24", pod_cidrs=["10.244.1.0/24"]),
        status=client.V1NodeStatus(addresses=[
            client.V1NodeAddress(type="InternalIP", address="192.0.2.21")
        ]),
    )


# --------------------------------------------------------------------------- basics


def test_bootstrap_namespaces_and_version(api: client.ApiClient, core: client.CoreV1Api) -> None:
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    info = client.VersionApi(api).get_code()
    assert info.major == "1" and info.git_version.startswith("v1.")


def test_every_request_needs_the_token(apiserver_module: ApiServerProcess) -> None:  # noqa: F811
    context = ssl.create_default_context(cafile=str(apiserver_module.data_dir / "ca.crt"))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        request = urllib.request.Request(f"{apiserver_module.url}/api/v1/namespaces",
                                         headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, context=context, timeout=10)
        assert err.value.code == 401
        assert b'"reason":"Unauthorized"' in err.value.read()
    ok = urllib.request.Request(
        f"{apiserver_module.url}/api/v1/namespaces",
        headers={"Authorization": f"Bearer {apiserver_module.token}"},
    )
    with urllib.request.urlopen(ok, context=context, timeout=10) as response:
        assert response.status == 200


def test_tls_certificate_verifies_against_the_generated_ca(
    apiserver_module: ApiServerProcess,  # noqa: F811
) -> None:
    strict = ssl.create_default_context(cafile=str(apiserver_module.data_dir / "ca.crt"))
    request = urllib.request.Request(f"{apiserver_module.url}/version")
    with pytest.raises(urllib.error.HTTPError) as err:  # TLS fine, then 401
        urllib.request.urlopen(request, context=strict, timeout=10)
    assert err.value.code == 401
    with pytest.raises(urllib.error.URLError) as bad:  # system CAs do not know our CA
        urllib.request.urlopen(request, context=ssl.create_default_context(), timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in str(bad.value.reason)
    mode = (apiserver_module.data_dir / "token").stat().st_mode & 0o777
    assert mode == 0o600
    assert (apiserver_module.kubeconfig.stat().st_mode & 0o777) == 0o600


def test_create_get_conflicts_and_errors(core: client.CoreV1Api, namespace: str) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"), data={"a": "1"})
    created = core.create_namespaced_config_map(namespace, body)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) > 0
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(namespace, body)
    assert exists.value.status == 409 and '"reason":"AlreadyExists"' in exists.value.body
    stale = core.read_namespaced_config_map("cfg", namespace)
    stale.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("cfg", namespace, stale)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    stale.data = {"a": "3"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cfg", namespace, stale)
    assert conflict.value.status == 409 and '"reason":"Conflict"' in conflict.value.body
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", namespace)
    assert missing.value.status == 404 and '"reason":"NotFound"' in missing.value.body
    # An update that changes nothing writes nothing.
    same = core.replace_namespaced_config_map("cfg", namespace, core.read_namespaced_config_map("cfg", namespace))  # noqa: E501
    assert same.metadata.resource_version == updated.metadata.resource_version
    core.delete_namespaced_config_map("cfg", namespace)
    with pytest.raises(ApiException) as gone:
        core.delete_namespaced_config_map("cfg", namespace)
    assert gone.value.status == 404


def test_missing_namespace_is_refused_like_kubernetes(core: client.CoreV1Api) -> None:
    ghost = unique("rvt-ghost")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            ghost, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))
        )
    assert err.value.status == 404
    assert f'namespaces \\"{ghost}\\" not found' in err.value.body or \
        f'namespaces "{ghost}" not found' in err.value.body


def test_invalid_names_and_protected_namespaces(core: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name"))
        )
    assert err.value.status == 422 and "metadata.name" in err.value.body
    with pytest.raises(ApiException) as forbidden:
        core.delete_namespace("kube-system")
    assert forbidden.value.status == 403


def test_namespace_delete_removes_its_objects(core: client.CoreV1Api) -> None:
    name = unique("rvt-nsdel")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))  # noqa: E501
    core.delete_namespace(name)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("c", name)
    assert err.value.status == 404
    with pytest.raises(ApiException):
        core.read_namespace(name)


def test_secret_string_data_is_encoded(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s"), string_data={"k": "value"}))
    secret = core.read_namespaced_secret("s", namespace)
    assert base64.b64decode(secret.data["k"]) == b"value"
    assert secret.type == "Opaque"


def test_generate_name(core: client.CoreV1Api, namespace: str) -> None:
    made = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="gen-")))
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == 9


# --------------------------------------------------------------------------- patch


def test_patch_kinds(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="p", labels={"a": "1"}), data={"x": "1", "y": "2"}))
    # dict body -> strategic merge patch (the client's default for dicts)
    out = core.patch_namespaced_config_map("p", namespace, {"data": {"z": "3", "x": None}})
    assert out.data == {"y": "2", "z": "3"}
    # list body -> JSON patch
    out = core.patch_namespaced_config_map(
        "p", namespace, [{"op": "replace", "path": "/data/y", "value": "20"},
                         {"op": "add", "path": "/metadata/labels/b", "value": "2"}])
    assert out.data["y"] == "20" and out.metadata.labels == {"a": "1", "b": "2"}
    # JSON patch test failure -> 422, nothing written
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map(
            "p", namespace, [{"op": "test", "path": "/data/y", "value": "nope"}])
    assert err.value.status == 422
    # stale resourceVersion in a patch -> Conflict
    with pytest.raises(ApiException) as stale:
        core.patch_namespaced_config_map("p", namespace, {"metadata": {"resourceVersion": "1"}})
    assert stale.value.status == 409


def test_strategic_merge_merges_containers_by_name(
    api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "x"}
    apps.create_namespaced_daemon_set(namespace, client.V1DaemonSet(
        metadata=client.V1ObjectMeta(name="ds"),
        spec=client.V1DaemonSetSpec(
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[
                    client.V1Container(name="a", image="a:1"),
                    client.V1Container(name="b", image="b:1"),
                ])))))
    out = apps.patch_namespaced_daemon_set("ds", namespace, {
        "spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}})
    images = [(c.name, c.image) for c in out.spec.template.spec.containers]
    assert images == [("a", "a:1"), ("b", "b:2")]
    assert out.metadata.generation == 2


# --------------------------------------------------------------------------- selectors, lists


def test_label_and_field_selectors(core: client.CoreV1Api, namespace: str) -> None:
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}),
                         ("c", {"env": "dev"})):
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, labels=labels)))

    def names(**kw: Any) -> list[str]:
        return sorted(i.metadata.name for i in core.list_namespaced_config_map(namespace, **kw).items)  # noqa: E501

    assert names(label_selector="tier=web") == ["a"]
    assert names(label_selector="tier!=web") == ["b", "c"]
    assert names(label_selector="tier in (web,db)") == ["a", "b"]
    assert names(label_selector="tier notin (web)") == ["b", "c"]
    assert names(label_selector="env") == ["a", "c"]
    assert names(label_selector="!env") == ["b"]
    assert names(label_selector="tier,env=prod") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    everywhere = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={namespace}")
    assert sorted(i.metadata.name for i in everywhere.items) == ["a", "b", "c"]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(namespace, label_selector="tier in (")
    assert err.value.status == 400
    with pytest.raises(ApiException) as unsupported:
        core.list_namespaced_config_map(namespace, field_selector="data.x=1")
    assert unsupported.value.status == 400


def test_list_pagination(core: client.CoreV1Api, namespace: str) -> None:
    for i in range(5):
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"item-{i}")))
    first = core.list_namespaced_config_map(namespace, limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    assert first.metadata.remaining_item_count == 3
    seen = [i.metadata.name for i in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_config_map(namespace, limit=2, _continue=token)
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
    assert seen == [f"item-{i}" for i in range(5)]


# --------------------------------------------------------------------------- status subresource


def test_node_status_subresource_semantics(core: client.CoreV1Api) -> None:
    name = unique("rvt-node")
    created = core.create_node(node(name))
    assert created.status.addresses[0].address == "192.0.2.21"  # Nodes keep status on create
    try:
        fresh = core.read_node(name)
        fresh.status.addresses[0].address = "192.0.2.99"
        fresh.metadata.labels = {"raven.openyurt.io/gateway": "gw-a"}
        after = core.replace_node(name, fresh)
        assert after.metadata.labels == {"raven.openyurt.io/gateway": "gw-a"}
        assert after.status.addresses[0].address == "192.0.2.21"  # main write keeps status
        status_patch = {"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.22"}]},
                        "metadata": {"labels": {"ignored": "yes"}}}
        after = core.patch_node_status(name, status_patch)
        assert after.status.addresses[0].address == "192.0.2.22"
        assert "ignored" not in (after.metadata.labels or {})  # status write keeps the rest
    finally:
        core.delete_node(name)


def test_gateway_generation_status_and_validation(custom: client.CustomObjectsApi) -> None:
    name = unique("gw-rvt")
    body = gateway(name)
    body["status"] = {"nodes": [{"nodeName": "n1", "privateIP": "10.0.0.1"}]}
    created = custom.create_cluster_custom_object(GROUP, V1BETA1, "gateways", body)
    try:
        assert created["metadata"]["generation"] == 1
        assert "status" not in created  # custom resources drop status on create
        status = {"status": {"nodes": [{"nodeName": "n1", "privateIP": "10.0.0.1",
                                        "subnets": ["10.244.1.0/24"]}]}}
        after = custom.patch_cluster_custom_object_status(GROUP, V1BETA1, "gateways", name, status)
        assert after["metadata"]["generation"] == 1  # status is not spec
        assert after["status"]["nodes"][0]["subnets"] == ["10.244.1.0/24"]
        labelled = custom.patch_cluster_custom_object(
            GROUP, V1BETA1, "gateways", name, {"metadata": {"labels": {"x": "y"}}})
        assert labelled["metadata"]["generation"] == 1  # metadata is not spec
        assert labelled["status"] == after["status"]
        changed = custom.patch_cluster_custom_object(
            GROUP, V1BETA1, "gateways", name,
            {"spec": {"endpoints": [{"nodeName": "n2", "type": "tunnel", "port": 4500,
                                     "underNAT": False}]}, "status": {"nodes": []}})
        assert changed["metadata"]["generation"] == 2
        assert changed["status"] == after["status"]  # main write leaves status alone
        with pytest.raises(ApiException) as err:
            custom.patch_cluster_custom_object(
                GROUP, V1BETA1, "gateways", name,
                {"spec": {"endpoints": [{"nodeName": "n2", "type": "bogus", "port": 4500}]}})
        assert err.value.status == 422
        assert '"reason":"Invalid"' in err.value.body
        assert "spec.endpoints[0].type" in err.value.body
        bad_status = {"status": {"nodes": [{"nodeName": "n1", "subnets": ["10.244.1.1/24"]}]}}
        with pytest.raises(ApiException) as err2:
            custom.patch_cluster_custom_object_status(GROUP, V1BETA1, "gateways", name, bad_status)
        assert err2.value.status == 422 and "status.nodes[0].subnets[0]" in err2.value.body
    finally:
        custom.delete_cluster_custom_object(GROUP, V1BETA1, "gateways", name)


def test_gateway_v1alpha1_is_served_through_conversion(custom: client.CustomObjectsApi) -> None:
    name = unique("gw-alpha")
    custom.create_cluster_custom_object(GROUP, V1BETA1, "gateways", gateway(name, "edge-1"))
    try:
        alpha = custom.get_cluster_custom_object(GROUP, V1ALPHA1, "gateways", name)
        assert alpha["apiVersion"] == f"{GROUP}/{V1ALPHA1}"
        assert alpha["spec"]["endpoints"][0]["nodeName"] == "edge-1"
        listed = custom.list_cluster_custom_object(GROUP, V1ALPHA1, "gateways")
        assert all(i["apiVersion"] == f"{GROUP}/{V1ALPHA1}" for i in listed["items"])
        beta = custom.get_cluster_custom_object(GROUP, V1BETA1, "gateways", name)
        assert beta["apiVersion"] == f"{GROUP}/{V1BETA1}"
    finally:
        custom.delete_cluster_custom_object(GROUP, V1BETA1, "gateways", name)
    other = unique("gw-alpha-made")
    alpha_body = {"apiVersion": f"{GROUP}/{V1ALPHA1}", "kind": "Gateway",
                  "metadata": {"name": other},
                  "spec": {"endpoints": [{"nodeName": "edge-2", "underNAT": True}]}}
    custom.create_cluster_custom_object(GROUP, V1ALPHA1, "gateways", alpha_body)
    try:
        stored = custom.get_cluster_custom_object(GROUP, V1BETA1, "gateways", other)
        assert stored["spec"]["endpoints"][0]["nodeName"] == "edge-2"
        assert stored["spec"]["endpoints"][0]["underNAT"] is True
    finally:
        custom.delete_cluster_custom_object(GROUP, V1BETA1, "gateways", other)


def test_leases(api: client.ApiClient) -> None:
    coordination = client.CoordinationV1Api(api)
    name = unique("raven-agent")
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=client.V1LeaseSpec(
        holder_identity="n1", lease_duration_seconds=15))
    created = coordination.create_namespaced_lease("kube-system", lease)
    try:
        created.spec.renew_time = "2026-01-01T00:00:00.000000Z"
        renewed = coordination.replace_namespaced_lease(name, "kube-system", created)
        assert renewed.spec.renew_time.year == 2026
        created.spec.holder_identity = "n2"
        with pytest.raises(ApiException) as err:  # stale: someone renewed in between
            coordination.replace_namespaced_lease(name, "kube-system", created)
        assert err.value.status == 409
    finally:
        coordination.delete_namespaced_lease(name, "kube-system")


# --------------------------------------------------------------------------- watch


def _collect(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    out = []
    for event in stream:
        out.append((event["type"], event["object"].metadata.name))
        if len(out) == count:
            break
    return out


def test_watch_resumes_from_a_resource_version(core: client.CoreV1Api, namespace: str) -> None:
    listed = core.list_namespaced_config_map(namespace)
    start = listed.metadata.resource_version
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w1")))  # noqa: E501
    core.patch_namespaced_config_map("w1", namespace, {"data": {"a": "b"}})
    core.delete_namespaced_config_map("w1", namespace)
    w = watch.Watch()
    events = _collect(w.stream(core.list_namespaced_config_map, namespace,
                               resource_version=start, timeout_seconds=10), 3)
    w.stop()
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_watch_streams_live_events_and_label_transitions(
    core: client.CoreV1Api, namespace: str
) -> None:
    received: list[tuple[str, str]] = []
    w = watch.Watch()
    # Watching from a listed resourceVersion: no event is lost however late the watch starts.
    rv = core.list_namespaced_config_map(namespace).metadata.resource_version

    def consume() -> None:
        stream = w.stream(core.list_namespaced_config_map, namespace, resource_version=rv,
                          label_selector="watch=me", timeout_seconds=60)
        for event in stream:
            received.append((event["type"], event["object"].metadata.name))
            if len(received) == 3:
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="live")))  # not selected
    core.patch_namespaced_config_map("live", namespace, {"metadata": {"labels": {"watch": "me"}}})
    core.patch_namespaced_config_map("live", namespace, {"data": {"k": "v"}})
    core.patch_namespaced_config_map("live", namespace, {"metadata": {"labels": {"watch": None}}})
    thread.join(90)
    assert received == [("ADDED", "live"), ("MODIFIED", "live"), ("DELETED", "live")]


def test_watch_with_too_old_resource_version_is_expired(
    tmp_path: Any,
) -> None:
    from apiserver_support import start_apiserver_process

    server = start_apiserver_process(tmp_path / "expired", "--watch-history", "3")
    try:
        api_client = server.api_client()
        core = client.CoreV1Api(api_client)
        start = core.list_namespaced_config_map("default").metadata.resource_version
        for i in range(6):
            core.create_namespaced_config_map("default", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"e{i}")))
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                          resource_version=start, timeout_seconds=5):
                pass
        assert err.value.status == 410
        # A relist gives a resourceVersion that can be watched again.
        fresh = core.list_namespaced_config_map("default").metadata.resource_version
        events = list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                           resource_version=fresh, timeout_seconds=1))
        assert events == []
        api_client.close()
    finally:
        server.stop()


def test_watch_bookmarks_and_timeout(tmp_path: Any) -> None:
    from apiserver_support import start_apiserver_process

    server = start_apiserver_process(tmp_path / "bm", "--bookmark-interval", "0.3")
    try:
        api_client = server.api_client()
        core = client.CoreV1Api(api_client)
        rv = core.list_namespaced_config_map("default").metadata.resource_version
        response = core.list_namespaced_config_map(
            "default", watch=True, resource_version=rv, allow_watch_bookmarks=True,
            timeout_seconds=2, _preload_content=False)
        began = time.monotonic()
        lines = [line for line in response.stream() if line.strip()]
        elapsed = time.monotonic() - began
        response.release_conn()
        assert lines, "no bookmark arrived"
        import json

        events = [json.loads(x) for x in b"".join(lines).splitlines() if x.strip()]
        assert {e["type"] for e in events} == {"BOOKMARK"}
        assert all(int(e["object"]["metadata"]["resourceVersion"]) >= int(rv) for e in events)
        assert elapsed < 30  # the server ended the watch at timeoutSeconds (2 s)
        # The python client follows bookmarks and resumes from them.
        w = watch.Watch()
        for _ in w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=1):
            pass
        assert int(w.resource_version) >= int(rv)
        api_client.close()
    finally:
        server.stop()


def test_objects_and_resource_versions_survive_restart(tmp_path: Any) -> None:
    from apiserver_support import start_apiserver_process

    data = tmp_path / "restart"
    first = start_apiserver_process(data)
    try:
        api_client = first.api_client()
        core = client.CoreV1Api(api_client)
        made = core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="keep"), data={"k": "v"}))
        api_client.close()
    finally:
        assert first.stop() == 0  # graceful SIGTERM
    second = start_apiserver_process(data)
    try:
        api_client = second.api_client()
        core = client.CoreV1Api(api_client)
        kept = core.read_namespaced_config_map("keep", "default")
        assert kept.data == {"k": "v"} and kept.metadata.uid == made.metadata.uid
        later = core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="later")))
        assert int(later.metadata.resource_version) > int(made.metadata.resource_version)
        api_client.close()
    finally:
        second.stop()


def test_custom_resource_put_needs_resource_version(custom: client.CustomObjectsApi) -> None:
    name = unique("gw-put")
    created = custom.create_cluster_custom_object(GROUP, V1BETA1, "gateways", gateway(name))
    try:
        body = dict(created)
        body["metadata"] = {k: v for k, v in created["metadata"].items() if k != "resourceVersion"}
        with pytest.raises(ApiException) as err:
            custom.replace_cluster_custom_object(GROUP, V1BETA1, "gateways", name, body)
        assert err.value.status == 422 and "resourceVersion" in err.value.body
        replaced = custom.replace_cluster_custom_object(GROUP, V1BETA1, "gateways", name, created)
        assert replaced["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    finally:
        status = custom.delete_cluster_custom_object(GROUP, V1BETA1, "gateways", name)
        assert status["status"] == "Success" and status["details"]["name"] == name


def test_watch_with_field_selector_on_name(core: client.CoreV1Api, namespace: str) -> None:
    for name in ("one", "two"):
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name)))
    w = watch.Watch()
    seen = [e["object"].metadata.name for e in w.stream(
        core.list_namespaced_config_map, namespace, field_selector="metadata.name=two",
        timeout_seconds=1)]
    assert seen == ["two"]  # no resourceVersion: current state first, filtered by name


def test_in_process_start_on_port_zero_and_initial_events(tmp_path: Any) -> None:
    import json

    from raven.apiserver.server import start
    from raven.apiserver.settings import ApiServerSettings

    running = start(ApiServerSettings(data_dir=tmp_path / "inproc", port=0))
    try:
        assert running.port > 0 and running.url.endswith(f":{running.port}")
        from kubernetes import config

        api_client = config.new_client_from_config(config_file=str(running.kubeconfig))
        core = client.CoreV1Api(api_client)
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="seed")))
        response = core.list_namespaced_config_map(
            "default", watch=True, send_initial_events=True, allow_watch_bookmarks=True,
            resource_version_match="NotOlderThan", timeout_seconds=1, _preload_content=False)
        events = [json.loads(line) for line in b"".join(response.stream()).splitlines()
                  if line.strip()]
        response.release_conn()
        assert [e["type"] for e in events[:2]] == ["ADDED", "BOOKMARK"]
        assert events[0]["object"]["metadata"]["name"] == "seed"
        marker = events[1]["object"]["metadata"]
        assert marker["annotations"] == {"k8s.io/initial-events-end": "true"}
        api_client.close()
    finally:
        running.stop()


def test_events_core_and_events_k8s_io(api: client.ApiClient, namespace: str) -> None:
    import datetime

    core = client.CoreV1Api(api)
    now = datetime.datetime.now(datetime.UTC)
    made = core.create_namespaced_event(namespace, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="gw-a."),
        involved_object=client.V1ObjectReference(kind="Gateway", name="gw-a"),
        reason="ActiveEndpointElected", message="elected n1", type="Normal",
        first_timestamp=now, last_timestamp=now, count=1,
        source=client.V1EventSource(component="raven-gateway-controller")))
    assert made.metadata.name.startswith("gw-a.")
    core.create_namespaced_event(namespace, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="gw-b."),
        involved_object=client.V1ObjectReference(kind="Gateway", name="gw-b"),
        reason="ActiveEndpointLost", message="lost", type="Warning"))
    selected = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=gw-a,reason=ActiveEndpointElected")
    assert [e.metadata.name for e in selected.items] == [made.metadata.name]
    events_v1 = client.EventsV1Api(api)
    created = events_v1.create_namespaced_event(namespace, client.EventsV1Event(
        metadata=client.V1ObjectMeta(generate_name="n1."), event_time=now,
        reporting_controller="raven", reporting_instance="raven-1", action="Elect",
        reason="Elected", type="Normal",
        regarding=client.V1ObjectReference(kind="Node", name="n1")))
    listed = events_v1.list_namespaced_event(namespace)
    assert [e.metadata.name for e in listed.items] == [created.metadata.name]


def test_label_syntax_and_body_size_are_checked(core: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="lbl", labels={"bad key!": "x"})))
    assert err.value.status == 422 and "metadata.labels" in err.value.body
    with pytest.raises(ApiException) as err2:
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="lbl", labels={"ok": "-bad value-"})))
    assert err2.value.status == 422
    with pytest.raises(ApiException) as big:
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="big"), data={"x": "y" * (4 * 1024 * 1024)}))
    assert big.value.status == 413
    fine = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="lbl", labels={"example.com/role": "gw_1.a"})))
    assert fine.metadata.labels == {"example.com/role": "gw_1.a"}
