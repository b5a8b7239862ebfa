"""The WireGuard device applier: one interface, kernel or userspace backend chosen once.

Backend choice (`auto`): an existing device decides (kind "wireguard" = kernel, a TUN device =
userspace); otherwise we try to create a kernel device and fall back to wireguard-go when the
kernel has no wireguard driver. `kernel` / `userspace` force one; a device of the other kind is
then replaced. Rules kept: peers are diffed (model.diff_device) and nothing is written when
equal; the device MTU and up state are fixed in place.

Written-state cache (why one change among 10,000 allowed IPs costs a few ms with wireguard-go,
whose `get` prints every allowed IP): after a successful write we remember the device as we
left it, keyed by the device's ifindex and the daemon's pid, and diff against that instead of
reading it back. Nothing notifies us of a foreign `wg set`, so the cache is dropped (and the
next apply reads the device in full) on any failed write, a new ifindex or pid, `resync()`
(called by `Dataplane.repair`/`observe`) and when it is older than RESYNC_S.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts, Links, LinkUnsupported
from raven.dataplane.wireguard.genl import KernelWireGuard
from raven.dataplane.wireguard.model import DeviceWrite, LiveDevice, LivePeer, diff_device
from raven.dataplane.wireguard.userspace import WireGuardGo
from raven.desired import WireGuardDevice

BACKENDS = ("auto", "kernel", "userspace")
RESYNC_S = 30.0  # the longest we trust what we wrote without reading the device back


class Configurator(Protocol):
    def get(self) -> LiveDevice: ...
    def set(self, write: DeviceWrite) -> None: ...


class WireGuardApplier:
    def __init__(self, *, links: Links, netns_name: str | None, ifname: str, backend: str,
                 state_dir: Path, run_dir: Path | None, wireguard_go: str) -> None:
        if backend not in BACKENDS:
            raise DataplaneError(
                f"wireguard backend {backend!r} is not valid; use one of {', '.join(BACKENDS)}")
        self.links = links
        self.netns = netns_name
        self.ifname = ifname
        self.requested = backend
        self.daemon = WireGuardGo(netns_name=netns_name, ifname=ifname, state_dir=state_dir,
                                  run_dir=run_dir, binary=wireguard_go)
        self._kernel: KernelWireGuard | None = None
        self.backend: str | None = None  # resolved: "kernel" | "userspace"
        # (ifindex, daemon pid, monotonic time of the last full read, device as we left it)
        self._written: tuple[int, int | None, float, LiveDevice] | None = None

    def resync(self) -> None:
        """Forget what we wrote: the next apply reads the device in full (drift repair)."""
        self._written = None

    def _owner(self) -> int | None:
        return self.daemon.pid() if self.backend == "userspace" else None

    def _cached(self, have: LinkFacts) -> LiveDevice | None:
        written = self._written
        if written is None:
            return None
        index, pid, read_at, device = written
        if (index != have.index or time.monotonic() - read_at > RESYNC_S
                or pid != self._owner()):
            self._written = None
            return None
        return device

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None

    def _configurator(self) -> Configurator:
        if self.backend == "kernel":
            if self._kernel is None:
                self._kernel = KernelWireGuard(self.netns, self.ifname)
            return self._kernel
        return self.daemon.uapi

    @staticmethod
    def kind_of(link: LinkFacts | None) -> str | None:
        if link is None:
            return None
        if link.kind == "wireguard":
            return "kernel"
        if link.kind == "tun":
            return "userspace"
        return "foreign"

    def _ensure_device(self, have: LinkFacts | None, changes: list[str]) -> int:
        """Make the device exist with the right backend. Returns writes."""
        writes = 0
        kind = self.kind_of(have)
        if kind == "foreign":
            raise DataplaneError(
                f"link {self.ifname} exists and is a {have.kind or 'device'} we did not create; "  # type: ignore[union-attr]
                "delete or rename it, or configure another WireGuard device name")
        wanted = self.requested
        if wanted == "auto":
            wanted = kind or "kernel"
        if kind is not None and kind != wanted:
            self.links.delete(have.index)  # type: ignore[union-attr]
            self.daemon.stop()
            changes.append(f"wireguard {self.ifname}: replace {kind} device by {wanted}")
            writes += 1
            kind = None
        if wanted == "kernel" and kind is None:
            try:
                self.links.add_wireguard(self.ifname)
                changes.append(f"wireguard {self.ifname}: create kernel device")
                writes += 1
            except LinkUnsupported:
                if self.requested == "kernel":
                    raise DataplaneError(
                        f"wireguard backend 'kernel' requested but this kernel has no wireguard "
                        f"driver (creating {self.ifname} failed); use 'userspace' or 'auto'"
                    ) from None
                wanted = "userspace"
        self.backend = wanted
        if wanted == "userspace" and self.daemon.ensure_running():
            changes.append(f"wireguard {self.ifname}: start wireguard-go (pid {self.daemon.pid()})")
            writes += 1
        return writes

    def apply(self, desired: WireGuardDevice | None, private_key: str, *,
              write: bool = True) -> tuple[int, list[str]]:
        try:
            return self._apply(desired, private_key, write=write)
        finally:
            if write:  # wireguard-go creates and removes its TUN device itself
                self.links.invalidate()

    def _apply(self, desired: WireGuardDevice | None, private_key: str, *,
               write: bool = True) -> tuple[int, list[str]]:
        changes: list[str] = []
        have = self.links.get(self.ifname)
        if desired is None:
            if self.kind_of(have) in ("kernel", "userspace"):
                changes.append(f"wireguard {self.ifname}: delete device")
                if write:
                    self.daemon.stop()
                    self.links.delete(have.index)  # type: ignore[union-attr]
            elif write and self.daemon.pid() is not None:
                self.daemon.stop()
                changes.append(f"wireguard {self.ifname}: stop wireguard-go")
            return (len(changes) if write else 0), changes
        writes = 0
        if not write:
            if have is None:
                return 0, [f"wireguard {self.ifname}: device missing"]
            self.backend = self.backend or self.kind_of(have)
        else:
            writes += self._ensure_device(have, changes)
            if writes:
                self.links.invalidate()
            have = self.links.get(self.ifname)
            if have is None:
                raise DataplaneError(f"wireguard {self.ifname}: device did not appear")
        if have.mtu != desired.mtu or not have.up:
            changes.append(f"wireguard {self.ifname}: mtu {have.mtu} -> {desired.mtu}, up")
            if write:
                self.links.set(have.index, mtu=desired.mtu, up=True)
                writes += 1
        live = self._cached(have) if write else None
        if live is None:
            try:
                live = self._configurator().get()
            except DataplaneError:
                if write:
                    raise
                return writes, [*changes, f"wireguard {self.ifname}: configuration unreadable"]
            if write:
                self._written = (have.index, self._owner(), time.monotonic(), live)
        update, peer_changes = diff_device(private_key, desired.listen_port, desired.peers, live,
                                           move_removed=self.backend == "userspace")
        changes.extend(peer_changes)
        if write and not update.empty():
            written = self._written
            self._written = None  # a failed write leaves the device unknown
            self._configurator().set(update)
            writes += 1
            if written is not None:
                self._written = (*written[:3], after_write(live, update))
        return writes, changes

    def live(self) -> LiveDevice | None:  # always a full read (observe, status)
        have = self.links.get(self.ifname)
        if self.kind_of(have) not in ("kernel", "userspace"):
            return None
        self.backend = self.backend or self.kind_of(have)
        try:
            return self._configurator().get()
        except DataplaneError:
            return None

    def cleanup(self) -> list[str]:
        self._written = None
        # The daemon first: stopped, wireguard-go removes its TUN device itself.
        changes = []
        if self.daemon.stop():
            changes.append(f"stop wireguard-go for {self.ifname}")
        have = self.links.get(self.ifname)
        if self.kind_of(have) in ("kernel", "userspace"):
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
