"""The WireGuard device applier: one interface, kernel or userspace backend chosen once.

Backend choice (`auto`): an existing device decides (kind "wireguard" = kernel, a TUN device =
userspace); otherwise we try to create a kernel device and fall back to wireguard-go when the
kernel has no wireguard driver. `kernel` / `userspace` force one; a device of the other kind is
then replaced. Rules kept: peers are diffed (model.diff_device) and nothing is written when
equal; the device MTU and up state are fixed in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts, Links, LinkUnsupported
from raven.dataplane.wireguard.genl import KernelWireGuard
from raven.dataplane.wireguard.model import DeviceWrite, LiveDevice, diff_device
from raven.dataplane.wireguard.userspace import WireGuardGo
from raven.desired import WireGuardDevice

BACKENDS = ("auto", "kernel", "userspace")


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
            have = self.links.get(self.ifname)
            if have is None:
                raise DataplaneError(f"wireguard {self.ifname}: device did not appear")
        if have.mtu != desired.mtu or not have.up:
            changes.append(f"wireguard {self.ifname}: mtu {have.mtu} -> {desired.mtu}, up")
            if write:
                self.links.set(have.index, mtu=desired.mtu, up=True)
                writes += 1
        try:
            live = self._configurator().get()
        except DataplaneError:
            if write:
                raise
            return writes, [*changes, f"wireguard {self.ifname}: configuration unreadable"]
        update, peer_changes = diff_device(private_key, desired.listen_port, desired.peers, live)
        changes.extend(peer_changes)
        if write and not update.empty():
            self._configurator().set(update)
            writes += 1
        return writes, changes

    def live(self) -> LiveDevice | None:
        have = self.links.get(self.ifname)
        if self.kind_of(have) not in ("kernel", "userspace"):
            return None
        self.backend = self.backend or self.kind_of(have)
        try:
            return self._configurator().get()
        except DataplaneError:
            return None

    def cleanup(self) -> list[str]:
        # The daemon first: stopped, wireguard-go removes its TUN device itself.
        changes = []
        if self.daemon.stop():
            changes.append(f"stop wireguard-go for {self.ifname}")
        have = self.links.get(self.ifname)
        if self.kind_of(have) in ("kernel", "userspace"):
            self.links.delete(have.index)  # type: ignore[union-attr]
            changes.append(f"delete link {self.ifname}")
        return changes
