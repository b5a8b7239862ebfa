"""gateway/crd.yaml: shape of the CRD, a structural schema, and in step with raven.model.

A small checker for the OpenAPI subset a structural CRD schema uses stands in for the API
server's: it reports values of the wrong type and fields the API server would prune.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_model import OPENYURT_V1ALPHA1, OPENYURT_V1BETA1

from raven.model import (
    Condition,
    Endpoint,
    FrozenMap,
    Gateway,
    GatewaySpec,
    GatewayStatus,
    NodeInfo,
    ProxyConfig,
    TunnelConfig,
    gateway_problems,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "gateway" / "crd.yaml").read_text())
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def schema_of(version: str) -> dict[str, Any]:
    (v,) = [v for v in CRD["spec"]["versions"] if v["name"] == version]
    return v["schema"]["openAPIV3Schema"]


def check(value: Any, schema: dict[str, Any], path: str = "") -> tuple[list[str], list[str]]:
    """(type errors, pruned field paths) of `value` against a structural schema."""
    errors: list[str] = []
    pruned: list[str] = []
    kind = schema.get("type")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: not an integer")
        elif "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below minimum")
        return errors, pruned
    if kind in TYPES and not isinstance(value, TYPES[kind]):
        errors.append(f"{path}: not {kind}")
        return errors, pruned
    if kind == "object":
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                e, p = check(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                e, p = check(item, extra, f"{path}.{key}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                e, p = [], [f"{path}.{key}"]
            else:
                e, p = [], []
            errors += e
            pruned += p
    if kind == "array":
        for i, item in enumerate(value):
            e, p = check(item, schema.get("items", {}), f"{path}[{i}]")
            errors += e
            pruned += p
    return errors, pruned


def walk(schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in the schema that break the structural rules (every node has a type)."""
    bad = []
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        bad.append(path or "<root>")
    for key, sub in schema.get("properties", {}).items():
        bad += walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        bad += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        bad += walk(schema["additionalProperties"], f"{path}{{}}")
    return bad


def test_crd_names_versions_and_subresources() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "gateways.raven.openyurt.io"
    assert (spec["group"], spec["scope"]) == ("raven.openyurt.io", "Cluster")
    assert spec["names"]["kind"] == "Gateway" and spec["names"]["plural"] == "gateways"
    assert spec["names"]["shortNames"] == ["gw"]
    versions = {v["name"]: v for v in spec["versions"]}
    assert versions["v1beta1"]["storage"] and versions["v1beta1"]["served"]
    assert not versions["v1alpha1"]["storage"] and versions["v1alpha1"]["served"]
    assert all(v["subresources"] == {"status": {}} for v in versions.values())
    columns = {c["name"]: c["jsonPath"] for c in versions["v1beta1"]["additionalPrinterColumns"]}
    assert columns["Active"] == ".status.activeEndpoints[*].nodeName"
    assert columns["Nodes"] == ".status.nodeCount"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'


@pytest.mark.parametrize("version", ["v1beta1", "v1alpha1"])
def test_schema_is_structural(version: str) -> None:
    assert walk(schema_of(version)) == []


@pytest.mark.parametrize(("version", "obj"), [("v1beta1", OPENYURT_V1BETA1),
                                               ("v1alpha1", OPENYURT_V1ALPHA1)])
def test_openyurt_objects_are_accepted_unchanged(version: str, obj: dict[str, Any]) -> None:
    assert check(obj, schema_of(version)) == ([], [])


def test_every_field_the_model_writes_is_in_the_schema() -> None:
    ep = Endpoint("n1", type="tunnel", port=4500, under_nat=True, nat_type="cone",
                  public_ip="203.0.113.1", public_port=31000, config=FrozenMap({"k": "v"}))
    gw = Gateway(
        "gw-full",
        spec=GatewaySpec(
            node_selector=FrozenMap({"matchLabels": {"a": "b"},
                                     "matchExpressions": [{"key": "k", "operator": "Exists"}]}),
            proxy_config=ProxyConfig(2, "10255", "10250"), tunnel_config=TunnelConfig(2),
            endpoints=(ep, Endpoint("n1", type="proxy", under_nat=True),
                       Endpoint("n2", type="proxy", under_nat=True)),
            expose_type="",
        ),
        status=GatewayStatus(
            nodes=(NodeInfo("n1", "10.0.0.1", ("10.244.0.0/24",)),), active_endpoints=(ep,),
            conditions=(Condition("Ready", "True", "Elected", "ok", "2024-01-01T00:00:00Z"),),
            node_count=1,
        ),
    )
    for version in ("v1beta1", "v1alpha1"):
        rendered = gw.to_k8s(f"raven.openyurt.io/{version}")
        assert check(rendered, schema_of(version)) == ([], []), version
    assert gateway_problems(gw.to_k8s()) == []


def test_schema_refuses_wrong_types() -> None:
    obj = copy.deepcopy(OPENYURT_V1BETA1)
    obj["spec"]["tunnelConfig"]["Replicas"] = "1"
    obj["spec"]["endpoints"][0]["underNAT"] = "true"
    errors, _ = check(obj, schema_of("v1beta1"))
    assert errors == [".spec.tunnelConfig.Replicas: not an integer",
                      ".spec.endpoints[0].underNAT: not boolean"]


@pytest.mark.parametrize("path", sorted((ROOT / "gateway" / "examples").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_fit_the_schema_and_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc.get("kind") != "Gateway":
            continue
        version = doc["apiVersion"].split("/")[1]
        assert check(doc, schema_of(version)) == ([], [])
        assert gateway_problems(doc) == []
