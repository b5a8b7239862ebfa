"""Links and addresses: the VXLAN device (created, fixed in place, or recreated) and its VTEP
addresses (IPv4, and IPv6 when the plan sets `vtep_ip6`).

Rules kept: a link with our name that is not a VXLAN device is an error, never deleted; attributes
the kernel cannot change on a live device (VNI, port, local address, learning) recreate it, the
others (MTU, MAC, up) are fixed in place; only global-scope addresses are ours. The underlay
family is the family of `local_ip` (IFLA_VXLAN_LOCAL or IFLA_VXLAN_LOCAL6).
IPv6 on our own device: a host may disable IPv6 per device (net.ipv6.conf.<dev>.disable_ipv6=1,
inherited from `default` when the device is created, or set on every device through `all`). The
kernel then refuses IPv6 addresses, so before adding the IPv6 VTEP we set it back to 0 on raven0
(the device is ours; the host's other devices are untouched). A kernel without IPv6 at all is a
DataplaneError naming the device and the sysctl; the caller then applies the IPv4 half alone.
In a tunnel namespace (docs/tunnel-namespace.md) the applier has a `birth` namespace, the node's:
the device is created there and moved in, so its UDP socket stays on the node's underlay (a
device moved keeps the socket of the namespace it was made in). One of ours found in the birth
namespace (an agent of the one-namespace shape before, or a crash between create and move) is
moved in when its fixed attributes fit, never deleted and made again; one in the tunnel
namespace that was made there (no IFLA_LINK_NETNSID: its socket is in a namespace without an
underlay) is recreated.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.dataplane import sysctl
from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts, Links
from raven.desired import NodeState, VxlanDevice

Address = tuple[str, int]  # (address, prefix length)


@dataclass(frozen=True)
class VxlanLive:
    link: LinkFacts | None
    addresses: frozenset[Address] = frozenset()
    # net.ipv6.conf.<dev>.disable_ipv6 of the live device: None when unknown (no device, or no
    # IPv6 in the kernel, which `apply` reports when an IPv6 address is wanted)
    ipv6_disabled: bool | None = None
    # With a birth namespace: the device of our name there when there is none here (None
    # otherwise), to be moved in or replaced.
    stray: LinkFacts | None = None


@dataclass(frozen=True)
class VxlanChanges:
    name: str
    delete: int | None = None  # ifindex of a device to delete (removal or recreate)
    adopt: int | None = None  # ifindex in the birth namespace of our device, to move in
    delete_stray: int | None = None  # ifindex in the birth namespace of one that cannot be
    create: VxlanDevice | None = None
    index: int | None = None  # the device kept in place
    fix: tuple[tuple[str, object], ...] = ()  # ("mtu", 1450), ("mac", ...), ("up", True)
    enable_ipv6: bool = False  # set net.ipv6.conf.<dev>.disable_ipv6=0 before the addresses
    addresses_del: tuple[Address, ...] = ()
    addresses_add: tuple[Address, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.lines


def _differ(have: LinkFacts, desired: VxlanDevice) -> list[str]:
    """The attributes a live device cannot change that differ from the plan."""
    if have.vxlan is None:
        return ["not a VXLAN device"]
    immutable = {
        "vni": (have.vxlan.vni, desired.vni),
        "port": (have.vxlan.port, desired.port),
        "local": (have.vxlan.local, desired.local_ip),
        "learning": (have.vxlan.learning, False),
    }
    return [f"{k} {a} -> {b}" for k, (a, b) in immutable.items() if a != b]


def _from_birth(stray: LinkFacts | None, desired: VxlanDevice, name: str, lines: list[str]
                ) -> tuple[int | None, int | None, list[tuple[str, object]]]:
    """(ifindex to move in, ifindex to delete, fixes after the move) for our device found in
    the birth namespace; the lines appended to `lines`."""
    if stray is None or stray.kind != "vxlan":
        return None, None, []
    differ = _differ(stray, desired)
    if differ:
        lines.append(f"vxlan {name}: delete the node's ({', '.join(differ)})")
        return None, stray.index, []
    fix: list[tuple[str, object]] = [("up", True)]  # a moved device arrives down, bare
    if stray.mtu != desired.mtu:
        fix.append(("mtu", desired.mtu))
    if stray.mac != desired.mac.lower():
        fix.append(("mac", desired.mac.lower()))
    lines.append(f"vxlan {name}: move in from the node's namespace")
    lines.append(f"vxlan {name}: set {', '.join(f'{k} {v}' for k, v in fix)}")
    return stray.index, None, fix


def diff(desired: VxlanDevice | None, name: str, live: VxlanLive, *,
         moved: bool = False) -> VxlanChanges:
    """`moved`: the device must have been made in another namespace and moved in (a tunnel
    namespace's; the module's rules)."""
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
        differ = _differ(have, desired)
        if moved and have.link_netnsid is None:
            differ.append("made in this namespace, not moved in: its socket has no underlay")
        if differ:
            lines.append(f"vxlan {name}: recreate ({', '.join(differ)})")
            delete, have, addresses = have.index, None, frozenset()
    adopt, delete_stray, fix = _from_birth(live.stray if have is None else None, desired,
                                           name, lines)
    if have is None and adopt is None:
        lines.append(f"vxlan {name}: create vni {desired.vni} port {desired.port} "
                     f"local {desired.local_ip} mtu {desired.mtu}")
        fix.append(("up", True))  # the kernel creates links down
        lines.append(f"vxlan {name}: set up True")
    elif have is not None:
        if have.mtu != desired.mtu:
            fix.append(("mtu", desired.mtu))
        if have.mac != desired.mac.lower():
            fix.append(("mac", desired.mac.lower()))
        if not have.up:
            fix.append(("up", True))
        if fix:
            lines.append(f"vxlan {name}: set {', '.join(f'{k} {v}' for k, v in fix)}")
    want = set(wanted_addresses(desired))
    stale, missing = sorted(addresses - want), sorted(want - addresses)
    # A disabled device holds no IPv6 address, so the IPv6 VTEP is then among `missing`. On a
    # device about to be created the value is inherited from `default`: apply() checks it.
    enable = desired.vtep_ip6 is not None and have is not None and live.ipv6_disabled is True
    if enable:
        lines.append(f"sysctl net.ipv6.conf.{name}.disable_ipv6 1 -> 0")
    lines += [f"address del {a}/{p} dev {name}" for a, p in stale]
    lines += [f"address add {a}/{p} dev {name}" for a, p in missing]
    return VxlanChanges(name, delete=delete, adopt=adopt, delete_stray=delete_stray,
                        create=desired if have is None and adopt is None else None,
                        index=have.index if have is not None else None, fix=tuple(fix),
                        enable_ipv6=enable, addresses_del=tuple(stale),
                        addresses_add=tuple(missing), lines=tuple(lines))


def wanted_addresses(desired: VxlanDevice) -> tuple[Address, ...]:
    """The device's VTEP addresses: IPv4 always, IPv6 when the plan routes IPv6."""
    if desired.vtep_ip6 is None:
        return ((desired.vtep_ip, desired.vtep_prefixlen),)
    return ((desired.vtep_ip, desired.vtep_prefixlen),
            (desired.vtep_ip6, desired.vtep6_prefixlen))


