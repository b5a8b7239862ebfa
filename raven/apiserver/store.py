"""Durable object store with a watch hub: SQLite (WAL) on disk, every object also in memory.

Rules kept:
- One global resourceVersion counter, persisted with each write in the same transaction, so
  resourceVersions strictly increase, also across restarts (etcd's revision, in effect).
- All writes go through `mutate`, which runs the caller's read-modify-write function under the
  store lock: preconditions, uniqueness and the write are atomic.
- Objects in memory are never modified in place; readers get references and must copy before
  changing them. The JSON encoding of each object is cached for fast LIST responses.
- Every write becomes a `WatchEvent` in a bounded in-memory history and in the queue of each
  watcher of that resource. A watch can resume from any resourceVersion still covered by the
  history (those after `history_floor`); older ones are Expired, newer than the store's own
  resourceVersion are "Too large" (504 Timeout with retryAfterSeconds, as kube-apiserver answers,
  so that informers relist after a restore from an older backup).
- Secrets live here: the directory is made 0700 and the database, -wal and -shm files 0600 at
  every start, whatever modes they had before.
- A row that cannot be decoded is reported in the log and skipped; the server still starts.
- A watch's initial list is a list of references to the stored objects (shared, never copied);
  the fan-out encodes it a little at a time as the client reads.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raven.apiserver.status import ApiError, expired, too_large_resource_version

if TYPE_CHECKING:
    from raven.apiserver.fanout import Subscription, WatchFanout

log = logging.getLogger("raven.apiserver")
_RV = re.compile(r"[0-9]{1,19}")

StorageKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class StoredObject:
    obj: dict[str, Any]
    raw: bytes
    rv: int


@dataclass
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    rv: int
    key: StorageKey
    namespace: str
    old: dict[str, Any] | None
    new: dict[str, Any]  # for DELETED: the last state, with the deletion's resourceVersion
    raw: bytes | None = None  # cached encoding of `new`
    encoded: dict[Any, bytes] = field(default_factory=dict)  # cache for watch lines


# resourceVersions are at most 18 decimal digits (what clients may send back, bodies.DECIMAL):
# a stored value beyond that would make the next write overflow SQLite's INTEGER.
MAX_RV = 10**18 - 1


def _valid_rv(value: Any) -> int:
    """A stored resourceVersion (row or counter) as an int in 0..MAX_RV; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"resourceVersion {value!r} is not an integer")
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{1,18}", value):
        raise ValueError(f"resourceVersion {value!r} is not a decimal integer")
    rv = int(value)
    if not 0 <= rv <= MAX_RV:
        raise ValueError(f"resourceVersion {value!r} is not in 0..{MAX_RV}")
    return rv


