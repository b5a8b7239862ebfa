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
  drift) after which the cache may be stale. Nothing else touches an applier's cache;
- `remove(scope) -> lines` is the applier's part of cleanup: it reads its objects afresh and
  removes every one that is ours (by name and place, never anything else), through its own
  diff against "nothing wanted" where one exists. `Dataplane.cleanup` calls the appliers in
  the reverse of the apply order (nftables first, the VXLAN device last).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from raven.dataplane.links import LinkFacts


@dataclass(frozen=True)
class Scope:
    """What cleanup hands every applier's `remove`: the tables that are ours, and the links as
    they were when cleanup began (valid for the appliers before the devices, which go last)."""

    tables: tuple[int, ...]
    links: dict[str, LinkFacts]


class Cached(Protocol):
    invalidated_by: frozenset[str]

    def forget(self) -> None: ...


class Applier(Cached, Protocol):
    def remove(self, scope: Scope) -> list[str]: ...
