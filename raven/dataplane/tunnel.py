"""A gateway's tunnel namespace (docs/tunnel-namespace.md): the named namespace, the veth pair that
joins it to the node's, and the data plane inside it.

What goes inside is a plan of its own (`NodeState.tunnel`), applied by a second `Dataplane` on
that namespace whose device appliers make raven0 and raven-wg0 in the node's namespace and move
them in (their UDP sockets stay on the node's underlay). The node's `Dataplane` owns this object
and calls it before its own appliers, so the veth and the tunnel's devices exist when the node's
routes via the veth are written.

Rules kept:
- the namespace, its veth pair and everything inside exist only while the applied plan has a
  tunnel part; a plan without one (the switch off, the node no longer the active gateway)
  removes them: the inner data plane's cleanup (wireguard-go stopped, devices deleted), then
  the namespace (the veth pair goes with its peer);
- a namespace left by an earlier run of the agent is adopted, never made again: the inner data
  plane is opened on it at start, so a restart moves nothing and renumbers nothing;
- made and deleted only here, by name (`DataplaneSettings.tunnel_netns`); the name in use is
  recorded in the state directory, so an agent started without it (the switch turned off), or
  `raven agent cleanup` without `--tunnel-netns`, still takes the namespace down;
- a name that no longer names the namespace held open (deleted or made again by someone
  else) makes the next apply tear down what is held and start again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from raven.dataplane import netns
from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.appliers.veth import VethApplier
from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import Links
from raven.dataplane.settings import DataplaneSettings, DataplaneStatus
from raven.desired import NodeState
from raven.settings import OverlaySettings

if TYPE_CHECKING:
    from raven.dataplane.dataplane import Dataplane

Factory = Callable[[DataplaneSettings, Links], "Dataplane"]


class TunnelNamespace:
    def __init__(self, settings: DataplaneSettings, node_links: Links, factory: Factory) -> None:
        assert settings.tunnel_netns is not None
        self.name: str = settings.tunnel_netns
        self._record = settings.state_dir / RECORD_FILE
        self._inode: int | None = None  # of the namespace the inner data plane holds
        self._settings = replace(settings, netns=self.name, tunnel_netns=None)
        self._node_links = node_links
        self._factory = factory
        self.inner: Dataplane | None = None
        self._drift: Callable[..., object] | None = None
        self.veth = VethApplier(node_links, settings.overlay.tunnel_veth,
                                lambda: self.inner.links if self.inner else None, self.name)
        if netns.exists(self.name):
            self._open()  # left by an earlier run: adopt it

    @classmethod
    def of(cls, settings: DataplaneSettings, node_links: Links, factory: Factory,
           closers: list[Callable[[], None]]) -> TunnelNamespace | None:
        """The node data plane's tunnel namespace: the one its settings name, or the one an
        earlier run recorded (the switch since turned off: its devices must come back out
        through a teardown, or the node's new raven0 would find the VNI taken); None when
        there is neither."""
        recorded = recorded_name(settings.state_dir)
        if recorded and settings.tunnel_netns and recorded != settings.tunnel_netns:
            renamed = cls(replace(settings, tunnel_netns=recorded), node_links, factory)
            renamed.teardown()  # the namespace of another name, from before
        name = settings.tunnel_netns or recorded
        if not name:
            return None
        made = cls(replace(settings, tunnel_netns=name), node_links, factory)
        closers.append(made.close)
        return made

    @staticmethod
    def step_of(tunnel: TunnelNamespace | None, state: NodeState, p: Pass) -> None:
        if tunnel is not None:
            tunnel.step(state, p)
        elif state.tunnel is not None:
            raise DataplaneError(
                f"plan for node {state.node!r} has a tunnel namespace part but the data plane "
                "has no tunnel namespace name (DataplaneSettings.tunnel_netns); plan without "
                "OverlaySettings.tunnel_namespace or give the data plane a name")

    def _open(self) -> Dataplane:
        if self.inner is None:
            self._record.parent.mkdir(parents=True, exist_ok=True)
            self._record.write_text(self.name + "\n")
            self._inode = netns.inode(self.name)
            self.inner = self._factory(self._settings, self._node_links)
            if self._drift is not None:
                self.inner.watch_drift(self._drift)
        return self.inner

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None

    def watch_drift(self, callback: Callable[..., object]) -> None:
        self._drift = callback
        if self.inner is not None:
            self.inner.watch_drift(callback)

    def _replaced(self) -> bool:
        """The name no longer names the namespace we hold open (deleted, or made again by
        someone else): what we hold must go, or raven0 keeps the VNI taken in the node's."""
        return self.inner is not None and netns.inode(self.name) != self._inode

    def step(self, state: NodeState, p: Pass) -> None:
        """The tunnel's part of one reconcile of the node's plan, before the node's appliers."""
        if self._replaced() and p.take(_Always(), (
                f"tunnel namespace {self.name}: deleted or replaced under us; made again",)):
            p.writes += len(self.teardown())
        if state.tunnel is None:
            present = self.inner is not None or netns.exists(self.name)
            if present and p.take(_Always(), (f"tunnel namespace {self.name}: delete",)):
                p.writes += len(self.teardown())
            return
        if not p.write and self.inner is None:
            p.lines.append(f"tunnel namespace {self.name}: create")
            return
        if p.write and netns.create(self.name):
            p.lines.append(f"tunnel namespace {self.name}: created")
            p.writes += 1
        inner = self._open()
        self.veth.step(state, p)
        if p.write:
            result = inner.apply(state.tunnel)
            p.writes += result.writes
            p.lines.extend(f"{self.name}: {line}" for line in result.changes)
            p.skipped += result.skipped

    def observe(self) -> DataplaneStatus | None:
        return self.inner.observe() if self.inner is not None else None

    def teardown(self) -> list[str]:
        """Everything of the tunnel namespace gone: what was removed."""
        lines: list[str] = []
        if self.inner is not None:
            lines += [f"{self.name}: {line}" for line in self.inner.cleanup()]
            self.close()
        if netns.delete(self.name):
            lines.append(f"delete network namespace {self.name}")
        if recorded_name(self._record.parent) == self.name:
            self._record.unlink(missing_ok=True)
        return lines + self.veth.remove(Scope((), {}))  # gone with its peer, unless stray


RECORD_FILE = "tunnel-netns"  # in the state directory: the name of the namespace in use


def watched_devices(overlay: OverlaySettings, settings: DataplaneSettings, *,
                    inner: bool) -> set[str]:
    """The devices a data plane's drift monitor watches: ours, and the end of the veth pair in
    its namespace (the node's end where a tunnel namespace is named, the far end inside it)."""
    veth = {overlay.tunnel_veth} if settings.tunnel_netns else (
        {overlay.tunnel_veth_peer} if inner else set())
    return {overlay.vxlan_device, overlay.wireguard_device, *veth}


def recorded_name(state_dir: Path) -> str | None:
    try:
        return (state_dir / RECORD_FILE).read_text().strip() or None
    except OSError:
        return None


class _Always:
    """Changes that are never empty (a teardown decided by `step`)."""

    def empty(self) -> bool:
        return False


__all__ = ["TunnelNamespace"]
