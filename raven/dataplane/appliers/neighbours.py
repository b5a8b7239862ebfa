"""FDB and neighbour entries on the VXLAN device: remote VTEP MAC -> underlay address, and remote
VTEP address -> MAC.

Rules kept: only permanent entries on our device are read; an entry for the same MAC (FDB) or
the same IP (neighbour) as a wanted one is replaced, not deleted first; no cache (the kernel
changes these itself, e.g. flushes neighbours on a MAC change).
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.dataplane import rtnl
from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.errors import DataplaneError
from raven.dataplane.netlink import NetlinkSocket
from raven.desired import FdbEntry, NeighEntry, NodeState


@dataclass(frozen=True)
class NeighLive:
    fdb: frozenset[FdbEntry] = frozenset()
    neighbours: frozenset[NeighEntry] = frozenset()


@dataclass(frozen=True)
class NeighChanges:
    fdb_del: tuple[FdbEntry, ...] = ()
    fdb_add: tuple[FdbEntry, ...] = ()
    neigh_del: tuple[NeighEntry, ...] = ()
    neigh_add: tuple[NeighEntry, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.lines


def diff(fdb: tuple[FdbEntry, ...], neighbours: tuple[NeighEntry, ...],
         live: NeighLive) -> NeighChanges:
    want_fdb, want_neigh = set(fdb), set(neighbours)
    macs = {e.mac for e in want_fdb}
    ips = {n.ip for n in want_neigh}
    fdb_del = tuple(e for e in sorted(live.fdb - want_fdb) if e.mac not in macs)
    fdb_add = tuple(sorted(want_fdb - live.fdb))
    neigh_del = tuple(e for e in sorted(live.neighbours - want_neigh) if e.ip not in ips)
    neigh_add = tuple(sorted(want_neigh - live.neighbours))
    lines = ([f"fdb del {e.mac} dst {e.dst}" for e in fdb_del]
             + [f"fdb replace {e.mac} dst {e.dst}" for e in fdb_add]
             + [f"neigh del {e.ip}" for e in neigh_del]
             + [f"neigh replace {e.ip} lladdr {e.mac}" for e in neigh_add])
    return NeighChanges(fdb_del, fdb_add, neigh_del, neigh_add, tuple(lines))


class NeighbourApplier:
    invalidated_by: frozenset[str] = frozenset()

    def __init__(self, nl: NetlinkSocket, device: str = "") -> None:
        self.nl = nl
        self.device = device  # our VXLAN device, whose entries cleanup removes

    def forget(self) -> None:
        pass

    def read(self, ifindex: int | None) -> NeighLive:
        if ifindex is None:
            return NeighLive()
        return NeighLive(frozenset(rtnl.dump_fdb(self.nl, ifindex)),
                         frozenset(rtnl.dump_neighbours(self.nl, ifindex)))

    def apply(self, changes: NeighChanges, ifindex: int) -> int:
        requests = [rtnl.fdb_request(e, ifindex, delete=True) for e in changes.fdb_del]
        requests += [rtnl.fdb_request(e, ifindex) for e in changes.fdb_add]
        requests += [rtnl.neigh_request(e, ifindex, delete=True) for e in changes.neigh_del]
        requests += [rtnl.neigh_request(e, ifindex) for e in changes.neigh_add]
        return self.nl.write(requests)

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: every permanent entry on our VXLAN device (before the device itself
        goes, which would take them along)."""
        link = scope.links.get(self.device)
        if link is None or link.kind != "vxlan":
            return []
        changes = diff((), (), self.read(link.index))
        self.apply(changes, link.index)
        return list(changes.lines)

    def step(self, state: NodeState, p: Pass) -> None:
        vx = p.links.get(self.device)
        vx = vx if vx is not None and vx.kind == "vxlan" else None
        p.vxlan = vx is not None
        live = self.read(vx.index if vx else None)
        p.fdb, p.neighbours = len(live.fdb), len(live.neighbours)
        if state.vxlan is None:
            return  # the device goes, and its entries with it
        changes = diff(state.fdb, state.neighbours, live)
        if p.take(changes, changes.lines):
            if vx is None:
                raise DataplaneError(f"vxlan {state.vxlan.name}: device did not appear")
            p.writes += self.apply(changes, vx.index)
