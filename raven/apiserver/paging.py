"""LIST pagination: `limit` and `continue` over a sorted list of stored objects. Pure.

Rules kept:
- Items are in (namespace, name) order; a continue token names the last item sent and the
  resourceVersion of the first page, so every page of one list reports the same version.
- Pages after the first are read from the current state (documented difference from
  kube-apiserver, which serves them from the first page's snapshot).
- A token that does not decode to (namespace, name, resourceVersion) is a 400 telling the client
  to start the list again (api.parse_continue_token, the one parser of tokens).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol, TypeVar

from raven.apiserver.api import parse_continue_token


class Listed(Protocol):
    """What paging needs of a stored object (store.StoredObject has it)."""

    @property
    def obj(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=Listed)


def _position(stored: Listed) -> tuple[str, str]:
    meta = stored.obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def encode_token(namespace: str, name: str, rv: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([namespace, name, str(rv)]).encode()).decode()


def page(items: list[T], rv: int, limit: int, token: str | None) -> tuple[list[T], dict[str, Any]]:
    """The items of this page and the list metadata (resourceVersion, continue, remaining)."""
    if token:
        after_ns, after_name, rv = parse_continue_token(token)
        items = [s for s in items if _position(s) > (after_ns, after_name)]
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if limit and len(items) > limit:
        last_ns, last_name = _position(items[limit - 1])
        meta["continue"] = encode_token(last_ns, last_name, rv)
        meta["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    return items, meta
