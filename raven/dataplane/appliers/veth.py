"""The veth pair that joins the node's namespace to its tunnel namespace (docs/tunnel-namespace.md):
one end in each, each with its address and up.

Rules kept: ours by name and kind (a link of our name that is not a veth is an error, never
deleted); an end whose partner is not where the plan puts it (the tunnel namespace was deleted
and made again, a half-made pair) is deleted and the pair made again, since a veth end cannot be
re-paired; MTU, up and generic receive offload (`VethPair.gro`, ethtool's rx-gro) are fixed in
place; only global-scope addresses are read, and only the planned one is kept on each end. No
cache: the ends are read at every step (two link gets, two feature reads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts, Links
from raven.desired import NodeState, VethPair

Address = tuple[str, int]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VethEnd:
    link: LinkFacts | None
    addresses: frozenset[Address] = frozenset()
    gro: bool | None = None  # None: not read, or the device cannot have it


@dataclass(frozen=True)
class VethChanges:
    desired: VethPair | None = None  # None: the pair is to go (or was never there)
    delete: int | None = None  # ifindex of the node's end (the pair goes with it)
    create: VethPair | None = None
    fix: tuple[tuple[str, object], ...] = ()  # the node's end
    peer_fix: tuple[tuple[str, object], ...] = ()
    addresses_del: tuple[Address, ...] = ()
    addresses_add: tuple[Address, ...] = ()
    peer_addresses_del: tuple[Address, ...] = ()
    peer_addresses_add: tuple[Address, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.lines


def _checked(end: VethEnd, name: str) -> LinkFacts | None:
    if end.link is not None and end.link.kind != "veth":
        raise DataplaneError(
            f"link {name} exists and is a {end.link.kind or 'device'}, not the veth pair we "
            "create for the tunnel namespace; delete or rename it, or configure another "
            "tunnel_veth name")
    return end.link


def _fixes(end: VethEnd, pair: VethPair) -> list[tuple[str, object]]:
    assert end.link is not None
    fix: list[tuple[str, object]] = []
    if end.link.mtu != pair.mtu:
        fix.append(("mtu", pair.mtu))
    if not end.link.up:
        fix.append(("up", True))
    if end.gro is not None and end.gro != pair.gro:
        fix.append(("gro", pair.gro))
    return fix


def diff(desired: VethPair | None, name: str, mine: VethEnd, peer: VethEnd) -> VethChanges:
    """`mine`: the end named `name` in the node's namespace; `peer`: the planned peer's name in
    the tunnel namespace (an empty end when that namespace does not exist)."""
    here = _checked(mine, name)
    there = _checked(peer, desired.peer) if desired is not None else None
    if desired is None:
        return VethChanges(delete=here.index, lines=(f"veth {name}: delete",)) if here else (
            VethChanges())
    lines: list[str] = []
    delete = None
    if here is not None and there is None:
        lines.append(f"veth {name}: recreate (no peer {desired.peer} in the tunnel namespace)")
        delete, here = here.index, None
    if here is None:
        lines.append(f"veth {name}: create, peer {desired.peer} in the tunnel namespace, "
                     f"mtu {desired.mtu}, up")
        made = (("up", True), ("gro", desired.gro)) if desired.gro else (("up", True),)
        lines.append(f"veth {name}, {desired.peer}: set {', '.join(f'{k} {v}' for k, v in made)}")
        return VethChanges(desired=desired, delete=delete, create=desired, fix=made,
                           peer_fix=made,
                           addresses_add=((desired.address, desired.prefixlen),),
                           peer_addresses_add=((desired.peer_address, desired.prefixlen),),
                           lines=(*lines, f"address add {desired.address}/{desired.prefixlen} "
                                  f"dev {name}", f"address add {desired.peer_address}/"
                                  f"{desired.prefixlen} dev {desired.peer}"))
    assert there is not None
    fix, peer_fix = _fixes(mine, desired), _fixes(peer, desired)
    lines += [f"veth {n}: set {', '.join(f'{k} {v}' for k, v in f)}"
              for n, f in ((name, fix), (desired.peer, peer_fix)) if f]
    want, peer_want = {(desired.address, desired.prefixlen)}, {(desired.peer_address,
                                                                desired.prefixlen)}
    adds = sorted(want - mine.addresses), sorted(peer_want - peer.addresses)
    dels = sorted(mine.addresses - want), sorted(peer.addresses - peer_want)
    for n, gone, new in ((name, dels[0], adds[0]), (desired.peer, dels[1], adds[1])):
        lines += [f"address del {a}/{p} dev {n}" for a, p in gone]
        lines += [f"address add {a}/{p} dev {n}" for a, p in new]
    return VethChanges(desired=desired, fix=tuple(fix), peer_fix=tuple(peer_fix),
                       addresses_del=tuple(dels[0]),
                       addresses_add=tuple(adds[0]), peer_addresses_del=tuple(dels[1]),
                       peer_addresses_add=tuple(adds[1]), lines=tuple(lines))


class VethApplier:
    invalidated_by: frozenset[str] = frozenset()  # no cache

    def __init__(self, links: Links, name: str, tunnel_links: Callable[[], Links | None],
                 tunnel_netns: str) -> None:
        self.links = links
        self.name = name
        self.tunnel_links = tunnel_links  # None while the tunnel namespace does not exist
        self.tunnel_netns = tunnel_netns

    def forget(self) -> None:
        pass

    def _end(self, links: Links | None, name: str) -> VethEnd:
        link = links.get(name) if links is not None else None
        if link is None or link.kind != "veth":
            return VethEnd(link)
        assert links is not None
        return VethEnd(link, frozenset(links.addresses(link.index)), links.gro(name))

    def read(self, peer: str) -> tuple[VethEnd, VethEnd]:
        return self._end(self.links, self.name), self._end(self.tunnel_links(), peer)

    def apply(self, changes: VethChanges, peer: str) -> int:
        writes = 0
        if changes.delete is not None:
            self.links.delete(changes.delete)
            writes += 1
        if changes.create is not None:
            self.links.add_veth(self.name, peer, self.tunnel_netns, mtu=changes.create.mtu)
            writes += 1
        if changes.desired is None:
            return writes  # a removal
        inside = self.tunnel_links()
        if inside is None:
            raise DataplaneError(f"veth {self.name}: tunnel namespace {self.tunnel_netns!r} is "
                                 "gone")
        for links, name, fix, gone, new in (
                (self.links, self.name, changes.fix, changes.addresses_del,
                 changes.addresses_add),
                (inside, peer, changes.peer_fix, changes.peer_addresses_del,
                 changes.peer_addresses_add)):
            link = links.get(name)
            if link is None:
                raise DataplaneError(f"veth {name}: created but not found")
            for address, prefixlen in gone:
                links.del_address(link.index, address, prefixlen)
            for address, prefixlen in new:
                links.add_address(link.index, address, prefixlen)
            link_fix = dict(fix)
            gro = link_fix.pop("gro", None)
            if link_fix:
                links.set(link.index, **link_fix)  # type: ignore[arg-type]
            if gro is not None:
                try:
                    links.set_gro(name, bool(gro))
                    writes += 1
                except DataplaneError as exc:  # an optimisation: the pair works without it
                    log.warning("%s (the veth works without it)", exc)
            writes += len(gone) + len(new) + (1 if link_fix else 0)
        return writes

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: our end in the node's namespace (its peer goes with it)."""
        link = self.links.get(self.name)
        if link is None or link.kind != "veth":
            return []
        self.links.delete(link.index)
        return [f"delete link {self.name}"]

    def step(self, state: NodeState, p: Pass) -> None:
        peer = state.veth.peer if state.veth is not None else ""
        changes = diff(state.veth, self.name, *self.read(peer))
        if p.take(changes, changes.lines):
            p.writes += self.apply(changes, peer)
            p.links = self.links.all()
