"""Pure parts of the embedded API server: selectors, patches, JSONPath, table ages, store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raven.apiserver.patch import json_patch, merge_patch, strategic_merge
from raven.apiserver.selectors import labels_match, parse_field_selector, parse_label_selector
from raven.apiserver.status import ApiError
from raven.apiserver.store import Store
from raven.apiserver.tables import age, json_path_values


def obj(labels: dict[str, str]) -> dict[str, object]:
    return {"metadata": {"name": "x", "labels": labels}}


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("a=1", {"a": "1"}, True),
    ("a==1", {"a": "2"}, False),
    ("a!=1", {}, True),
    ("a in (1, 2)", {"a": "2"}, True),
    ("a notin (1,2)", {"a": "3"}, True),
    ("a notin (1,2)", {}, True),
    ("a", {"a": ""}, True),
    ("!a", {"a": "1"}, False),
    ("a,b=2", {"a": "1", "b": "2"}, True),
    ("example.com/role in (gw),x!=y", {"example.com/role": "gw"}, True),
    ("n>3", {"n": "4"}, True),
    ("n<3", {"n": "4"}, False),
])
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), obj(labels)) is expected


@pytest.mark.parametrize("selector", ["a in (", "a in ()", "=x", "a=b=c", "-bad=1"])
def test_bad_label_selectors_are_400(selector: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_label_selector(selector)
    assert err.value.code == 400


def test_field_selectors() -> None:
    reqs = parse_field_selector("metadata.name=x,metadata.namespace!=y", "ConfigMap")
    assert all(r.matches({"metadata": {"name": "x", "namespace": "z"}}) for r in reqs)
    with pytest.raises(ApiError):
        parse_field_selector("spec.foo=1", "ConfigMap")


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}},
                       {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


def test_json_patch_rfc6902() -> None:
    doc = {"a": {"b": [1, 2]}}
    out = json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3},
                           {"op": "add", "path": "/a/b/0", "value": 0},
                           {"op": "move", "from": "/a/b", "path": "/c"},
                           {"op": "copy", "from": "/c", "path": "/d"},
                           {"op": "test", "path": "/d/3", "value": 3}])
    assert out == {"a": {}, "c": [0, 1, 2, 3], "d": [0, 1, 2, 3]}
    assert doc == {"a": {"b": [1, 2]}}  # input untouched
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])


def test_strategic_merge_directives() -> None:
    original = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}],
                "finalizers": ["x"], "tolerations": [{"key": "k"}]}
    patch = {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
             "containers": [{"name": "a", "$patch": "delete"}, {"name": "c", "image": "2"}],
             "finalizers": ["y"], "tolerations": [{"key": "z"}]}
    out = strategic_merge(original, patch)
    assert [c["name"] for c in out["containers"]] == ["b", "c"]
    assert out["finalizers"] == ["x", "y"]
    assert out["tolerations"] == [{"key": "z"}]  # no merge key: replaced
    assert strategic_merge({"a": {"b": 1}}, {"a": {"$patch": "replace", "c": 2}}) == {"a": {"c": 2}}
    assert strategic_merge({"a": 1, "b": 2}, {"$retainKeys": ["a"], "a": 3}) == {"a": 3}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=4),
    max_leaves=12,
)


@given(json_values, json_values)
def test_merge_patch_is_idempotent(target: object, patch: object) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


def test_json_path_values() -> None:
    o = {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X"}],
                    "items": [{"n": 1}, {"n": 2}]}}
    assert json_path_values(o, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert json_path_values(o, ".status.items[*].n") == [1, 2]
    assert json_path_values(o, "{.status.items[1].n}") == [2]
    assert json_path_values(o, ".status.missing") == []


def test_age_is_kubectl_style() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)

    def stamp(delta: timedelta) -> str:
        return (now - delta).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert age(stamp(timedelta(seconds=5)), now) == "5s"
    assert age(stamp(timedelta(minutes=3, seconds=4)), now) == "3m4s"
    assert age(stamp(timedelta(hours=5)), now) == "5h"
    assert age(stamp(timedelta(days=3)), now) == "3d"


def test_store_versions_increase_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path, history=2)
    key = ("", "configmaps")
    _, a = store.mutate(key, "ns", "a", lambda _c: {"metadata": {"name": "a"}})
    _, b = store.mutate(key, "ns", "b", lambda _c: {"metadata": {"name": "b"}})
    _, gone = store.mutate(key, "ns", "a", lambda _c: None)
    assert a and b and gone
    assert int(a["metadata"]["resourceVersion"]) < int(b["metadata"]["resourceVersion"]) < int(gone["metadata"]["resourceVersion"])  # noqa: E501
    first = int(a["metadata"]["resourceVersion"])
    assert not store.can_resume(first - 1)  # the creation of "a" was trimmed
    assert store.can_resume(first)
    store.close()
    reopened = Store(path)
    _, c = reopened.mutate(key, "ns", "c", lambda _c: {"metadata": {"name": "c"}})
    assert c and int(c["metadata"]["resourceVersion"]) > int(gone["metadata"]["resourceVersion"])
    assert reopened.get(key, "ns", "a") is None and reopened.get(key, "ns", "b") == b
    reopened.close()


def test_age_accepts_micro_time_and_offsets() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age("2026-01-01T23:59:30.123456Z", now) == "29s"
    assert age("2026-01-01T23:59:30.123456+00:00", now) == "29s"
    assert age("yesterday", now) == "<invalid>"


def test_label_and_annotation_rules_refuse_a_trailing_newline() -> None:
    # `re.match` with "$" accepts "abc\n"; kube-apiserver does not.
    from raven.apiserver.api import _label_problems

    assert _label_problems({"app": "web", "example.com/tier": "db"}, {"a.io/b": "x"}) == []
    assert len(_label_problems({"app\n": "web"}, {})) == 1
    assert len(_label_problems({"app": "web\n"}, {})) == 1
    assert len(_label_problems({}, {"note\n": "x"})) == 1
