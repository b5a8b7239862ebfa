"""Links and addresses: the VXLAN device (created, fixed in place, or recreated) and its VTEP
address.

Rules kept: a link with our name that is not a VXLAN device is an error, never deleted; attributes
the kernel cannot change on a live device (VNI, port, local address, learning) recreate it, the
others (MTU, MAC, up) are fixed in place; only global-scope addresses are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts, Links
from raven.desired import VxlanDevice

Address = tuple[str, int]  # (address, prefix length)


@dataclass(frozen=True)
class VxlanLive:
    link: LinkFacts | None
    addresses: frozenset[Address] = frozenset()


@dataclass(frozen=True)
class VxlanChanges:
    name: str
    delete: int | None = None  # ifindex of a device to delete (removal or recreate)
    create: VxlanDevice | None = None
    index: int | None = None  # the device kept in place
    fix: tuple[tuple[str, object], ...] = ()  # ("mtu", 1450), ("mac", ...), ("up", True)
    addresses_del: tuple[Address, ...] = ()
    addresses_add: tuple[Address, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.lines


def diff(desired: VxlanDevice | None, name: str, live: VxlanLive) -> VxlanChanges:
    have = live.link
    if have is not None and have.kind != "vxlan":
        raise DataplaneError(
            f"link {name} exists and is a {have.kind or 'device'}, not the VXLAN device we "
            "create; delete or rename it, or configure another VXLAN device name")
    if desired is None:
        if have is None:
            return VxlanChanges(name)
        return VxlanChanges(name, delete=have.index, lines=(f"vxlan {name}: delete",))
    lines: list[str] = []
    delete = None
    addresses = live.addresses
    if have is not None and have.vxlan is not None:
        immutable = {
            "vni": (have.vxlan.vni, desired.vni),
            "port": (have.vxlan.port, desired.port),
            "local": (have.vxlan.local, desired.local_ip),
            "learning": (have.vxlan.learning, False),
        }
        differ = [f"{k} {a} -> {b}" for k, (a, b) in immutable.items() if a != b]
        if differ:
            lines.append(f"vxlan {name}: recreate ({', '.join(differ)})")
            delete, have, addresses = have.index, None, frozenset()
    fix: list[tuple[str, object]] = []
    if have is None:
        lines.append(f"vxlan {name}: create vni {desired.vni} port {desired.port} "
                     f"local {desired.local_ip} mtu {desired.mtu}")
        fix.append(("up", True))  # the kernel creates links down
        lines.append(f"vxlan {name}: set up True")
    else:
        if have.mtu != desired.mtu:
            fix.append(("mtu", desired.mtu))
        if have.mac != desired.mac.lower():
            fix.append(("mac", desired.mac.lower()))
        if not have.up:
            fix.append(("up", True))
        if fix:
            lines.append(f"vxlan {name}: set {', '.join(f'{k} {v}' for k, v in fix)}")
    want = {(desired.vtep_ip, desired.vtep_prefixlen)}
    stale, missing = sorted(addresses - want), sorted(want - addresses)
    lines += [f"address del {a}/{p} dev {name}" for a, p in stale]
    lines += [f"address add {a}/{p} dev {name}" for a, p in missing]
    return VxlanChanges(name, delete=delete, create=desired if have is None else None,
                        index=have.index if have is not None else None, fix=tuple(fix),
                        addresses_del=tuple(stale), addresses_add=tuple(missing),
                        lines=tuple(lines))


class VxlanApplier:
    invalidated_by: frozenset[str] = frozenset()  # no cache: links come from the caller's dump

    def __init__(self, links: Links, name: str) -> None:
        self.links = links
        self.name = name

    def forget(self) -> None:
        pass

    def read(self, links: dict[str, LinkFacts]) -> VxlanLive:
        link = links.get(self.name)
        if link is None or link.kind != "vxlan":
            return VxlanLive(link)
        return VxlanLive(link, frozenset(self.links.addresses(link.index)))

    def apply(self, changes: VxlanChanges) -> int:
        writes = 0
        if changes.delete is not None:
            self.links.delete(changes.delete)
            writes += 1
        index = changes.index
        want = changes.create
        if want is not None:
            self.links.add_vxlan(changes.name, want.vni, want.port, want.local_ip,
                                 want.mac.lower(), want.mtu)
            writes += 1
            created = self.links.get(changes.name)
            if created is None:
                raise DataplaneError(f"vxlan {changes.name}: created but not found")
            index = created.index
        if changes.fix and index is not None:
            self.links.set(index, **dict(changes.fix))  # type: ignore[arg-type]
            writes += 1
        for address, prefixlen in changes.addresses_del:
            self.links.del_address(index, address, prefixlen)  # type: ignore[arg-type]
            writes += 1
        for address, prefixlen in changes.addresses_add:
            self.links.add_address(index, address, prefixlen)  # type: ignore[arg-type]
            writes += 1
        return writes
