"""One applier per kind of kernel object; `Dataplane` only orders them.

The contract every applier keeps:
- `read(...)` returns the live state of its objects (from its own cache when that is still
  valid, or from the kernel; `fresh=True` always reads the kernel and refreshes the cache with
  what it read, so `observe()` and the next `apply()` act on the same facts);
- a module-level pure `diff(desired, live) -> changes` (no I/O: unit-tested without root); the
  changes carry `lines` (one per change, for logs and drift) and `empty()`;
- `apply(changes, ...) -> writes` writes exactly the changes, and keeps its cache equal to what
  it wrote (or drops it when a write fails);
- `forget()` drops the cache; `invalidated_by` names the netlink event kinds (raven.dataplane.
  drift) after which the cache may be stale. Nothing else touches an applier's cache.
"""

from __future__ import annotations

from typing import Protocol


class Cached(Protocol):
    invalidated_by: frozenset[str]

    def forget(self) -> None: ...
