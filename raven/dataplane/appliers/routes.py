"""Routes in our policy-routing tables, and ours in the main table.

Rules kept: every route in our tables is ours (the overlay's tables plus any table the plan
names); in `main`, which is always in scope (so cleanup and a move out of it find them), only
the routes of our protocol are, and they carry our metric (raven.dataplane.rtnl writes, dumps
and deletes them by protocol there, so another's route for the same prefix is never touched);
a route whose place (destination, table) is wanted with another shape is replaced, not
deleted first. Cache (why a no-op reconcile of 10,000 routes costs milliseconds, not a 10,000-
route dump): the tables are dumped once, then the cache is kept equal to what we wrote; it is
dropped on any foreign route, link or address event, an event overrun, a failed write, or a
change of the set of tables.
"""

from __future__ import annotations

import errno
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from raven.dataplane import drift, rtnl
from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.errors import DataplaneError
from raven.dataplane.links import LinkFacts
from raven.dataplane.netlink import NetlinkError, NetlinkSocket
from raven.desired import NodeState, Route
from raven.route_placement import Cover

# (dst, table, dev, gateway, mtu, src): Route's fields in order, so Route(*key) rebuilds it
RouteKey = tuple[str, int, str, str | None, int | None, str | None]
RouteShape = tuple[int, str, str | None, int | None, str | None]  # (table, dev, gateway, mtu, src)
RouteIndex = dict[RouteShape, set[str]]  # shape -> destinations

_route_key: Callable[[Route], RouteKey] = operator.attrgetter(  # C speed at 10,000 routes
    "dst", "table", "dev", "gateway", "mtu", "src")
_table_of = operator.attrgetter("table")
_dst_of = operator.attrgetter("dst")
_shape_columns = tuple(map(operator.attrgetter, ("table", "dev", "gateway", "mtu", "src")))


def route_index(routes: tuple[Route, ...] | list[Route], *, strict: bool = True) -> RouteIndex:
    """Routes grouped by shape. A plan's routes nearly always share one shape (same table,
    device, next hop, MTU, source): then the index is one set of destination strings, built and
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


class OurTables:
    """The tables whose routes and rules are ours, for one state (memoised by identity: the
    agent hands the same NodeState object to every reconcile until the plan changes)."""

    def __init__(self, overlay_tables: tuple[int, ...]) -> None:
        self.overlay_tables = overlay_tables
        self._memo: tuple[NodeState, tuple[int, ...]] | None = None

    def __call__(self, state: NodeState | None) -> tuple[int, ...]:
        if state is None:
            return tuple(sorted(self.overlay_tables))
        memo = self._memo
        if memo is not None and memo[0] is state:
            return memo[1]
        tables = set(self.overlay_tables)
        tables.update(map(_table_of, state.routes))
        tables.update(map(_table_of, state.rules))
        result = tuple(sorted(tables))
        self._memo = (state, result)
        return result


class InsideOurs:
    """Whether a prefix lies inside a subnet the state of `current()` routes, in any table (the
    drift monitor's test for a foreign route in main, raven.dataplane.drift); the subnets are
    indexed once per state, memoised by identity as OurTables."""

    def __init__(self, current: Callable[[], NodeState | None]) -> None:
        self.current = current
        self._memo: tuple[NodeState, Cover] | None = None

    def __call__(self, prefix: str) -> bool:
        state = self.current()
        if state is None:
            return False
        memo = self._memo
        if memo is None or memo[0] is not state:
            memo = (state, Cover(route.dst for route in state.routes))
            self._memo = memo
        return bool(memo[1].around(prefix))


@dataclass(frozen=True)
class RouteChanges:
    want: RouteIndex = field(default_factory=dict)  # the index the kernel holds after apply
    delete: tuple[RouteKey, ...] = ()
    add: tuple[RouteKey, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.delete and not self.add


def _replace_line(key: RouteKey) -> str:
    return rtnl.route_line(*key)


def diff(want: RouteIndex, live: RouteIndex) -> RouteChanges:
    # Sets of destination strings per shape, not the dataclasses: hashing and comparing them
    # runs in C. Only the (few) differing destinations become keys: O(changes) past that.
    if want == live:
        return RouteChanges(want)
    missing: set[RouteKey] = set()
    stale: list[RouteKey] = []
    for shape in want.keys() | live.keys():
        want_dsts = want.get(shape, set())
        live_dsts = live.get(shape, set())
        missing.update((dst, *shape) for dst in want_dsts - live_dsts)  # type: ignore[misc]
        stale.extend((dst, *shape) for dst in live_dsts - want_dsts)  # type: ignore[misc]
    # A live route whose place (dst, table) is also in `missing` is replaced, not deleted.
    replaced = {(key[0], key[1]) for key in missing}
    delete = tuple(key for key in stale if (key[0], key[1]) not in replaced)
    add = tuple(sorted(missing, key=str))
    lines = ([rtnl.route_line(k[0], k[1], delete=True) for k in delete]
             + list(map(_replace_line, add)))
    return RouteChanges(want, delete, add, tuple(lines))


class RouteApplier:
    invalidated_by = frozenset({drift.ROUTE, drift.LINK, drift.ADDRESS, drift.OVERRUN})

    def __init__(self, nl: NetlinkSocket) -> None:
        self.nl = nl
        self._cache: RouteIndex | None = None
        self._tables: tuple[int, ...] = ()

    def forget(self) -> None:
        self._cache = None

    def read(self, tables: tuple[int, ...], names: dict[int, str], *,
             fresh: bool = False) -> RouteIndex:
        if tables != self._tables:
            self._cache, self._tables = None, tables
        if self._cache is None or fresh:
            self._cache = route_index(rtnl.dump_routes(self.nl, tables, names), strict=False)
        return self._cache

    def apply(self, changes: RouteChanges, links: dict[str, LinkFacts]) -> int:
        requests = [rtnl.route_request(Route(k[0], k[1], k[2]), 0, delete=True)
                    for k in changes.delete]
        for key in changes.add:
            link = links.get(key[2])
            if link is None:
                raise DataplaneError(
                    f"route {key[0]} table {key[1]}: device {key[2]} does not exist; "
                    "the desired state names a device no applier created")
            requests.append(rtnl.route_request(Route(*key), link.index))
        self._cache = None  # a failed write leaves the tables unknown
        try:
            writes = self.nl.write(requests)
        except NetlinkError as exc:
            if exc.errno == errno.EINVAL and " src " in exc.what:
                raise DataplaneError(
                    f"{exc}: the kernel takes only a local address as a route's source; the "
                    "planner uses the node's InternalIP, so that address must be configured "
                    "on this host (check the Node's status.addresses)") from None
            raise
        self._cache = changes.want
        return writes

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: every route in our tables."""
        names = {link.index: name for name, link in scope.links.items()}
        changes = diff({}, self.read(scope.tables, names, fresh=True))
        self.apply(changes, scope.links)
        return list(changes.lines)

    def step(self, state: NodeState, p: Pass) -> None:
        names = {link.index: name for name, link in p.links.items()}
        live = self.read(p.tables, names, fresh=p.fresh)
        p.routes = sum(map(len, live.values()))
        changes = diff(route_index(state.routes), live)
        if p.take(changes, changes.lines):
            p.writes += self.apply(changes, p.links)
