"""The typed adapter around pyroute2 for links and addresses (few objects, rich attributes).

Rules kept: no pyroute2 object or exception leaves this module; callers get `LinkFacts` and
`DataplaneError`. Bulk objects (routes, neighbours, rules) do not go through here: see rtnl.py.
Another namespace is named by its /var/run/netns name and opened here for the one request that
needs it (IFLA_NET_NS_FD), never left for pyroute2 to open or create.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.exceptions import NetlinkError as PyrouteNetlinkError

from raven.dataplane import netns
from raven.dataplane.errors import DataplaneError

ENODEV = 19
EOPNOTSUPP = 95
EACCES = 13
EEXIST = 17
EINVAL = 22
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class VxlanFacts:
    vni: int
    port: int
    local: str | None
    learning: bool


@dataclass(frozen=True)
class LinkFacts:
    index: int
    name: str
    kind: str  # "vxlan", "wireguard", "tun", "veth", ... ("" when the kernel reports none)
    mtu: int
    mac: str
    up: bool
    vxlan: VxlanFacts | None = None
    # IFLA_LINK_NETNSID: the id, as this namespace numbers them, of the namespace holding what
    # the device is bound to: a veth's peer, a VXLAN device's UDP socket when it was created
    # elsewhere and moved here. None when that is this namespace (or the kind has no such link).
    link_netnsid: int | None = None


class LinkUnsupported(DataplaneError):
    """The kernel has no driver for a link kind (e.g. no wireguard module)."""


def _facts(msg: Any) -> LinkFacts:
    info = msg.get("linkinfo")
    kind = info.get("kind") if info is not None else None
    vxlan = None
    if kind == "vxlan":
        data = info.get("data")
        vxlan = VxlanFacts(
            vni=int(data.get("vxlan_id")),
            port=int(data.get("vxlan_port")),
            # IFLA_VXLAN_LOCAL6 over an IPv6 underlay; the kernel sends only the one in use.
            local=data.get("vxlan_local") or data.get("vxlan_local6"),
            learning=bool(data.get("vxlan_learning")),
        )
    return LinkFacts(
        index=int(msg["index"]),
        name=str(msg.get("ifname")),
        kind=str(kind or ""),
        mtu=int(msg.get("mtu")),
        mac=str(msg.get("address") or "").lower(),
        up=bool(msg["flags"] & 1),
        vxlan=vxlan,
        link_netnsid=_optional_int(msg.get("link_netnsid")),
    )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _move_reason(exc: PyrouteNetlinkError) -> str:
    if exc.code == EEXIST:
        return "a link of that name is there already; delete or rename one of them first"
    if exc.code == EINVAL:
        return "the kernel keeps this kind of link in its namespace (e.g. lo)"
    if exc.code == ENODEV:
        return "no such link (deleted meanwhile?)"
    return str(exc.args[-1] if exc.args else exc)


class Links:
    """Links and addresses of one network namespace."""

    def __init__(self, netns_name: str | None) -> None:
        self.netns = netns_name
        # pyroute2 would silently CREATE a missing namespace: refuse instead.
        with netns.entered(netns_name):
            pass
        try:
            self._ipr = IPRoute(netns=netns_name) if netns_name else IPRoute()
        except Exception as exc:
            raise DataplaneError(f"cannot open rtnetlink in netns {netns_name!r}: {exc}") from exc

    def close(self) -> None:
        self._ipr.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PyrouteNetlinkError as exc:
            if exc.code == EOPNOTSUPP:
                raise LinkUnsupported(f"{what}: not supported by this kernel") from None
            raise DataplaneError(f"{what}: {exc.args[-1] if exc.args else exc}") from None

    def all(self) -> dict[str, LinkFacts]:
        """One dump of every link (no cache: the caller decides how long a dump is valid)."""
        return {f.name: f for f in map(_facts, self._call("link dump", self._ipr.link, "dump"))}

    def get(self, name: str) -> LinkFacts | None:
        try:
            msgs = self._ipr.link("get", ifname=name)
        except PyrouteNetlinkError as exc:
            if exc.code == ENODEV:
                return None
            raise DataplaneError(f"link get {name}: {exc}") from None
        return _facts(msgs[0])

    def add_vxlan(self, name: str, vni: int, port: int, local: str, mac: str, mtu: int) -> None:
        # The underlay family is the family of the local address (the planner's `local_ip`).
        local_attr = {"vxlan_local6" if ":" in local else "vxlan_local": local}
        self._call(
            f"create VXLAN device {name} (vni {vni}, port {port}, local {local})",
            self._ipr.link, "add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port,
            vxlan_learning=0, address=mac, mtu=mtu, **local_attr,
        )

    def add_wireguard(self, name: str) -> None:
        self._call(f"create WireGuard device {name}", self._ipr.link, "add", ifname=name,
                   kind="wireguard")

    def add_veth(self, name: str, peer: str, peer_netns: str | None,
                 mtu: int | None = None) -> None:
        """A veth pair: `name` here, `peer` made directly inside namespace `peer_netns` (None:
        here too), both with `mtu` when given (a peer does not inherit the first end's MTU)."""
        where = f" in network namespace {peer_netns!r}" if peer_netns else ""
        what = f"create veth {name} with peer {peer}{where}"
        common: dict[str, Any] = {} if mtu is None else {"mtu": mtu}
        with contextlib.ExitStack() as stack:
            peer_attrs: dict[str, Any] = {"ifname": peer, **common}
            if peer_netns is not None:
                peer_attrs["net_ns_fd"] = stack.enter_context(netns.opened(peer_netns))
            self._call(what, self._ipr.link, "add", ifname=name, kind="veth", peer=peer_attrs,
                       **common)

    def move(self, index: int, netns_name: str) -> None:
        """Move link `index` into named namespace `netns_name` (IFLA_NET_NS_FD).

        The device arrives down, without its addresses, routes and neighbours (the kernel
        flushes them on the way); what it is bound to stays where it was: a VXLAN device
        keeps the UDP socket of the namespace it was created in, a TUN device the process
        holding its file descriptor.
        """
        what = f"move link {index} into network namespace {netns_name!r}"
        with netns.opened(netns_name) as fd:
            try:
                self._ipr.link("set", index=index, net_ns_fd=fd)
            except PyrouteNetlinkError as exc:
                raise DataplaneError(f"{what}: {_move_reason(exc)}") from None

    def set(self, index: int, *, mtu: int | None = None, mac: str | None = None,
            up: bool | None = None) -> None:
        changes: dict[str, Any] = {}
        if mtu is not None:
            changes["mtu"] = mtu
        if mac is not None:
            changes["address"] = mac
        if up is not None:
            changes["state"] = "up" if up else "down"
        self._call(f"set link {index} {changes}", self._ipr.link, "set", index=index, **changes)

    @contextlib.contextmanager
    def _ethtool(self) -> Iterator[Any]:
        """pyroute2's ethtool client for this namespace (its sockets, and so the device names
        it resolves, are the namespace's they were opened in), closed after."""
        with netns.entered(self.netns):
            ethtool = Ethtool()
        try:
            yield ethtool
        finally:
            ethtool.close()

    def gro(self, name: str) -> bool | None:
        """Whether generic receive offload (ethtool's rx-gro) is on for link `name`; None when
        the device cannot have it or its features cannot be read (an optimisation: never a
        reason to fail an apply)."""
        try:
            with self._ethtool() as ethtool:
                feature = ethtool.get_features(name).features.get("rx-gro")
        except Exception:  # pyroute2's ethtool raises plain and its own exceptions
            return None
        return None if feature is None or not feature.available else bool(feature.enable)

    def set_gro(self, name: str, on: bool) -> None:
        try:
            with self._ethtool() as ethtool:
                features = ethtool.get_features(name)
                features.features["rx-gro"].enable = on
                ethtool.set_features(name, features)
        except Exception as exc:
            raise DataplaneError(f"link {name}: setting rx-gro {'on' if on else 'off'}: "
                                 f"{exc}") from None

    def delete(self, index: int) -> None:
        try:
            self._ipr.link("del", index=index)
        except PyrouteNetlinkError as exc:
            if exc.code != ENODEV:
                raise DataplaneError(f"delete link {index}: {exc}") from None

    def addresses(self, index: int) -> set[tuple[str, int]]:
        """Global-scope addresses of a link as (address, prefixlen)."""
        out = set()
        for msg in self._call("address dump", self._ipr.addr, "dump", index=index):
            if msg["scope"] == 0:
                out.add((str(msg.get("address")), int(msg["prefixlen"])))
        return out

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        extra: dict[str, Any] = {}
        if ":" in address:
            # No duplicate address detection: VTEP addresses are derived per node (collisions
            # are reported by the planner), and DAD would leave the address tentative for a
            # second, unusable as a source.
            extra["flags"] = IFA_F_NODAD
        try:
            self._ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **extra)
        except PyrouteNetlinkError as exc:
            if exc.code == EACCES and ":" in address:
                raise DataplaneError(
                    f"add address {address}/{prefixlen} on link {index}: IPv6 is disabled on "
                    "the device (net.ipv6.conf.<dev>.disable_ipv6=1)") from None
            raise DataplaneError(f"add address {address}/{prefixlen}: "
                                 f"{exc.args[-1] if exc.args else exc}") from None

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        self._call(f"delete address {address}/{prefixlen}", self._ipr.addr, "del", index=index,
                   address=address, prefixlen=prefixlen)
