"""Pure CRD and object-shape rules: they never raise, and every CRD they accept can be served
and rendered (the property the server relies on to start on its own data)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.apiserver.crd import crd_problems
from raven.apiserver.objects import kind_problems, metadata_problems, name_problem
from raven.apiserver.resources import Registry
from raven.apiserver.tables import table

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = settings(max_examples=300, deadline=None)

scalars = st.none() | st.booleans() | st.integers(-2, 5) | st.text(max_size=6) | st.sampled_from(
    ["v1", "Widget", "widgets", "example.com", "object", "integer", "high", ".spec.size"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)


def widget_crd() -> dict[str, Any]:
    return {
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object"}},
                               "additionalPrinterColumns": [
                                   {"name": "Size", "type": "integer",
                                    "jsonPath": ".spec.size"}]}]},
    }


def test_the_gateway_crd_is_valid() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "gateway" / "crd.yaml").read_text()) if d]
    assert docs and all(crd_problems(d) == [] for d in docs)
    assert crd_problems(widget_crd()) == []


FIELDS = ["spec.group", "spec.scope", "spec.names", "spec.names.plural", "spec.names.kind",
          "spec.names.shortNames", "spec.names.categories", "spec.names.singular",
          "spec.versions", "spec.versions.0", "spec.versions.0.name",
          "spec.versions.0.served", "spec.versions.0.storage", "spec.versions.0.schema",
          "spec.versions.0.subresources", "spec.versions.0.additionalPrinterColumns",
          "spec.versions.0.additionalPrinterColumns.0",
          "spec.versions.0.additionalPrinterColumns.0.priority",
          "spec.versions.0.additionalPrinterColumns.0.type",
          "spec.versions.0.additionalPrinterColumns.0.jsonPath", "metadata.name"]


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target: Any = body
    for part in parts[:-1]:
        target = target[int(part)] if part.isdecimal() else target[part]
    if parts[-1].isdecimal():
        target[int(parts[-1])] = value
    else:
        target[parts[-1]] = value


@BOUNDED
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), values), max_size=3))
def test_crd_rules_never_raise_and_accepted_crds_serve(changes: list[tuple[str, Any]]) -> None:
    body = widget_crd()
    for path, value in changes:
        try:
            _set(body, path, copy.deepcopy(value))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the parent
    problems = crd_problems(body)
    assert all(isinstance(f, str) and isinstance(m, str) for f, m in problems)
    if problems:
        return
    registry = Registry()
    assert registry.serving_problems(body) == []
    registry.set_crds([body])
    spec = body["spec"]
    version = spec["versions"][0]
    # looked up where the (possibly changed) CRD says it serves: group, version name, plural
    served = registry.get(spec["group"], version["name"], spec["names"]["plural"])
    if version.get("served") is False:
        assert served is None  # a valid CRD may keep its only version unserved
        return
    assert served is not None
    rendered = table(served, [{"metadata": {"name": "w"}, "spec": {"size": 1}}], "None", {})
    assert rendered["rows"][0]["cells"][0] == "w"


@BOUNDED
@given(obj=st.dictionaries(st.sampled_from(["data", "binaryData", "stringData", "type", "spec",
                                            "status", "involvedObject"]), values, max_size=4),
       metadata=st.dictionaries(st.sampled_from(["name", "generateName", "labels",
                                                 "annotations", "finalizers",
                                                 "ownerReferences", "namespace"]), values,
                                max_size=4),
       kind=st.sampled_from(["ConfigMap", "Secret", "Namespace", "Node", "Event", "Widget"]))
def test_object_rules_never_raise(obj: dict[str, Any], metadata: dict[str, Any],
                                  kind: str) -> None:
    problems = kind_problems("", kind, obj) + metadata_problems(metadata)
    assert all(isinstance(f, str) and isinstance(m, str) for f, m in problems)


def test_names_follow_the_rule_of_their_kind() -> None:
    assert name_problem("", "ConfigMap", "a.b-c") is None
    assert name_problem("", "Namespace", "a.b") is not None
    assert name_problem("", "Service", "1abc") is not None
    assert name_problem("", "Service", "abc-1") is None
    assert name_problem("rbac.authorization.k8s.io", "ClusterRole", "system:x y") is None
    assert name_problem("rbac.authorization.k8s.io", "ClusterRole", "a/b") is not None
    for bad in ("a b", "ünï", "abc\n", "-a", "a-", "A", "a" * 254, ""):
        assert name_problem("", "ConfigMap", bad) is not None, bad