class Store:
    def __init__(self, path: Path, history: int = 20000,
                 fanout: WatchFanout | None = None) -> None:
        self.path = path
        self.fanout = fanout
        self._lock = threading.RLock()
        make_private(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (resource TEXT NOT NULL, namespace TEXT NOT NULL,"
            " name TEXT NOT NULL, rv INTEGER NOT NULL, data TEXT NOT NULL,"
            " PRIMARY KEY (resource, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self._rv = 0
        if row:
            try:
                self._rv = _valid_rv(row[0])
            except (ValueError, TypeError) as exc:
                log.error("the stored resourceVersion counter in %s is not valid (%s); "
                          "continuing from the newest stored object", path, exc)
        self._objects: dict[StorageKey, dict[ObjectKey, StoredObject]] = {}
        for resource, namespace, name, rv, data in self._db.execute(
            "SELECT resource, namespace, name, rv, data FROM objects"
        ):
            try:
                group, plural = str(resource).split("/", 1)
                obj = json.loads(data)
                if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
                    raise ValueError("not a JSON object with metadata")
                stored = StoredObject(obj, data.encode(), _valid_rv(rv))
            except (ValueError, TypeError, AttributeError, RecursionError) as exc:
                log.error("skipping stored object %s %s/%s in %s: it cannot be decoded (%s); "
                          "delete the row or restore the database from a backup",
                          resource, namespace, name, path, exc)
                continue
            self._objects.setdefault((group, plural), {})[(namespace, name)] = stored
            self._rv = max(self._rv, stored.rv)
        make_private(path)  # the -wal and -shm files exist now
        self._history: collections.deque[WatchEvent] = collections.deque()
        self._history_size = history
        # Every event with rv > history_floor is in the history.
        self.history_floor = self._rv

    # ------------------------------------------------------------------ reads

    @property
    def rv(self) -> int:
        return self._rv

    def get(self, key: StorageKey, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._objects.get(key, {}).get((namespace, name))
        return stored.obj if stored else None

    def list(
        self, key: StorageKey, namespace: str | None = None
    ) -> tuple[list[StoredObject], int]:
        """Objects of one resource (sorted by namespace, name) and the store's resourceVersion."""
        with self._lock:
            items = self._objects.get(key, {})
            if namespace is None:
                selected = list(items.items())
            else:
                selected = [(k, v) for k, v in items.items() if k[0] == namespace]
            rv = self._rv
        selected.sort(key=lambda kv: kv[0])
        return [v for _, v in selected], rv

    def count(self, key: StorageKey) -> int:
        with self._lock:
            return len(self._objects.get(key, {}))

    # ------------------------------------------------------------------ writes

    def mutate(
        self,
        key: StorageKey,
        namespace: str,
        name: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        dry_run: bool = False,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Atomically replace one object with `change(copy of current or None)`.

        `change` returns the new object, None to delete, or the very object it was given
        unchanged (compared by value) for a no-op that writes nothing. Returns (old, new); for a
        delete, `new` is the last state carrying the deletion's resourceVersion. `dry_run`
        runs every check and returns what would be stored, writing nothing.
        """
        with self._lock:
            stored = self._objects.get(key, {}).get((namespace, name))
            old = stored.obj if stored else None
            proposed = change(copy.deepcopy(old) if old is not None else None)
            if proposed is None and old is None:
                return None, None
            if proposed is not None and old is not None and proposed == old:
                return old, old
            if dry_run:
                return old, proposed if proposed is not None else old
            rv = self._rv + 1
            resource = f"{key[0]}/{key[1]}"
            if proposed is None:
                assert old is not None
                last = copy.deepcopy(old)
                last.setdefault("metadata", {})["resourceVersion"] = str(rv)
                self._write(
                    ("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                     (resource, namespace, name)),
                    ("REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),)),
                )
                del self._objects[key][(namespace, name)]
                self._rv = rv
                self._publish(WatchEvent("DELETED", rv, key, namespace, old, last))
                return old, last
            proposed.setdefault("metadata", {})["resourceVersion"] = str(rv)
            raw = encode(proposed)
            self._write(
                ("REPLACE INTO objects (resource, namespace, name, rv, data) VALUES (?,?,?,?,?)",
                 (resource, namespace, name, rv, raw.decode())),
                ("REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),)),
            )
            self._objects.setdefault(key, {})[(namespace, name)] = StoredObject(proposed, raw, rv)
            self._rv = rv
            kind = "ADDED" if old is None else "MODIFIED"
            self._publish(WatchEvent(kind, rv, key, namespace, old, proposed, raw))
            return old, proposed

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """One transaction: the object and the resourceVersion counter change together."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self._db.execute(sql, params)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _publish(self, event: WatchEvent) -> None:
        self._history.append(event)
        while len(self._history) > self._history_size:
            self.history_floor = self._history.popleft().rv
        if self.fanout is not None:
            self.fanout.publish(event)

    # ------------------------------------------------------------------ watches

    def can_resume(self, since: int) -> bool:
        """True when every event after `since` is still in the history."""
        return self.history_floor <= since <= self._rv

    def check_watch_start(self, since: int) -> None:
        """Refuse a watch from `since` before any response header is sent: 410 Expired when the
        history no longer covers it, 504 "Too large resource version" when it is newer than
        anything this store has written (the client's state comes from a newer store)."""
        rv = self._rv
        if since > rv:
            raise too_large_resource_version(since, rv)
        if since < self.history_floor:
            raise expired(f"too old resource version: {since} ({self.history_floor + 1})")

    def check_read_at(self, resource_version: str | None) -> None:
        """A LIST/GET at resourceVersion `resource_version` (any match rule): 504 "Too large
        resource version" when it is newer than the store; 400 when it is not a number."""
        if resource_version in (None, "", "0"):
            return
        if not isinstance(resource_version, str) or not _RV.fullmatch(resource_version):
            raise ApiError(400, "BadRequest",
                           f"resourceVersion {resource_version!r} is not a valid "
                           "resourceVersion; use one from a previous list or watch")
        if int(resource_version) > self._rv:
            raise too_large_resource_version(int(resource_version), self._rv)

    def watch(self, sub: Subscription, since: int | None) -> bool:
        """Hand a watch to the fan-out. `since` None: the current objects come first as ADDED.

        Returns False when `since` is older than the history covers (the caller answers 410).
        """
        assert self.fanout is not None
        with self._lock:
            if since is not None and not self.can_resume(since):
                return False
            key, namespace = sub.key, sub.namespace
            backlog: list[StoredObject] | list[WatchEvent]
            if since is None:
                # References to the stored objects: the fan-out turns them into ADDED lines a
                # little at a time, so no watcher holds a copy of the whole list.
                backlog, _ = self.list(key, namespace)
            else:
                backlog = [
                    e for e in self._history
                    if e.rv > since and e.key == key
                    and (namespace is None or e.namespace == namespace)
                ]
            self.fanout.add(sub, backlog, self._rv)
            return True

    def close(self) -> None:
        if self.fanout is not None:
            self.fanout.stop()
        with self._lock:
            self._db.close()

    def resource_keys(self) -> Iterable[StorageKey]:
        with self._lock:
            return list(self._objects)


def make_private(database: Path) -> None:
    """The store's directory 0700, the database and its -wal/-shm files 0600 (created if
    missing, tightened if they exist): they hold Secrets and the token's peers."""
    directory = database.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    if not database.exists():
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{database}{suffix}", 0o600)
