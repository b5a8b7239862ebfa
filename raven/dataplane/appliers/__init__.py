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
- `step(state, p)` is the applier's part of one reconcile: read (`p.fresh`), diff against
  the plan, record the lines and counts in the `Pass`, and apply only when `p.write` (so
  observe, which runs the same steps with `write=False`, never writes);
- `remove(scope) -> lines` is the applier's part of cleanup: it reads its objects afresh and
  removes every one that is ours (by name and place, never anything else), through its own
  diff against "nothing wanted" where one exists. `Dataplane.cleanup` calls the appliers in
  the reverse of the apply order (nftables first, the VXLAN device last).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from raven.dataplane.links import LinkFacts
from raven.dataplane.wireguard.model import LiveDevice
from raven.desired import NodeState


@dataclass
class Pass:
    """One reconcile: what it may do (`write`, `fresh`: read the kernel in full), what the
    appliers share (the links, refreshed by a device applier that made or removed a device;
    our tables), and what it did (or, with write=False, would do) and saw."""

    write: bool
    fresh: bool = False
    links: dict[str, LinkFacts] = field(default_factory=dict)
    tables: tuple[int, ...] = ()
    writes: int = 0
    lines: list[str] = field(default_factory=list)
    skipped: tuple[str, ...] = ()
    vxlan: bool = False
    wireguard: LiveDevice | None = None
    routes: int = 0
    rules: int = 0
    fdb: int = 0
    neighbours: int = 0
    firewall_elements: int = 0

    def take(self, changes: object, lines: tuple[str, ...]) -> bool:
        """Record the lines; True when the changes are to be written."""
        self.lines.extend(lines)
        return self.write and not changes.empty()  # type: ignore[attr-defined]


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
    def step(self, state: NodeState, p: Pass) -> None: ...

    def remove(self, scope: Scope) -> list[str]: ...