def ipv6_off_key(name: str) -> str:
    return f"net.ipv6.conf.{name}.disable_ipv6"


class VxlanApplier:
    invalidated_by: frozenset[str] = frozenset()  # no cache: links come from the caller's dump

    def __init__(self, links: Links, name: str, netns_name: str | None = None,
                 birth: Links | None = None) -> None:
        self.links = links
        self.name = name
        self.netns = netns_name
        self.birth = birth  # the node's namespace, for a tunnel namespace's device

    def forget(self) -> None:
        pass

    def read(self, links: dict[str, LinkFacts], ipv6: bool = False) -> VxlanLive:
        """`ipv6`: the plan wants an IPv6 VTEP, so read the device's disable_ipv6 too (an
        IPv4-only reconcile does not pay for entering the namespace to read it)."""
        link = links.get(self.name)
        if link is None and self.birth is not None:
            return VxlanLive(None, stray=self.birth.get(self.name))
        if link is None or link.kind != "vxlan":
            return VxlanLive(link)
        if not ipv6:
            return VxlanLive(link, frozenset(self.links.addresses(link.index)))
        value = sysctl.read(self.netns, ipv6_off_key(self.name))
        return VxlanLive(link, frozenset(self.links.addresses(link.index)),
                         None if value is None else value != "0")

    def _enable_ipv6(self) -> int:
        """disable_ipv6=0 on our device (inherited 1 from `default`/`all`, or set by hand):
        1 write when it was needed, 0 otherwise."""
        key = ipv6_off_key(self.name)
        value = sysctl.read(self.netns, key)
        if value is None:
            raise DataplaneError(
                f"vxlan {self.name}: the plan gives it an IPv6 VTEP but this kernel has no IPv6 "
                f"({key} does not exist: IPv6 is off on the kernel command line, ipv6.disable=1). "
                "Boot without ipv6.disable=1, or give the pool no IPv6 podCIDRs")
        if value == "0":
            return 0
        try:
            sysctl.write(self.netns, key, "0")
        except DataplaneError as exc:
            raise DataplaneError(
                f"vxlan {self.name}: IPv6 is disabled on the device ({key}={value}) and setting "
                f"it to 0 failed ({exc}); allow writing {key}, or give the pool no IPv6 podCIDRs"
            ) from None
        return 1

    def apply(self, changes: VxlanChanges) -> int:
        writes = 0
        if changes.delete is not None:
            self.links.delete(changes.delete)
            writes += 1
        index = changes.index
        if changes.delete_stray is not None and self.birth is not None:
            self.birth.delete(changes.delete_stray)
            writes += 1
        want = changes.create
        if want is not None:
            made = self.birth or self.links
            made.add_vxlan(changes.name, want.vni, want.port, want.local_ip,
                           want.mac.lower(), want.mtu)
            writes += 1
            if self.birth is not None:
                index = self._move_in(self.birth.get(changes.name))
                writes += 1
            else:
                index = self._found(self.links.get(changes.name))
        elif changes.adopt is not None:
            index = self._move_in(changes.adopt)
            writes += 1
        if changes.fix and index is not None:
            self.links.set(index, **dict(changes.fix))  # type: ignore[arg-type]
            writes += 1
        for address, prefixlen in changes.addresses_del:
            self.links.del_address(index, address, prefixlen)  # type: ignore[arg-type]
            writes += 1
        if changes.enable_ipv6 or any(":" in a for a, _p in changes.addresses_add):
            writes += self._enable_ipv6()
        for address, prefixlen in changes.addresses_add:
            self.links.add_address(index, address, prefixlen)  # type: ignore[arg-type]
            writes += 1
        return writes

    def _found(self, link: LinkFacts | None) -> int:
        if link is None:
            raise DataplaneError(f"vxlan {self.name}: created but not found")
        return link.index

    def _move_in(self, found: LinkFacts | int | None) -> int:
        """Move the birth namespace's device (facts or ifindex) into ours; its index here."""
        assert self.birth is not None and self.netns is not None
        index = found.index if isinstance(found, LinkFacts) else found
        if index is None:
            raise DataplaneError(f"vxlan {self.name}: created but not found")
        self.birth.move(index, self.netns)
        return self._found(self.links.get(self.name))

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: our device (a link of our name that is a VXLAN device; a foreign
        link of that name is left alone), its addresses and entries with it."""
        link = self.links.get(self.name)
        if link is None or link.kind != "vxlan":
            return []
        self.apply(diff(None, self.name, VxlanLive(link)))
        return [f"delete link {self.name}"]

    def step(self, state: NodeState, p: Pass) -> None:
        ipv6 = state.vxlan is not None and state.vxlan.vtep_ip6 is not None
        changes = diff(state.vxlan, self.name, self.read(p.links, ipv6=ipv6),
                       moved=self.birth is not None)
        if p.take(changes, changes.lines):
            p.writes += self.apply(changes)
            if (changes.create is not None or changes.delete is not None
                    or changes.adopt is not None):
                p.links = self.links.all()  # the device came or went
