"""Watch lines for one client: store events -> the JSON lines of its watch stream.

Rules kept:
- With selectors, an object entering the selection is ADDED, leaving it is DELETED, changing
  inside it is MODIFIED (as kube-apiserver reports them); events outside are dropped.
- Each line is encoded once per (event type, API version) and shared by every watcher that
  wants the same line; Table watchers get one Table row per event.
- A conversion failure drops that event for that watcher (logged); it never ends every watch.
- Runs on the fan-out thread only, so the per-event encoding cache needs no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from raven.apiserver import tables
from raven.apiserver.api import ResourceApi
from raven.apiserver.resources import ResourceType
from raven.apiserver.store import WatchEvent, encode

log = logging.getLogger("raven.apiserver")


class WatchLines:
    """Turns store events into watch lines for one client (selector, version, Table).

    Runs on the fan-out thread only, so the per-event encoding cache needs no lock.
    """

    def __init__(self, api: ResourceApi, rtype: ResourceType,
                 keep: Callable[[dict[str, Any]], bool] | None, table: bool,
                 include: str) -> None:
        self.api = api
        self.rtype = rtype
        self.keep = keep
        self.table = table
        self.include = include
        self.convert = api.needs_conversion(rtype)

    def _type_for(self, event: WatchEvent) -> str | None:
        if self.keep is None:
            return event.type
        if event.type == "ADDED":
            return "ADDED" if self.keep(event.new) else None
        if event.type == "DELETED":
            return "DELETED" if self.keep(event.new) else None
        was = event.old is not None and self.keep(event.old)
        now = self.keep(event.new)
        if was and now:
            return "MODIFIED"
        if now:
            return "ADDED"
        if was:
            return "DELETED"
        return None

    def event_line(self, event: WatchEvent) -> bytes | None:
        kind = self._type_for(event)
        if kind is None:
            return None
        if self.table:
            obj = self.api.to_version(self.rtype, event.new)
            body = encode(tables.table(self.rtype, [obj], self.include, {"resourceVersion": str(event.rv)}))  # noqa: E501
            return b'{"type":"' + kind.encode() + b'","object":' + body + b"}\n"
        cache_key = (kind, self.rtype.api_version)
        line = event.encoded.get(cache_key)
        if line is None:
            try:
                if self.convert:
                    raw = encode(self.api.to_version(self.rtype, event.new))
                else:
                    raw = event.raw if event.raw is not None else encode(event.new)
            except Exception:  # a conversion bug must not end every watch
                log.exception("cannot convert %s for a watch", event.key)
                return None
            line = b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"
            event.encoded[cache_key] = line
        return line

    def bookmark_line(self, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": meta}
        return encode({"type": "BOOKMARK", "object": obj}) + b"\n"
