"""LIST pagination: `limit` and `continue` over a sorted list of stored objects. Pure.

Rules kept:
- Items are in (namespace, name) order; a continue token names the last item sent and the
  resourceVersion of the first page, so every page of one list reports the same version.
- Pages after the first are read from the current state (documented difference from
  kube-apiserver, which serves them from the first page's snapshot).
- A token that does not decode to (namespace, name, resourceVersion) is a 400 telling the client
  to start the list again.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol, TypeVar

from raven.apiserver.status import bad_request


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


def decode_token(token: str) -> tuple[str, str, int]:
    """(namespace, name, resourceVersion) of a continue token; 400 when it is not one."""
    try:
        namespace, name, rv_text = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
        if not (isinstance(namespace, str) and isinstance(name, str)
                and isinstance(rv_text, str) and rv_text.isascii() and rv_text.isdigit()):
            raise TypeError("not (namespace, name, resourceVersion)")
        return namespace, name, int(rv_text)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise bad_request("the continue token is not valid; start the list again") from exc


def page(items: list[T], rv: int, limit: int, token: str | None) -> tuple[list[T], dict[str, Any]]:
    """The items of this page and the list metadata (resourceVersion, continue, remaining)."""
    if token:
        after_ns, after_name, rv = decode_token(token)
        items = [s for s in items if _position(s) > (after_ns, after_name)]
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if limit and len(items) > limit:
        last_ns, last_name = _position(items[limit - 1])
        meta["continue"] = encode_token(last_ns, last_name, rv)
        meta["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    return items, meta
