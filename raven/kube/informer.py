"""Informer: a local copy of one kind of object kept current by list + watch.

Rules kept:
- list once, then watch from the list's resourceVersion; a watch that ends (server timeout,
  connection drop, API server restart) resumes from the last resourceVersion seen, including
  BOOKMARK events, so nothing is missed and nothing is listed again without need;
- only 410 Expired (history compacted) forces a relist; the relist reports the difference
  against the old store, so consumers see exactly what changed while they were away;
- API failures back off exponentially and never empty the store: consumers keep acting on the
  last good copy;
- the callback runs on the informer's thread with (event type, object); it must be quick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from raven.kube.backoff import Backoff
from raven.kube.client import JSON, Kube, Resource, WatchStream
from raven.kube.errors import Expired, KubeError, is_too_large_resource_version

log = logging.getLogger(__name__)

ChangeCallback = Callable[[str, JSON], None]  # ("ADDED"|"MODIFIED"|"DELETED", object)


def object_key(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        on_change: ChangeCallback | None = None,
        on_error: Callable[[KubeError], None] | None = None,
        name: str = "",
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.on_change = on_change
        self.on_error = on_error
        self.name = name or resource.plural
        self.synced = threading.Event()  # set after the first successful list
        self.resource_version = ""
        self.lists = 0  # how many times we listed (1 + relists after 410)
        self.last_error: str | None = None
        self._store: dict[str, JSON] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    # -- consumer side -------------------------------------------------------------------------

    def items(self) -> list[JSON]:
        with self._lock:
            return [self._store[k] for k in sorted(self._store)]

    def get(self, key: str) -> JSON | None:
        with self._lock:
            return self._store.get(key)

    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- loop ----------------------------------------------------------------------------------

    def _emit(self, kind: str, obj: JSON) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, obj)
        except Exception:  # a consumer bug must not kill the watch
            log.exception("informer %s: change callback failed", self.name)

    def _relist(self) -> None:
        items, rv = self.kube.list(
            self.resource, self.namespace, self.label_selector, self.field_selector
        )
        fresh = {object_key(o): o for o in items}
        with self._lock:
            old, self._store = self._store, fresh
        self.resource_version = rv
        self.lists += 1
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._emit("ADDED", obj)
            elif (before.get("metadata") or {}).get("resourceVersion") != (
                obj.get("metadata") or {}
            ).get("resourceVersion"):
                self._emit("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        self.synced.set()

    def _handle(self, event: JSON) -> None:
        kind = str(event.get("type", ""))
        obj: Any = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410 or is_too_large_resource_version(obj):
                raise Expired(f"watch {self.name}: {obj.get('message', 'expired')}", code)
            raise KubeError(f"watch {self.name}: {obj.get('message', obj)}", code)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return
        key = object_key(obj)
        with self._lock:
            if kind == "DELETED":
                self._store.pop(key, None)
            else:
                self._store[key] = obj
        self._emit(kind, obj)

    def _run(self) -> None:
        backoff = Backoff(self.kube.settings.backoff, self._stop)
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                    self.last_error = None
                stream = self.kube.watch(
                    self.resource, self.resource_version, self.namespace,
                    self.field_selector, self.label_selector,
                )
                self._stream = stream
                self.last_error = None  # connected again (even if no event arrives for a while)
                if self._stop.is_set():
                    stream.close()
                    break
                for event in stream:
                    self._handle(event)
                    backoff.reset()
                self._stream = None
            except Expired as exc:
                log.info("informer %s: %s; listing again", self.name, exc)
                need_list = True
            except KubeError as exc:
                self._stream = None
                if self._stop.is_set():
                    break
                self.last_error = str(exc)
                log.warning("informer %s: %s", self.name, exc)
                if self.on_error is not None:
                    self.on_error(exc)
                if not backoff.wait():
                    break
