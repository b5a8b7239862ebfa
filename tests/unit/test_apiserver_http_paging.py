"""LIST pagination of the API server (raven.apiserver.paging): pure, no server."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.apiserver import paging
from raven.apiserver.status import ApiError


@dataclass
class StoredObject:
    obj: dict[str, Any]


def stored(namespace: str, name: str) -> StoredObject:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return StoredObject({"metadata": metadata})


ITEMS = [stored(ns, name) for ns, name in sorted(
    [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "a")])]


def names(items: list[StoredObject]) -> list[tuple[str, str]]:
    return [(s.obj["metadata"].get("namespace", ""), s.obj["metadata"]["name"]) for s in items]


def test_pages_walk_every_item_once_with_the_first_version() -> None:
    seen: list[tuple[str, str]] = []
    token = None
    while True:
        page, meta = paging.page(ITEMS, 41 if token is None else 99, 2, token)
        assert meta["resourceVersion"] == "41"
        seen += names(page)
        token = meta.get("continue")
        if token is None:
            break
        assert meta["remainingItemCount"] == len(ITEMS) - len(seen)
    assert seen == names(ITEMS)


def test_no_limit_is_one_page() -> None:
    page, meta = paging.page(ITEMS, 7, 0, None)
    assert page == ITEMS and meta == {"resourceVersion": "7"}


@pytest.mark.parametrize("token", [
    "!!!", base64.urlsafe_b64encode(b"[1,2,3]").decode(),
    base64.urlsafe_b64encode(b'["a","b","\\u00b2"]').decode(),
    base64.urlsafe_b64encode(b'["a","b"]').decode(), base64.urlsafe_b64encode(b"\xff").decode(),
])
def test_bad_tokens_are_400(token: str) -> None:
    with pytest.raises(ApiError) as err:
        paging.page(ITEMS, 1, 2, token)
    assert err.value.code == 400 and "start the list again" in err.value.message


@settings(max_examples=200, deadline=None)
@given(token=st.text(max_size=40))
def test_any_token_pages_or_is_400(token: str) -> None:
    try:
        paging.page(ITEMS, 1, 2, token)
    except ApiError as error:
        assert error.code == 400
