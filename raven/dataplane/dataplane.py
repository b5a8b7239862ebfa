"""The data plane of one node: diff a `NodeState` against the live kernel, write the difference.

Order of an apply (each step only writes what differs): VXLAN device, WireGuard device and
peers, the VTEP address, sysctls, FDB and neighbour entries, routes, rules, nftables.
Rules kept:
- objects are "ours" by name and place: the devices named in the settings (and of the kind we
  create), every route in our tables, every rule pointing at our tables, every FDB/neighbour
  entry on our VXLAN device, the `inet <nft_table>` table, the wireguard-go whose pid we recorded;
  nothing else is read for deletion or written;
- `apply` twice performs zero writes the second time; `observe` runs the same diff without
  writing, so its `drift` is exactly what the next apply would change;
- one lock serialises apply/repair/observe/cleanup, so the drift monitor's thread can repair.

Caches (why a no-op reconcile of 10,000 routes costs milliseconds, not a 10,000-route dump):
routes and rules of our tables are dumped once, then kept equal to what we wrote; a netlink
event stream invalidates them on any foreign change to our tables or devices (our own writes
are recognised by port id), and on any event overrun. The nft table is listed only when the
ruleset generation id moved since our last read or write. FDB/neighbours are read live on every
reconcile. WireGuard has no change notification: apply diffs against what it last wrote (see
wireguard/device.py), and `repair`, `observe` and a 30 s age limit read it in full again.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType

from raven.dataplane import rtnl, sysctl
from raven.dataplane.drift import NEIGH, ROUTE, RULE, DriftWatcher, EventStream
from raven.dataplane.errors import DataplaneError
from raven.dataplane.firewall import (
    Collapser,
    LiveFirewall,
    Nft,
    RulesetGeneration,
    collapse,
    plan_firewall,
    skeleton,
)
from raven.dataplane.links import LinkFacts, Links
from raven.dataplane.netlink import NETLINK_ROUTE, NetlinkSocket, Request
from raven.dataplane.nftnl import SetElements
from raven.dataplane.settings import ApplyResult, DataplaneSettings, DataplaneStatus, PeerStatus
from raven.dataplane.wireguard import keys
from raven.dataplane.wireguard.device import WireGuardApplier
from raven.desired import NodeState, Route, Rule

RouteKey = tuple[str, int, str, str | None, int | None]
RouteShape = tuple[int, str, str | None, int | None]  # (table, dev, gateway, mtu)
RouteIndex = dict[RouteShape, set[str]]  # shape -> destinations


_route_key: Callable[[Route], RouteKey] = operator.attrgetter(  # C speed at 10,000 routes
    "dst", "table", "dev", "gateway", "mtu")
_table_of = operator.attrgetter("table")
_dst_of = operator.attrgetter("dst")
_shape_columns = tuple(map(operator.attrgetter, ("table", "dev", "gateway", "mtu")))


def route_index(routes: tuple[Route, ...] | list[Route], *, strict: bool = True) -> RouteIndex:
    """Routes grouped by shape. A plan's routes nearly always share one shape (same table,
    device, next hop, MTU): then the index is one set of destination strings, built and
    compared in C (string hashes are cached), which is what makes one change among 10,000
    routes cost well under a millisecond here. `strict`: raise on a route listed twice (a
    desired state); a kernel dump may show one key twice (e.g. differing TOS) and is merged."""
    columns = [set(map(column, routes)) for column in _shape_columns]
    if all(len(c) == 1 for c in columns):
        dsts = set(map(_dst_of, routes))
        if strict and len(dsts) != len(routes):
            raise DataplaneError("desired state lists the same route twice")
        shape: RouteShape = tuple(c.pop() for c in columns)  # type: ignore[assignment]
        return {shape: dsts}
    index: RouteIndex = {}
    count = 0
    for key in map(_route_key, routes):
        index.setdefault(key[1:], set()).add(key[0])
        count += 1
    if strict and sum(map(len, index.values())) != count:
        raise DataplaneError("desired state lists the same route twice")
    return index


class Dataplane:
    def __init__(self, settings: DataplaneSettings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self.links = Links(settings.netns)
        try:
            self.nl = NetlinkSocket(NETLINK_ROUTE, settings.netns)
        except BaseException:
            self.links.close()
            raise
        self.wireguard = WireGuardApplier(
            links=self.links, netns_name=settings.netns, ifname=settings.wireguard_device,
            backend=settings.wireguard_backend, state_dir=settings.state_dir,
            run_dir=settings.wireguard_run_dir, wireguard_go=settings.wireguard_go,
        )
        self.nft = Nft(settings.netns, settings.nft_table)
        self._last: NodeState | None = None
        self._watcher: DriftWatcher | None = None
        self._events = EventStream(
            netns_name=settings.netns, own_ports=lambda: {self.nl.port_id},
            devices=self._devices, tables=lambda: set(self._our_tables(self._last)))
        self._generation = RulesetGeneration(settings.netns)
        self._set_elements = SetElements(settings.netns)
        self._route_cache: RouteIndex | None = None
        self._rule_cache: Counter[Rule] | None = None
        self._fw_cache: tuple[int, str, LiveFirewall] | None = None  # (generation, fp, live)
        self._cached_tables: tuple[int, ...] = ()
        self._tables_memo: tuple[NodeState, tuple[int, ...]] | None = None
        self._want_route_keys: RouteIndex = {}
        self._closed = False
        self._collapse = Collapser()

    def _devices(self) -> set[str]:
        return {self.settings.vxlan_device, self.settings.wireguard_device}

    def _invalidate_stale_caches(self) -> None:
        for kind, _reason in self._events.drain():
            if kind == ROUTE:
                self._route_cache = None
            elif kind == RULE:
                self._rule_cache = None
            elif kind != NEIGH:  # links, addresses, overruns: routes may vanish silently
                self._route_cache = self._rule_cache = None

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
        self.wireguard.close()
        self._events.close()
        self._generation.close()
        self._set_elements.close()
        self.nl.close()
        self.links.close()

    # --- keys --------------------------------------------------------------------------------

    def public_key(self) -> str:
        private = keys.load_or_create_private_key(self.settings.state_dir)
        return keys.b64(keys.public_key_of(private))

    # --- apply ---------------------------------------------------------------------------------

    def apply(self, state: NodeState) -> ApplyResult:
        with self._lock:
            writes, changes = self._reconcile(state, write=True)
            self._last = state
            return ApplyResult(writes, tuple(changes))

    def repair(self) -> ApplyResult:
        """Apply the last applied state again (what the drift monitor's callback usually does)."""
        with self._lock:
            if self._last is None:
                return ApplyResult(0, ())
            self.wireguard.resync()  # repair reads WireGuard in full: nothing notifies its drift
            return self.apply(self._last)

    def _our_tables(self, state: NodeState | None) -> tuple[int, ...]:
        if state is None:
            return tuple(sorted(self.settings.tables))
        memo = self._tables_memo
        if memo is not None and memo[0] is state:
            return memo[1]
        tables = set(self.settings.tables)
        tables.update(map(_table_of, state.routes))
        tables.update(map(_table_of, state.rules))
        result = tuple(sorted(tables))
        self._tables_memo = (state, result)
        return result

    def _reconcile(self, state: NodeState, write: bool) -> tuple[int, list[str]]:
        with self.links.reconcile_scope():  # one link dump serves the whole reconcile
            return self._reconcile_in_scope(state, write)

    def _reconcile_in_scope(self, state: NodeState, write: bool) -> tuple[int, list[str]]:
        writes = 0
        changes: list[str] = []

        def run(requests: list[Request]) -> None:
            nonlocal writes
            changes.extend(r.what for r in requests)
            if write and requests:
                writes += self.nl.write(requests)

        # Devices first: everything else hangs off them.
        vx_writes, vx_changes = self._vxlan(state, write)
        writes += vx_writes
        changes += vx_changes
        private_key = ""
        if state.wireguard is not None:
            private_key = keys.b64(keys.load_or_create_private_key(self.settings.state_dir))
        wg_writes, wg_changes = self.wireguard.apply(state.wireguard, private_key, write=write)
        writes += wg_writes
        changes += wg_changes
        links = self.links.all()
        names = {link.index: name for name, link in links.items()}
        vx = links.get(state.vxlan.name) if state.vxlan else None

        if state.vxlan is not None and vx is not None:
            have = self.links.addresses(vx.index)
            want = {(state.vxlan.vtep_ip, state.vxlan.vtep_prefixlen)}
            for address, prefixlen in sorted(have - want):
                changes.append(f"address del {address}/{prefixlen} dev {vx.name}")
                if write:
                    self.links.del_address(vx.index, address, prefixlen)
                    writes += 1
            for address, prefixlen in sorted(want - have):
                changes.append(f"address add {address}/{prefixlen} dev {vx.name}")
                if write:
                    self.links.add_address(vx.index, address, prefixlen)
                    writes += 1

        for key, value in (*state.sysctls, *self._implicit_sysctls(state)):
            current = sysctl.read(self.settings.netns, key)
            if current is None and not write:
                continue  # per-device key of a device that does not exist yet
            if current != value:
                changes.append(f"sysctl {key} {current} -> {value}")
                if write:
                    sysctl.write(self.settings.netns, key, value)
                    writes += 1

        if vx is not None and state.vxlan is not None:
            live_fdb = set(rtnl.dump_fdb(self.nl, vx.index))
            want_fdb = set(state.fdb)
            requests = [rtnl.fdb_request(e, vx.index, delete=True)
                        for e in sorted(live_fdb - want_fdb) if e.mac not in
                        {w.mac for w in want_fdb}]
            requests += [rtnl.fdb_request(e, vx.index) for e in sorted(want_fdb - live_fdb)]
            live_neigh = set(rtnl.dump_neighbours(self.nl, vx.index))
            want_neigh = set(state.neighbours)
            want_ips = {n.ip for n in want_neigh}
            requests += [rtnl.neigh_request(e, vx.index, delete=True)
                         for e in sorted(live_neigh - want_neigh) if e.ip not in want_ips]
            requests += [rtnl.neigh_request(e, vx.index) for e in sorted(want_neigh - live_neigh)]
            run(requests)

        tables = self._our_tables(state)
        self._invalidate_stale_caches()
        if self._route_cache is not None and self._cached_tables != tables:
            self._route_cache = self._rule_cache = None
        self._cached_tables = tables
        try:
            run(self._route_requests(state.routes, tables, links, names, write))
            if write:
                self._route_cache = self._want_route_keys
            run(self._rule_requests(state.rules, tables))
            if write:
                self._rule_cache = Counter(state.rules)
        except BaseException:
            self._route_cache = self._rule_cache = None
            raise

        fw_writes, fw_changes = self._firewall(state, write)
        writes += fw_writes
        changes += fw_changes
        return writes, changes

    @staticmethod
    def _implicit_sysctls(state: NodeState) -> tuple[tuple[str, str], ...]:
        """What our own mechanisms need: the reverse-path check must see the fwmark that the
        firewall puts on traffic from remote pools (see firewall.py)."""
        if state.firewall is None:
            return ()
        devices = [d.name for d in (state.vxlan, state.wireguard) if d is not None]
        return tuple((f"net.ipv4.conf.{d}.src_valid_mark", "1") for d in devices)

    def _vxlan(self, state: NodeState, write: bool) -> tuple[int, list[str]]:
        name = state.vxlan.name if state.vxlan else self.settings.vxlan_device
        have = self.links.get(name)
        if have is not None and have.kind != "vxlan":
            raise DataplaneError(
                f"link {name} exists and is a {have.kind or 'device'}, not the VXLAN device we "
                "create; delete or rename it, or configure another VXLAN device name")
        want = state.vxlan
        if want is None:
            if have is None:
                return 0, []
            if write:
                self.links.delete(have.index)
            return int(write), [f"vxlan {name}: delete"]
        changes: list[str] = []
        writes = 0
        if have is not None and have.vxlan is not None:
            immutable = {
                "vni": (have.vxlan.vni, want.vni),
                "port": (have.vxlan.port, want.port),
                "local": (have.vxlan.local, want.local_ip),
                "learning": (have.vxlan.learning, False),
            }
            differ = [f"{k} {a} -> {b}" for k, (a, b) in immutable.items() if a != b]
            if differ:
                changes.append(f"vxlan {name}: recreate ({', '.join(differ)})")
                if write:
                    self.links.delete(have.index)
                    writes += 1
                have = None
        if have is None:
            changes.append(f"vxlan {name}: create vni {want.vni} port {want.port} "
                           f"local {want.local_ip} mtu {want.mtu}")
            if not write:
                return 0, changes
            self.links.add_vxlan(name, want.vni, want.port, want.local_ip, want.mac.lower(),
                                 want.mtu)
            writes += 1
            have = self.links.get(name)
            if have is None:
                raise DataplaneError(f"vxlan {name}: created but not found")
        fix: dict[str, object] = {}
        if have.mtu != want.mtu:
            fix["mtu"] = want.mtu
        if have.mac != want.mac.lower():
            fix["mac"] = want.mac.lower()
        if not have.up:
            fix["up"] = True
        if fix:
            changes.append(f"vxlan {name}: set {', '.join(f'{k} {v}' for k, v in fix.items())}")
            if write:
                self.links.set(have.index, **fix)  # type: ignore[arg-type]
                writes += 1
        return writes, changes

    def _route_requests(self, routes: tuple[Route, ...], tables: tuple[int, ...],
                        links: dict[str, LinkFacts], names: dict[int, str],
                        write: bool) -> list[Request]:
        # Sets of destination strings per shape (route_index), not the dataclasses: hashing
        # and comparing them runs in C. Only the (few) differing routes are looked at one by one.
        if self._route_cache is None:
            self._route_cache = route_index(rtnl.dump_routes(self.nl, tables, names),
                                            strict=False)
        live_index = self._route_cache
        want_index = route_index(routes)
        self._want_route_keys = want_index
        requests: list[Request] = []
        if want_index == live_index:
            return requests
        # Only the differing destinations become keys: O(changes) past the set differences.
        missing: set[RouteKey] = set()
        stale: list[RouteKey] = []
        for shape in want_index.keys() | live_index.keys():
            want_dsts = want_index.get(shape, set())
            live_dsts = live_index.get(shape, set())
            missing.update((dst, *shape) for dst in want_dsts - live_dsts)  # type: ignore[misc]
            stale.extend((dst, *shape) for dst in live_dsts - want_dsts)  # type: ignore[misc]
        # A live route whose place (dst, table) is also in `missing` is replaced, not deleted.
        replaced = {(key[0], key[1]) for key in missing}
        for key in stale:
            if (key[0], key[1]) not in replaced:
                requests.append(rtnl.route_request(Route(key[0], key[1], key[2]), 0, delete=True))
        for key in sorted(missing, key=str):
            route = Route(*key)
            link = links.get(route.dev)
            if link is None:
                if not write:
                    requests.append(Request(0, 0, b"", f"route {route.dst} table {route.table}: "
                                            f"device {route.dev} missing"))
                    continue
                raise DataplaneError(
                    f"route {route.dst} table {route.table}: device {route.dev} does not exist; "
                    "the desired state names a device no applier created")
            requests.append(rtnl.route_request(route, link.index))
        return requests

    def _rule_requests(self, rules: tuple[Rule, ...], tables: tuple[int, ...]) -> list[Request]:
        if self._rule_cache is None:
            self._rule_cache = Counter(rtnl.dump_rules(self.nl, tables))
        live = self._rule_cache
        want = Counter(rules)
        requests: list[Request] = []
        for rule, count in live.items():
            for _ in range(count - want.get(rule, 0)):
                requests.append(rtnl.rule_request(rule, delete=True))
        for rule, count in want.items():
            for _ in range(count - live.get(rule, 0)):
                requests.append(rtnl.rule_request(rule))
        return requests

    def _firewall(self, state: NodeState, write: bool) -> tuple[int, list[str]]:
        desired = state.firewall
        if desired is None:
            if self.nft.exists():
                if write:
                    self._fw_cache = None
                    self.nft.delete_table()
                return int(write), [f"nft table inet {self.settings.nft_table}: delete"]
            return 0, []
        nft = self.nft if desired.table == self.settings.nft_table else Nft(
            self.settings.netns, desired.table)
        _script, fingerprint = skeleton(desired)
        generation = self._generation.read()
        cached = self._fw_cache
        if cached is not None and cached[0] == generation and cached[1] == fingerprint:
            live: LiveFirewall | None = cached[2]
        else:
            live = nft.read(fingerprint)
            self._fw_cache = (generation, fingerprint, live) if live is not None else None
        want = self._collapse(desired.remote_subnets)
        plan = plan_firewall(desired, live, want)
        if plan.empty():
            return 0, []
        if write:
            self._fw_cache = None
            if plan.script is not None:
                nft.transaction(plan.script)
            else:
                self._set_elements.change(desired.table, [(s, list(c), d)
                                                          for s, c, d in plan.elements])
            # What we wrote is now the table; remember it under the generation it created.
            self._fw_cache = (self._generation.read(), fingerprint,
                              LiveFirewall(True, want))
        return int(write), list(plan.changes)

    # --- observe -------------------------------------------------------------------------------

    def observe(self) -> DataplaneStatus:
        with self._lock:
            links = self.links.all()
            names = {link.index: name for name, link in links.items()}
            tables = self._our_tables(self._last)
            vx = links.get(self._last.vxlan.name if self._last and self._last.vxlan
                           else self.settings.vxlan_device)
            vx = vx if vx is not None and vx.kind == "vxlan" else None
            fdb = len(rtnl.dump_fdb(self.nl, vx.index)) if vx else 0
            neigh = len(rtnl.dump_neighbours(self.nl, vx.index)) if vx else 0
            routes = len(rtnl.dump_routes(self.nl, tables, names))
            rules = len(rtnl.dump_rules(self.nl, tables))
            elements = 0
            fw = self._last.firewall if self._last else None
            if fw is not None:
                live_fw = self.nft.read(skeleton(fw)[1])
                elements = sum(len(e) for e in live_fw.elements.values()) if live_fw else 0
            wg = self.wireguard.live()
            now = time.time()
            peers = tuple(
                PeerStatus(p.public_key, p.endpoint, len(p.allowed_ips),
                           (now - p.last_handshake) if p.last_handshake else None,
                           p.rx_bytes, p.tx_bytes)
                for p in sorted((wg.peers if wg else {}).values(), key=lambda p: p.public_key)
            )
            drift: tuple[str, ...] = ()
            if self._last is not None:
                drift = tuple(self._reconcile(self._last, write=False)[1])
                if drift:  # the next apply must not trust what it last wrote
                    self.wireguard.resync()
            return DataplaneStatus(
                vxlan=vx is not None, wireguard=wg is not None,
                wireguard_backend=self.wireguard.backend if wg else None,
                routes=routes, rules=rules, fdb=fdb, neighbours=neigh,
                firewall_elements=elements, peers=peers, drift=drift,
            )

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
                netns_name=self.settings.netns,
                own_ports=lambda: {self.nl.port_id},
                devices=lambda: {self.settings.vxlan_device, self.settings.wireguard_device},
                tables=lambda: set(self._our_tables(self._last)),
                callback=callback,
            )
            self._watcher.start()

    # --- cleanup ---------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove every object of ours (see module rules) and nothing else. Keeps the key file."""
        with self._lock:
            changes: list[str] = []
            tables = self._our_tables(self._last)
            rules = rtnl.dump_rules(self.nl, tables)
            requests = [rtnl.rule_request(r, delete=True) for r in rules]
            links = self.links.all()
            names = {link.index: name for name, link in links.items()}
            requests += [rtnl.route_request(r, 0, delete=True)
                         for r in rtnl.dump_routes(self.nl, tables, names)]
            changes += [r.what for r in requests]
            self.nl.write(requests)
            vx = links.get(self.settings.vxlan_device)
            if vx is not None and vx.kind == "vxlan":
                self.links.delete(vx.index)
                changes.append(f"delete link {vx.name}")
            changes += self.wireguard.cleanup()
            if self.nft.delete_table():
                changes.append(f"delete nft table inet {self.settings.nft_table}")
            self._last = None
            self._route_cache = self._rule_cache = self._fw_cache = None
            return changes


__all__ = ["Dataplane", "collapse"]
