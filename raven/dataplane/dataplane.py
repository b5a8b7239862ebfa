"""The data plane of one node: the appliers, in order, inside one network namespace, under one lock.

Order of a reconcile (each applier reads, diffs, and writes only the difference; see
raven/dataplane/appliers/__init__.py for the contract): VXLAN device and its address, WireGuard
device and peers, sysctls, FDB and neighbour entries, routes, rules, nftables. Devices come
first because everything else hangs off them; one link dump serves the reconcile, taken again
only when the device appliers wrote.
Rules kept:
- objects are "ours" by name and place: the devices named in `settings.overlay` (and of the kind
  we create), every route in our tables, every rule pointing at our tables, every FDB/neighbour
  entry on our VXLAN device, the `inet <overlay.nft_table>` table, the wireguard-go whose pid we
  recorded; nothing else is read for deletion or written. A plan naming other devices or another
  nft table is refused, so `apply` and `cleanup` can never disagree;
- `apply` twice performs zero writes the second time;
- `observe` never writes: it reads every applier in full (refreshing their caches with what it
  read) and runs the same diffs, so its `drift` is exactly what the next apply would change;
- caches belong to the appliers; this class only routes netlink events to the appliers whose
  `invalidated_by` names them;
- `cleanup` is every applier's `remove` (its removal of what it owns), in the reverse of the
  apply order: nftables, rules, routes, neighbours, sysctls, WireGuard, VXLAN;
- what else touches one kind of object lives in its applier (the WireGuard key pair, peer
  take-overs, renewals and nudges in `wireguard/device.py`); the methods here only take the
  lock and forward;
- one lock serialises apply/repair/observe/cleanup, so the drift monitor's thread can repair;
- a plan with a tunnel part (`NodeState.tunnel`) is applied first by the tunnel namespace's own
  `Dataplane` (raven.dataplane.tunnel), made with `birth` = this one's links: its device
  appliers make raven0 and raven-wg0 here and move them in; ours then skip the two devices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from raven import constants
from raven.dataplane import probe, rtnl
from raven.dataplane.appliers import Applier, Pass, Scope
from raven.dataplane.appliers.neighbours import NeighbourApplier
from raven.dataplane.appliers.nftables import FirewallApplier
from raven.dataplane.appliers.routes import InsideOurs, OurTables, RouteApplier
from raven.dataplane.appliers.rules import RuleApplier
from raven.dataplane.appliers.sysctls import SysctlApplier
from raven.dataplane.appliers.vxlan import VxlanApplier
from raven.dataplane.drift import DriftWatcher, EventStream
from raven.dataplane.errors import DataplaneError
from raven.dataplane.families import ipv4_half
from raven.dataplane.firewall import collapse
from raven.dataplane.links import Links
from raven.dataplane.netlink import NETLINK_ROUTE, NetlinkSocket
from raven.dataplane.settings import ApplyResult, DataplaneSettings, DataplaneStatus, PeerStatus
from raven.dataplane.tunnel import TunnelNamespace, watched_devices
from raven.dataplane.wireguard.device import WireGuardApplier
from raven.dataplane.wireguard.model import LivePeer
from raven.desired import NodeState, Role

_NOTHING = NodeState(node="", role=Role.ALONE, pool=None, vxlan=None)


class Dataplane:
    def __init__(self, settings: DataplaneSettings, birth: Links | None = None) -> None:
        self.settings = settings
        self.overlay = settings.overlay
        self._lock = threading.RLock()
        self._closers: list[Callable[[], None]] = []
        self._closed = False
        self._last: NodeState | None = None
        # What the last apply reached: `_last`, or its IPv4 half when IPv6 could not be
        # applied (observe() compares the kernel with this); and the reason IPv6 was left out.
        self._reached: NodeState | None = None
        self._family_skip: tuple[str, ...] = ()
        self._watcher: DriftWatcher | None = None
        self._tables = OurTables((*self.overlay.tables, constants.MAIN_TABLE))  # rtnl
        self._inside_ours = InsideOurs(lambda: self._last)  # the drift monitor's filter
        try:
            self.links = Links(settings.netns)
            self._closers.append(self.links.close)
            self.nl = NetlinkSocket(NETLINK_ROUTE, settings.netns)
            self._closers.append(self.nl.close)
            self.vxlan = VxlanApplier(self.links, self.overlay.vxlan_device, settings.netns,
                                      birth=birth)
            self.wireguard = WireGuardApplier(
                links=self.links, netns_name=settings.netns, ifname=self.overlay.wireguard_device,
                backend=settings.wireguard_backend, state_dir=settings.state_dir,
                run_dir=settings.wireguard_run_dir, wireguard_go=settings.wireguard_go,
                fwmark=self.overlay.fwmark, birth=birth,
            )
            self._closers.append(self.wireguard.close)
            self.sysctls = SysctlApplier(settings.netns)
            self.neighbours = NeighbourApplier(self.nl, self.overlay.vxlan_device)
            self.routes = RouteApplier(self.nl)
            self.rules = RuleApplier(self.nl)
            self.firewall = FirewallApplier(settings.netns, self.overlay.nft_table)
            self._closers.append(self.firewall.close)
            self._events = EventStream(
                netns_name=settings.netns, own_ports=self._own_ports, devices=self._devices,
                tables=lambda: set(self._tables(self._last)), inside_ours=self._inside_ours)
            self._closers.append(self._events.close)
            self._tunnel = None if birth else TunnelNamespace.of(settings, self.links, Dataplane,
                                                                 self._closers)
        except BaseException:
            self._close_all()
            raise
        # The apply order; cleanup runs it backwards.
        self._appliers: tuple[Applier, ...] = (self.vxlan, self.wireguard, self.sysctls,
                                               self.neighbours, self.routes, self.rules,
                                               self.firewall)

    def _own_ports(self) -> set[int]:
        return {self.nl.port_id}

    def _devices(self) -> set[str]:
        return watched_devices(self.overlay, self.settings, inner=self.vxlan.birth is not None)

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Dataplane:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release sockets and the monitor; the kernel state and wireguard-go stay (hitless)."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._close_all()

    def _close_all(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()

    def public_key(self) -> str:
        return self.wireguard.public_key()

    def _wg(self) -> WireGuardApplier:
        """The WireGuard applier in charge: the tunnel namespace's while it is in use."""
        inner = self._tunnel.inner if self._tunnel is not None else None
        return inner.wireguard if inner is not None else self.wireguard

    # --- apply -------------------------------------------------------------------------------

    def apply(self, state: NodeState) -> ApplyResult:
        """Apply `state`; when that fails and the plan has IPv6 parts, apply its IPv4 half and
        name the failure in `skipped`, so an IPv6 problem never takes IPv4 down (the next apply
        tries the whole plan again)."""
        with self._lock:
            done = Pass(write=True)
            reached, self._family_skip = state, ()
            try:
                self._reconcile(state, write=True, fresh=False, done=done)
            except DataplaneError as exc:
                half = ipv4_half(state)
                if half == state:
                    raise
                for applier in self._appliers:
                    applier.forget()  # a write failed part-way: read the kernel again
                # The writes made happened; the lines of the failed pass are replaced by what
                # the IPv4 pass finds to do, so a steady state reports no change.
                done = Pass(write=True, writes=done.writes)
                self._reconcile(half, write=True, fresh=True, done=done)
                reached = half
                self._family_skip = (
                    f"IPv6 of node {state.node!r} not applied, IPv4 applied: {exc}. The IPv6 "
                    "VTEP, neighbours, routes, rule and firewall subnets are left out until "
                    "the next apply succeeds",)
            self._last, self._reached = state, reached
            return ApplyResult(done.writes, tuple(done.lines),
                               done.skipped + self._family_skip)

    def repair(self) -> ApplyResult:
        """Apply the last applied state again (what the drift monitor's callback usually does).
        WireGuard is read in full: nothing notifies its drift."""
        with self._lock:
            if self._last is None:
                return ApplyResult(0, ())
            self._wg().forget()
            return self.apply(self._last)

    def _check_names(self, state: NodeState) -> None:
        named = (("VXLAN device", state.vxlan.name if state.vxlan else None,
                  "vxlan_device", self.overlay.vxlan_device),
                 ("WireGuard device", state.wireguard.name if state.wireguard else None,
                  "wireguard_device", self.overlay.wireguard_device),
                 ("nft table", state.firewall.table if state.firewall else None,
                  "nft_table", self.overlay.nft_table))
        for what, planned, key, ours in named:
            if planned is not None and planned != ours:
                raise DataplaneError(
                    f"plan for node {state.node!r} names {what} {planned!r} but "
                    f"DataplaneSettings.overlay.{key} is {ours!r}; plan with the same "
                    "OverlaySettings the data plane uses (cleanup removes only those names)")

    def _reconcile(self, state: NodeState, *, write: bool, fresh: bool,
                   done: Pass | None = None) -> Pass:
        """Every applier's step, in order. Pending netlink events are handed out before each
        applier that keeps a cache they may make stale, so it sees the writes before it."""
        self._check_names(state)
        done = done if done is not None else Pass(write)
        TunnelNamespace.step_of(self._tunnel, state, done)
        done.fresh, done.links, done.tables = fresh, self.links.all(), self._tables(state)
        moved = (self.vxlan, self.wireguard) if state.tunnel is not None else ()  # in there
        for applier in self._appliers:
            if applier in moved:
                continue
            if applier.invalidated_by:
                self._route_events()
            applier.step(state, done)
        return done

    def _route_events(self) -> None:
        """Hand every pending netlink event to the appliers whose caches it may make stale."""
        kinds = {kind for kind, _reason in self._events.drain()}
        if kinds:
            for applier in self._appliers:
                if kinds & applier.invalidated_by:
                    applier.forget()

    # --- observe -------------------------------------------------------------------------------

    def observe(self) -> DataplaneStatus:
        """Counts, peers and drift. Reads only: every applier reads the kernel in full."""
        with self._lock:
            seen = self._reconcile(self._reached or _NOTHING, write=False, fresh=True)
            now = time.time()
            wg = seen.wireguard
            peers = tuple(
                PeerStatus(p.public_key, p.endpoint, len(p.allowed_ips),
                           (now - p.last_handshake) if p.last_handshake else None,
                           p.rx_bytes, p.tx_bytes)
                for p in sorted((wg.peers if wg else {}).values(), key=lambda p: p.public_key)
            )
            status = DataplaneStatus(
                vxlan=seen.vxlan, wireguard=wg is not None,
                wireguard_backend=self.wireguard.backend if wg else None,
                routes=seen.routes, rules=seen.rules, fdb=seen.fdb, neighbours=seen.neighbours,
                firewall_elements=seen.firewall_elements, peers=peers,
                drift=tuple(seen.lines) if self._last is not None else (),
                skipped=seen.skipped + self._family_skip,
            )
            inner = self._tunnel.observe() if self._tunnel is not None else None
            return status if inner is None else with_tunnel(status, inner, self._tunnel.name)

    def foreign_main_routes(self) -> list[str]:
        """Destinations in main not ours (reads only), for raven.route_placement."""
        with self._lock:
            return rtnl.foreign_main_prefixes(self.nl)

    # --- forwarded to the WireGuard applier (the agent's path manager calls these) ---------

    def wireguard_peers(self) -> dict[str, LivePeer]:
        """The WireGuard peers as the device reports them now ({} without a device); reads only
        the WireGuard device, so the path manager can poll it several times a second."""
        with self._lock:
            return self._wg().peers()

    def take_allowed_ips(self, public_key: str, cidrs: tuple[str, ...],
                         at: float | None = None) -> None:
        """Give `cidrs` to peer `public_key` in one write, at monotonic instant `at`: the
        instant a direct path takes over from the relay. The wait holds our lock, so no read
        of ours (observe, a poll) can delay the write past `at`."""
        with self._lock:
            self._wg().take_allowed_ips(public_key, cidrs, at)

    def renew_peers(self, keys: list[str]) -> list[str]:
        """Remake the peers of `keys` whose first handshake was lost (a new peer with a
        keepalive initiates at once; WireGuard would wait REKEY_TIMEOUT). Returns those renewed."""
        with self._lock:
            return self._wg().renew_peers(keys)

    def nudge(self, source: str, destinations: list[str]) -> int:
        """Liveness datagrams through the WireGuard device (raven.dataplane.wireguard.nudge)."""
        with self._lock:
            return self._wg().nudge(source, destinations)

    def rtt_ms(self, address: str) -> float | None:
        """ICMP round trip to an IPv4 address from this node (raven.dataplane.probe)."""
        return probe.rtt_ms(self.settings.netns, address)

    def echo(self, address: str, tries: int = 3, source: str | None = None
             ) -> tuple[float | None, int]:
        """ICMP echoes to an IPv4 address, from `source` when given: (smallest RTT in ms or
        None, replies of `tries`)."""
        return probe.echo(self.settings.netns, address, tries, source=source)

    # --- drift -----------------------------------------------------------------------------------

    def watch_drift(self, callback: Callable[..., object]) -> None:
        """Call `callback(reasons)` (or `callback()`) within ~1 s of a change to our objects.

        A netlink monitor thread watches links, addresses, neighbours, routes and rules; our own
        writes are filtered out by netlink port id. Typical use: `dp.watch_drift(lambda r:
        dp.repair())`. Replaces any previous watcher; `close()` stops it.
        """
        with self._lock:
            if self._watcher is not None:
                self._watcher.stop()
            self._watcher = DriftWatcher(
                netns_name=self.settings.netns, own_ports=self._own_ports,
                devices=self._devices, tables=lambda: set(self._tables(self._last)),
                inside_ours=self._inside_ours, callback=callback,
            )
            self._watcher.start()
            if self._tunnel is not None:
                self._tunnel.watch_drift(callback)

    # --- cleanup ---------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove every object of ours (see module rules) and nothing else: each applier's
        `remove`, in the reverse of the apply order. Keeps the key file."""
        with self._lock:
            changes: list[str] = []
            changes += self._tunnel.teardown() if self._tunnel is not None else []
            scope = Scope(self._tables(self._last), self.links.all())
            for applier in reversed(self._appliers):
                changes += applier.remove(scope)
            self._last = self._reached = None
            self._family_skip = ()
            for applier in self._appliers:
                applier.forget()
            return changes


def with_tunnel(node: DataplaneStatus, inner: DataplaneStatus, name: str) -> DataplaneStatus:
    """The node's status with its tunnel namespace's: the devices and peers are the tunnel's,
    the counts of both added, the tunnel's drift lines named by the namespace."""
    return replace(
        node, vxlan=inner.vxlan, wireguard=inner.wireguard,
        wireguard_backend=inner.wireguard_backend, routes=node.routes + inner.routes,
        rules=node.rules + inner.rules, fdb=inner.fdb, neighbours=inner.neighbours,
        firewall_elements=node.firewall_elements + inner.firewall_elements, peers=inner.peers,
        drift=(*node.drift, *(f"{name}: {line}" for line in inner.drift)),
        skipped=(*node.skipped, *inner.skipped))


__all__ = ["Dataplane", "collapse", "with_tunnel"]
