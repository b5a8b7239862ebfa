"""The WireGuard applier: one device, kernel or userspace backend chosen once.

Backend choice (`auto`): an existing device decides (kind "wireguard" = kernel, a TUN device =
userspace); otherwise we try to create a kernel device and fall back to wireguard-go when the
kernel has no wireguard driver. `kernel` / `userspace` force one; a device of the other kind is
then replaced. Rules kept: `diff` is pure (model.diff_device for the peers); a peer that is equal
is never written; a peer that cannot be written (malformed key or endpoint) is skipped and
reported, the others are applied; the device MTU and up state are fixed in place.

Cache (why one change among 10,000 allowed IPs costs a few ms with wireguard-go, whose `get`
prints every allowed IP): after a successful write we remember the device as we left it, keyed
by the device's ifindex and the daemon's pid, and diff against that instead of reading it back.
Nothing notifies us of a foreign `wg set`, so the cache is replaced by a full read on
`read(fresh=True)` (repair, observe), and dropped on any failed write, a new ifindex or pid, and
when it is older than RESYNC_S.

Besides the reconcile, the applier owns what else touches the device: the node's key pair
(`private_key`, `public_key`: created once in the state directory, see keys.py), the peer
operations of the agent's path manager outside a reconcile (`peers`, `take_allowed_ips`,
`renew_peers`), the liveness datagrams of direct paths (`nudge`, nudge.py) and its part of
cleanup (`remove`: the daemon, then the device).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts, Links, LinkUnsupported
from raven.dataplane.wireguard import keys, nudge
from raven.dataplane.wireguard.genl import KernelWireGuard
from raven.dataplane.wireguard.model import (
    DeviceWrite,
    LiveDevice,
    LivePeer,
    PeerWrite,
    diff_device,
    split_peers,
)
from raven.dataplane.wireguard.userspace import WireGuardGo
from raven.desired import NodeState, WireGuardDevice
from raven.settings import WIREGUARD_BACKENDS as BACKENDS  # the one table of backends

RESYNC_S = 30.0  # the longest we trust what we wrote without reading the device back
_EMPTY = LiveDevice(private_key=None, listen_port=0)


class Configurator(Protocol):
    def get(self) -> LiveDevice: ...
    def set(self, write: DeviceWrite) -> None: ...


def kind_of(link: LinkFacts | None) -> str | None:
    if link is None:
        return None
    if link.kind == "wireguard":
        return "kernel"
    if link.kind == "tun":
        return "userspace"
    return "foreign"


@dataclass(frozen=True)
class WgLive:
    link: LinkFacts | None
    device: LiveDevice | None  # None: no device of ours, or its configuration is unreadable
    daemon: bool = False  # our wireguard-go runs (it may outlive its device)


@dataclass(frozen=True)
class WgChanges:
    ifname: str
    desired: WireGuardDevice | None = None
    remove: int | None = None  # 0 = stop the daemon only, else also delete this ifindex
    create: bool = False  # no device of the wanted backend yet
    fix_link: bool = False
    write: DeviceWrite = field(default_factory=DeviceWrite)
    unreadable: bool = False
    skipped: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return (self.remove is None and not self.create and not self.fix_link
                and self.write.empty() and not self.unreadable)


def diff(desired: WireGuardDevice | None, private_key: str, live: WgLive, *, ifname: str,
         requested: str, userspace: bool) -> WgChanges:
    """The pure diff. `userspace`: the device is (or will be) wireguard-go's, whose UAPI
    removes allowed IPs by moving them to a throwaway peer (model.py)."""
    kind = kind_of(live.link)
    if kind == "foreign":
        raise DataplaneError(
            f"link {ifname} exists and is a {live.link.kind or 'device'} we did not "  # type: ignore[union-attr]
            "create; delete or rename it, or configure another WireGuard device name")
    if desired is None:
        if kind is not None:
            return WgChanges(ifname, remove=live.link.index,  # type: ignore[union-attr]
                             lines=(f"wireguard {ifname}: delete device",))
        if live.daemon:
            return WgChanges(ifname, remove=0, lines=(f"wireguard {ifname}: stop wireguard-go",))
        return WgChanges(ifname)
    lines: list[str] = []
    create = kind is None or (requested != "auto" and kind != requested)
    if kind is None:
        lines.append(f"wireguard {ifname}: create device ({requested})")
    elif create:
        lines.append(f"wireguard {ifname}: replace {kind} device by {requested}")
    link = None if create else live.link
    fix_link = link is None or link.mtu != desired.mtu or not link.up
    if fix_link:
        lines.append(f"wireguard {ifname}: mtu {link.mtu if link else None} -> {desired.mtu}, up")
    unreadable = not create and live.device is None
    if unreadable:
        lines.append(f"wireguard {ifname}: configuration unreadable")
    device = _EMPTY if create or live.device is None else live.device
    peers, skipped = split_peers(desired.peers)
    write, peer_lines = diff_device(private_key, desired.listen_port, peers, device,
                                    move_removed=userspace)
    return WgChanges(ifname, desired, create=create, fix_link=fix_link, write=write,
                     unreadable=unreadable, skipped=skipped, lines=(*lines, *peer_lines))


class WireGuardApplier:
    invalidated_by: frozenset[str] = frozenset()  # nothing notifies WireGuard changes

    def __init__(self, *, links: Links, netns_name: str | None, ifname: str, backend: str,
                 state_dir: Path, run_dir: Path | None, wireguard_go: str,
                 fwmark: int = 0, birth: Links | None = None) -> None:
        if backend not in BACKENDS:
            raise DataplaneError(
                f"wireguard backend {backend!r} is not valid; use one of {', '.join(BACKENDS)}")
        self.links = links
        self.netns = netns_name
        self.ifname = ifname
        self.requested = backend
        self.state_dir = Path(state_dir)
        self.fwmark = fwmark  # marks the nudges, so our policy rule routes them into the device
        self._private_key: str | None = None  # base64, loaded by the last writing pass
        self._nudger: nudge.Nudger | None = None
        # In a tunnel namespace (docs/tunnel-namespace.md) the device is made in the node's
        # namespace (`birth`: the kernel device's UDP socket, wireguard-go itself and its
        # socket stay there, on the underlay) and moved in; one of ours found there is moved in.
        self.birth = birth
        self.daemon = WireGuardGo(netns_name=birth.netns if birth is not None else netns_name,
                                  ifname=ifname, state_dir=state_dir, run_dir=run_dir,
                                  binary=wireguard_go)
        self._kernel: KernelWireGuard | None = None
        self.backend: str | None = None  # resolved: "kernel" | "userspace"
        # (ifindex, daemon pid, monotonic time of the last full read, device as we left it)
        self._cache: tuple[int, int | None, float, LiveDevice] | None = None

    def forget(self) -> None:
        self._cache = None

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None
        if self._nudger is not None:
            self._nudger.close()
            self._nudger = None

    # --- the key pair -------------------------------------------------------------------------

    def private_key(self, *, load: bool) -> str:
        """The private key (base64) the device is to have. Only a writing pass may `load` it:
        loading creates the state directory and a new key when the file is gone (a write, and
        a new identity); a reading pass (observe) compares with the key the last load gave."""
        if load:
            self._private_key = keys.b64(keys.load_or_create_private_key(self.state_dir))
        return self._private_key or ""

    def public_key(self) -> str:
        return keys.b64(keys.public_key_of(keys.load_or_create_private_key(self.state_dir)))

    def _owner(self) -> int | None:
        return self.daemon.pid() if self.backend == "userspace" else None

    def _configurator(self) -> Configurator:
        if self.backend == "kernel":
            if self._kernel is None:
                self._kernel = KernelWireGuard(self.netns, self.ifname)
            return self._kernel
        return self.daemon.uapi

    def write(self, write: DeviceWrite) -> None:
        """One write outside a reconcile (a path take-over); the cache is dropped, so the next
        diff reads the device."""
        try:
            self._configurator().set(write)
        finally:
            self._cache = None

    # --- outside a reconcile (the agent's path manager) -----------------------------------

    def _device_now(self) -> LiveDevice | None:
        link = self.links.get(self.ifname)
        if link is None:
            return None
        return self.read({link.name: link}, fresh=True).device

    def peers(self) -> dict[str, LivePeer]:
        """The peers as the device reports them now, by public key ({} without a device)."""
        live = self._device_now()
        return dict(live.peers) if live is not None else {}

    def take_allowed_ips(self, public_key: str, cidrs: tuple[str, ...],
                         at: float | None = None) -> None:
        """Give `cidrs` to the existing peer `public_key` in one write (each allowed IP leaves
        the peer that held it). `at` (monotonic seconds): write at that instant, not before
        (the caller holds its lock across the wait, so no read of ours delays the write)."""
        if at is not None:
            time.sleep(max(0.0, at - time.monotonic()))
        if not cidrs or self.backend is None:
            return
        self.write(DeviceWrite(peers=(
            PeerWrite(public_key=public_key, allowed_ips=tuple(sorted(cidrs))),)))

    def renew_peers(self, public_keys: list[str]) -> list[str]:
        """Make each peer of `public_keys` that never completed a handshake afresh (same
        endpoint, keepalive, allowed IPs, preshared key) in one write; returns the keys
        renewed. A peer with a handshake by now is left alone."""
        live = self._device_now()
        if live is None:
            return []
        writes: list[PeerWrite] = []
        for key in public_keys:
            peer = live.peers.get(key)
            if peer is None or peer.last_handshake or not peer.endpoint:
                continue
            writes += [PeerWrite(public_key=key, remove=True),
                       PeerWrite(public_key=key, endpoint=peer.endpoint,
                                 keepalive=peer.keepalive, preshared_key=peer.preshared_key,
                                 replace_allowed_ips=True,
                                 allowed_ips=tuple(sorted(peer.allowed_ips)))]
        if writes:
            self.write(DeviceWrite(peers=tuple(writes)))
        return [w.public_key for w in writes if not w.remove]

    def nudge(self, source: str, destinations: Iterable[str]) -> int:
        """Liveness datagrams of direct paths through the device (nudge.py); the socket is
        opened on first use and closed with the applier."""
        if self._nudger is None:
            self._nudger = nudge.Nudger(self.netns, self.fwmark)
        return self._nudger.send(source, destinations)

    # --- read -------------------------------------------------------------------------------

    def read(self, links: dict[str, LinkFacts], *, fresh: bool = False) -> WgLive:
        link = links.get(self.ifname)
        kind = kind_of(link)
        if kind not in ("kernel", "userspace"):
            return WgLive(link, None, daemon=self.daemon.pid() is not None)
        self.backend = kind  # the live device decides how to talk to it
        cached = None if fresh else self._cached(link)  # type: ignore[arg-type]
        if cached is not None:
            return WgLive(link, cached, daemon=True)
        try:
            device = self._configurator().get()
        except DataplaneError:
            self._cache = None
            return WgLive(link, None)
        self._cache = (link.index, self._owner(), time.monotonic(), device)  # type: ignore[union-attr]
        return WgLive(link, device, daemon=True)

    def _cached(self, link: LinkFacts) -> LiveDevice | None:
        cache = self._cache
        if cache is None:
            return None
        index, pid, read_at, device = cache
        if index != link.index or time.monotonic() - read_at > RESYNC_S or pid != self._owner():
            self._cache = None
            return None
        return device

    def diff(self, desired: WireGuardDevice | None, private_key: str,
             live: WgLive) -> WgChanges:
        kind = kind_of(live.link)
        userspace = (self.requested == "userspace"
                     or (self.requested == "auto" and (kind or self.backend) == "userspace"))
        return diff(desired, private_key, live, ifname=self.ifname, requested=self.requested,
                    userspace=userspace)

    # --- apply ------------------------------------------------------------------------------

    def apply(self, changes: WgChanges, private_key: str,
              link: LinkFacts | None) -> tuple[int, list[str]]:
        """Writes the changes (`link`: the device as read); returns (writes, lines of what
        happened to the device beyond the diff: creation, backend fallback, daemon start)."""
        try:
            return self._apply(changes, private_key, link)
        except BaseException:
            self._cache = None  # a failed write leaves the device unknown
            raise

    def _apply(self, changes: WgChanges, private_key: str,
               link: LinkFacts | None) -> tuple[int, list[str]]:
        if changes.remove is not None:
            self._cache = None
            self.daemon.stop()
            if changes.remove:
                self.links.delete(changes.remove)
            return 1, []
        desired = changes.desired
        if desired is None:
            return 0, []
        extra: list[str] = []
        writes = 0
        if link is None and self.birth is not None:
            writes, link = self._move_in(self.birth.get(self.ifname), desired.mtu, extra)
        writes += self._ensure_device(link, extra, desired.mtu)
        have = self.links.get(self.ifname) if writes or link is None else link
        if have is None:
            raise DataplaneError(f"wireguard {self.ifname}: device did not appear")
        write = changes.write
        if writes or changes.create or changes.unreadable:
            # A new device or daemon: what we diffed against is gone. Read it, diff again.
            self._cache = None
            live = self.read({self.ifname: have}, fresh=True)
            if live.device is None:
                self._configurator().get()  # raises the clear error naming the socket
            write = self.diff(desired, private_key, live).write
        if have.mtu != desired.mtu or not have.up:
            self.links.set(have.index, mtu=desired.mtu, up=True)
            writes += 1
        if not write.empty():
            cache = self._cache
            self._cache = None
            self._configurator().set(write)
            writes += 1
            if cache is not None:
                self._cache = (*cache[:3], after_write(cache[3], write))
        return writes, extra

    def _move_in(self, found: LinkFacts | None, mtu: int,
                 changes: list[str]) -> tuple[int, LinkFacts | None]:
        """Move our device from the birth namespace in: (writes, the device here or None).
        Its MTU is set before the move: wireguard-go, whose netlink listener stays in the
        birth namespace, no longer hears changes to the moved device."""
        if kind_of(found) not in ("kernel", "userspace") or self.netns is None:
            return 0, None
        assert found is not None and self.birth is not None
        if found.mtu != mtu:
            self.birth.set(found.index, mtu=mtu)
        self.birth.move(found.index, self.netns)
        changes.append(f"wireguard {self.ifname}: moved in from the node's namespace")
        here = self.links.get(self.ifname)
        if here is None:
            raise DataplaneError(f"wireguard {self.ifname}: moved in but not found")
        return 1, here

    def _ensure_device(self, have: LinkFacts | None, changes: list[str], mtu: int) -> int:
        """Make the device exist with the right backend. Returns writes."""
        writes = 0
        kind = kind_of(have)
        wanted = self.requested
        if wanted == "auto":
            wanted = kind or "kernel"
        if kind is not None and kind != wanted:
            self.links.delete(have.index)  # type: ignore[union-attr]
            self.daemon.stop()
            changes.append(f"wireguard {self.ifname}: replaced {kind} device by {wanted}")
            writes += 1
            kind = None
        if wanted == "kernel" and kind is None:
            try:
                (self.birth or self.links).add_wireguard(self.ifname)
                changes.append(f"wireguard {self.ifname}: created kernel device")
                writes += 1 + self._born(mtu, changes)
            except LinkUnsupported:
                if self.requested == "kernel":
                    raise DataplaneError(
                        f"wireguard backend 'kernel' requested but this kernel has no wireguard "
                        f"driver (creating {self.ifname} failed); use 'userspace' or 'auto'"
                    ) from None
                wanted = "userspace"
        self.backend = wanted
        if wanted == "userspace" and self.daemon.ensure_running():
            changes.append(f"wireguard {self.ifname}: started wireguard-go "
                           f"(pid {self.daemon.pid()})")
            writes += 1 + self._born(mtu, changes)
        return writes

    def _born(self, mtu: int, changes: list[str]) -> int:
        """A device just made in the birth namespace, moved in (0 without a birth namespace)."""
        if self.birth is None:
            return 0
        return self._move_in(self.birth.get(self.ifname), mtu, changes)[0]

    def step(self, state: NodeState, p: Pass) -> None:
        private_key = self.private_key(load=p.write) if state.wireguard is not None else ""
        live = self.read(p.links, fresh=p.fresh)
        p.wireguard = live.device
        changes = self.diff(state.wireguard, private_key, live)
        p.skipped = changes.skipped
        if p.take(changes, changes.lines):
            writes, extra = self.apply(changes, private_key, live.link)
            p.writes += writes
            p.lines.extend(extra)
            if extra or changes.remove is not None:
                p.links = self.links.all()  # the device came or went (wireguard-go's own TUN)

    def remove(self, scope: Scope | None = None) -> list[str]:
        """Cleanup's part: our wireguard-go, then our device (a link of our name and of a
        WireGuard kind); the key file stays (the node's identity). Returns what was removed."""
        self._cache = None
        # The daemon first: stopped, wireguard-go removes its TUN device itself.
        changes = []
        if self.daemon.stop():
            changes.append(f"stop wireguard-go for {self.ifname}")
        have = self.links.get(self.ifname)
        if kind_of(have) in ("kernel", "userspace"):
            self.links.delete(have.index)  # type: ignore[union-attr]
            changes.append(f"delete link {self.ifname}")
        return changes


def after_write(live: LiveDevice, update: DeviceWrite) -> LiveDevice:
    """The device as `update` leaves it (what a `get` right after the write would show, for
    every field the diff compares)."""
    peers = dict(live.peers)
    for write in update.peers:
        if write.remove:
            peers.pop(write.public_key, None)
            continue
        have = peers.get(write.public_key) or LivePeer(write.public_key, None, frozenset(), 0, None)
        allowed = (frozenset(write.allowed_ips) if write.replace_allowed_ips
                   else (have.allowed_ips | frozenset(write.allowed_ips)))
        if write.removed_allowed_ips:
            allowed = allowed - frozenset(write.removed_allowed_ips)
        psk = have.preshared_key
        if write.preshared_key is not None:
            psk = write.preshared_key or None
        peers[write.public_key] = replace(
            have, allowed_ips=allowed,
            endpoint=write.endpoint if write.endpoint is not None else have.endpoint,
            keepalive=write.keepalive if write.keepalive is not None else have.keepalive,
            preshared_key=psk)
    # An allowed IP belongs to one peer: one given to a peer leaves every other peer.
    for write in update.peers:
        if write.remove or not write.allowed_ips:
            continue
        given = frozenset(write.allowed_ips)
        for key, peer in peers.items():
            if key != write.public_key and not peer.allowed_ips.isdisjoint(given):
                peers[key] = replace(peer, allowed_ips=peer.allowed_ips - given)
    return LiveDevice(
        private_key=update.private_key if update.private_key is not None else live.private_key,
        listen_port=update.listen_port if update.listen_port is not None else live.listen_port,
        peers=peers)
