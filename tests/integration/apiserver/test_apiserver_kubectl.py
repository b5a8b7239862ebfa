"""The embedded API server through kubectl (v1.32 client) with no extra flags.

The official Python client serves as the independent oracle for what kubectl changed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiserver_support import ApiServerProcess, apiserver_module  # noqa: F401
from kubernetes import client
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "gateway" / "crd.yaml"
GROUP = "raven.openyurt.io"

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "kubectl"], capture_output=True).returncode != 0,
    reason="kubectl is not installed (scripts/setup.sh installs it)",
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(apiserver_module: ApiServerProcess) -> ApiServerProcess:  # noqa: F811
    return apiserver_module


@pytest.fixture(scope="module")
def api(server: ApiServerProcess) -> Iterator[client.ApiClient]:
    api_client = server.api_client()
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def namespace(server: ApiServerProcess) -> Iterator[str]:
    name = unique("rvt-kc")
    server.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        server.kubectl("delete", "namespace", name, check=False)


def test_discovery_lists_our_resources(server: ApiServerProcess) -> None:
    out = server.kubectl("api-resources", "-o", "name").stdout.split()
    for resource in ("nodes", "namespaces", "configmaps", "secrets", "events", "leases.coordination.k8s.io",  # noqa: E501
                     "gateways.raven.openyurt.io", "customresourcedefinitions.apiextensions.k8s.io",
                     "daemonsets.apps", "deployments.apps", "serviceaccounts",
                     "clusterroles.rbac.authorization.k8s.io"):
        assert resource in out, resource
    versions = server.kubectl("api-versions").stdout.split()
    assert "raven.openyurt.io/v1beta1" in versions and "raven.openyurt.io/v1alpha1" in versions


def test_apply_crd_and_project_manifests(server: ApiServerProcess, api: client.ApiClient) -> None:
    if not CRD.exists():
        pytest.skip("gateway/crd.yaml is not in the tree yet")
    dirs = [d for d in ("agent", "gateway") if (ROOT / d).is_dir()]
    args = [a for d in dirs for a in ("-f", str(ROOT / d))]
    first = server.kubectl("apply", *args)
    assert "created" in first.stdout or "unchanged" in first.stdout
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(
        f"gateways.{GROUP}")
    assert {c.type for c in crd.status.conditions if c.status == "True"} >= {"Established"}
    again = server.kubectl("apply", *args)
    assert "configured" not in again.stdout, again.stdout  # nothing changed: nothing written
    for doc in yaml.safe_load_all("\n".join(p.read_text() for d in dirs for p in sorted((ROOT / d).glob("*.yaml")))):  # noqa: E501
        if not doc or doc.get("kind") not in ("DaemonSet", "Deployment", "ServiceAccount"):
            continue
        meta = doc["metadata"]
        out = server.kubectl("get", doc["kind"].lower(), meta["name"], "-n",
                             meta.get("namespace", "default"), "-o", "json").stdout
        assert json.loads(out)["metadata"]["name"] == meta["name"]


def test_example_gateways_apply_and_show_printer_columns(
    server: ApiServerProcess, api: client.ApiClient
) -> None:
    if not CRD.exists():
        pytest.skip("gateway/crd.yaml is not in the tree yet")
    server.kubectl("apply", "-f", str(CRD))
    examples = ROOT / "gateway" / "examples"
    if examples.is_dir() and any(examples.glob("*.yaml")):
        server.kubectl("apply", "-f", str(examples))
    name = unique("gw-print")
    manifest = {
        "apiVersion": f"{GROUP}/v1beta1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"endpoints": [{"nodeName": "pc-1", "type": "tunnel", "port": 4500,
                                "underNAT": False, "publicIP": "192.0.2.7"}]},
    }
    server.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    status = {"status": {
        "nodes": [{"nodeName": "pc-1", "privateIP": "10.1.0.1", "subnets": ["10.244.9.0/24"]}],
        "activeEndpoints": [{"nodeName": "pc-1", "type": "tunnel", "port": 4500,
                             "underNAT": False, "publicIP": "192.0.2.7"}],
    }}
    crd_doc = yaml.safe_load(CRD.read_text())
    storage = next(v for v in crd_doc["spec"]["versions"] if v.get("storage"))
    columns = [c for c in storage.get("additionalPrinterColumns", []) if not c.get("priority")]
    if any("nodeCount" in c["jsonPath"] for c in columns):
        status["status"]["nodeCount"] = 1
    if any("conditions" in c["jsonPath"] for c in columns):
        status["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "Elected",
                                           "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}]  # noqa: E501
    server.kubectl("patch", "gateway", name, "--subresource=status", "--type=merge",
                   "-p", json.dumps(status))
    table = server.kubectl("get", "gateways", name).stdout.splitlines()
    header = table[0].split()
    expected = ["NAME", *[c["name"].upper() for c in columns]]
    if not columns:
        expected.append("AGE")
    assert header == expected
    row = table[1].split()
    assert row[0] == name
    for column, cell in zip(columns, row[1:], strict=False):
        path = column["jsonPath"]
        if "activeEndpoints" in path:
            assert cell == "pc-1"
        if "nodeCount" in path:
            assert cell == "1"
        if "conditions" in path:
            assert cell == "True"
    listing = server.kubectl("get", "gw").stdout
    assert name in listing
    alpha = server.kubectl("get", f"gateways.v1alpha1.{GROUP}", name, "-o", "json")
    assert json.loads(alpha.stdout)["apiVersion"] == f"{GROUP}/v1alpha1"
    alpha_spec = next(v for v in crd_doc["spec"]["versions"] if v["name"] == "v1alpha1")
    if alpha_spec.get("deprecated"):  # the CRD's deprecation reaches kubectl as a Warning
        assert "deprecated" in alpha.stderr
    server.kubectl("delete", "gateway", name)
    with pytest.raises(ApiException):
        client.CustomObjectsApi(api).get_cluster_custom_object(GROUP, "v1beta1", "gateways", name)


def test_invalid_gateway_is_refused_like_the_webhook(server: ApiServerProcess) -> None:
    name = unique("gw-bad")
    manifest = {
        "apiVersion": f"{GROUP}/v1beta1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"endpoints": [{"nodeName": "b-1", "type": "tunnel", "port": 4500,
                                "publicIP": "not-an-ip"}]},
    }
    result = server.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr and "spec.endpoints[0].publicIP" in result.stderr
    missing = server.kubectl("get", "gateway", name, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_label_annotate_patch_delete(
    server: ApiServerProcess, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    server.kubectl("create", "configmap", "cm1", "-n", namespace, "--from-literal=a=1")
    server.kubectl("label", "configmap", "cm1", "-n", namespace, "tier=web")
    server.kubectl("annotate", "configmap", "cm1", "-n", namespace, "note=hello")
    server.kubectl("patch", "configmap", "cm1", "-n", namespace, "-p", '{"data":{"b":"2"}}')
    server.kubectl("patch", "configmap", "cm1", "-n", namespace, "--type=json",
                   "-p", '[{"op":"remove","path":"/data/a"}]')
    live = core.read_namespaced_config_map("cm1", namespace)
    assert live.metadata.labels == {"tier": "web"}
    assert live.metadata.annotations["note"] == "hello"
    assert live.data == {"b": "2"}
    names = server.kubectl("get", "cm", "-n", namespace, "-l", "tier in (web,db)", "-o", "name").stdout.split()  # noqa: E501
    assert names == ["configmap/cm1"]
    server.kubectl("label", "configmap", "cm1", "-n", namespace, "tier-")
    assert core.read_namespaced_config_map("cm1", namespace).metadata.labels in (None, {})
    server.kubectl("delete", "configmap", "cm1", "-n", namespace)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("cm1", namespace)
    assert err.value.status == 404


def test_apply_twice_merges_lists_by_key(
    server: ApiServerProcess, api: client.ApiClient, namespace: str
) -> None:
    def manifest(image: str, env: list[dict[str, str]]) -> str:
        return json.dumps({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ds", "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": "ds"}},
                     "template": {"metadata": {"labels": {"app": "ds"}},
                                  "spec": {"containers": [{"name": "c", "image": image,
                                                           "env": env}]}}},
        })

    server.kubectl("apply", "-f", "-", input=manifest("img:1", [{"name": "A", "value": "1"},
                                                                {"name": "B", "value": "2"}]))
    apps = client.AppsV1Api(api)
    # Someone else adds a container env var kubectl never applied: apply must keep it.
    apps.patch_namespaced_daemon_set("ds", namespace, {"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "EXTRA", "value": "x"}]}]}}}})  # noqa: E501
    out = server.kubectl("apply", "-f", "-", input=manifest("img:2", [{"name": "A", "value": "1"}]))
    assert "configured" in out.stdout
    live = apps.read_namespaced_daemon_set("ds", namespace)
    container = live.spec.template.spec.containers[0]
    assert container.image == "img:2"
    assert sorted(e.name for e in container.env) == ["A", "EXTRA"]  # B removed, EXTRA kept
    assert live.metadata.generation == 3


def test_get_watch_streams_changes(
    server: ApiServerProcess, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="before")))
    watcher = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(server.kubeconfig), "get", "configmaps", "-n", namespace,
         "-w", "--output-watch-events", "-o", "custom-columns=EVENT:.type,NAME:.object.metadata.name"],  # noqa: E501
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    listed = threading.Event()

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.append(line)
            if "before" in line:
                listed.set()  # kubectl listed; its watch starts from that list's version

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listed.wait(90), "kubectl get -w printed nothing"
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="during")))
        core.patch_namespaced_config_map("during", namespace, {"data": {"k": "v"}})
        core.delete_namespaced_config_map("during", namespace)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            line.startswith("DELETED") and "during" in line for line in lines
        ):
            time.sleep(0.1)
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
        reader.join(10)
        assert watcher.stderr is not None
        err = watcher.stderr.read()
        watcher.stderr.close()
        if watcher.stdout is not None:
            watcher.stdout.close()
    out = "".join(lines)
    events = [line.split() for line in out.splitlines()[1:] if line.strip()]
    assert ["ADDED", "before"] in events, out + err
    tail = [e for e in events if e[1] == "during"]
    assert tail == [["ADDED", "during"], ["MODIFIED", "during"], ["DELETED", "during"]], out + err


def test_get_nodes_table(server: ApiServerProcess, api: client.ApiClient) -> None:
    name = unique("rvt-kc-node")
    node: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/edge": ""}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "nodeInfo": {"kubeletVersion": "v1.30.1"}},
    }
    server.kubectl("create", "-f", "-", input=json.dumps(node))  # Nodes keep status on create
    try:
        lines = server.kubectl("get", "node", name).stdout.splitlines()
        assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        cells = lines[1].split()
        assert cells[0] == name and cells[1] == "Ready" and cells[2] == "edge"
        assert cells[4] == "v1.30.1"
    finally:
        server.kubectl("delete", "node", name)


def test_server_side_dry_run_writes_nothing(
    server: ApiServerProcess, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    out = server.kubectl("create", "configmap", "dry", "-n", namespace, "--from-literal=a=1",
                         "--dry-run=server", "-o", "json").stdout
    assert json.loads(out)["data"] == {"a": "1"}  # validated and defaulted by the server
    with pytest.raises(ApiException):
        core.read_namespaced_config_map("dry", namespace)
    server.kubectl("create", "configmap", "kept", "-n", namespace)
    server.kubectl("delete", "configmap", "kept", "-n", namespace, "--dry-run=server")
    assert core.read_namespaced_config_map("kept", namespace).metadata.name == "kept"
    bad = {"apiVersion": f"{GROUP}/v1beta1", "kind": "Gateway",
           "metadata": {"name": unique("gw-dry")},
           "spec": {"endpoints": [{"nodeName": "d-1", "type": "nope", "port": 4500}]}}
    result = server.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad),
                            check=False)
    assert result.returncode != 0 and "spec.endpoints[0].type" in result.stderr


def test_auth_can_i_and_whoami(server: ApiServerProcess) -> None:
    assert server.kubectl("auth", "can-i", "patch", "gateways/status").stdout.strip() == "yes"
    who = server.kubectl("auth", "whoami").stdout
    assert "admin" in who and "system:masters" in who


def test_other_crds_are_served_once_stored(server: ApiServerProcess, namespace: str) -> None:
    group = f"{uuid.uuid4().hex[:6]}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                           "shortNames": ["wd"]},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},  # noqa: E501
                               "subresources": {"status": {}},
                               "additionalPrinterColumns": [
                                   {"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]}]},  # noqa: E501
    }
    server.kubectl("apply", "-f", "-", input=json.dumps(crd))
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget",
              "metadata": {"name": "w1", "namespace": namespace}, "spec": {"size": 3}}
    server.kubectl("apply", "-f", "-", input=json.dumps(widget))
    lines = server.kubectl("get", f"widgets.{group}", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE"] and lines[1].split() == ["w1", "3"]
    server.kubectl("delete", "customresourcedefinition", f"widgets.{group}")
    gone = server.kubectl("get", f"widgets.{group}", "-n", namespace, check=False)
    assert gone.returncode != 0
    assert server.kubectl("get", "--raw", f"/apis/{group}/v1", check=False).returncode != 0
    server.kubectl("apply", "-f", "-", input=json.dumps(crd))  # its objects went with it
    again = server.kubectl("get", f"widgets.{group}", "-n", namespace, "-o", "name").stdout
    assert again.strip() == ""
    server.kubectl("delete", "customresourcedefinition", f"widgets.{group}")
