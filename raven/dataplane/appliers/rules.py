"""Policy-routing rules pointing at our tables (a rule may legitimately appear twice: counted).

Rules kept: every rule whose table is ours is ours; a rule is identified by priority, table,
family, mark and input device; a rule with neither selects every lookup. Cache as for routes (see
routes.py): kept equal to what we wrote, dropped on a foreign rule, link or address event, an
overrun, a failed write or a change of tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from raven.dataplane import drift, rtnl
from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.netlink import NetlinkSocket
from raven.desired import NodeState, Rule


@dataclass(frozen=True)
class RuleChanges:
    want: Counter[Rule] = field(default_factory=Counter)
    delete: tuple[Rule, ...] = ()
    add: tuple[Rule, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.delete and not self.add


def _line(rule: Rule, verb: str) -> str:
    return f"rule {verb} {rtnl.rule_text(rule)}"


def _place(rule: Rule) -> tuple[int, int, int]:
    return rule.priority, rule.table, rule.family


def _marked(rule: Rule) -> bool:
    """The rule has a selector (a mark or an input device) that its delete request names, so
    the kernel deletes exactly it."""
    return bool(rule.fwmark or rule.fwmask or rule.iif)


def diff(desired: tuple[Rule, ...], live: Counter[Rule]) -> RuleChanges:
    """Rules to delete and add so the kernel holds exactly `desired` (counted).

    The kernel deletes the first rule that matches the attributes given, treating those left
    out as wildcards, so deleting a rule without a mark could take a marked rule of the same
    (priority, table, family) instead. Where that could happen (a mark-less rule goes while a
    marked rule of its place stays) every rule of the place is deleted, marked ones first
    (exact matches), and the wanted ones are added again. Marked rules are deleted before
    mark-less ones in any case."""
    want = Counter(desired)
    delete = [rule for rule, n in live.items() for _ in range(n - want.get(rule, 0))]
    add = [rule for rule, n in want.items() for _ in range(n - live.get(rule, 0))]
    ambiguous = {_place(r) for r in delete if not _marked(r)}
    ambiguous &= {_place(r) for r, n in live.items() if _marked(r) and min(n, want.get(r, 0))}
    if ambiguous:
        delete = [rule for rule, n in live.items() if _place(rule) in ambiguous
                  for _ in range(n)] + [r for r in delete if _place(r) not in ambiguous]
        add = [rule for rule, n in want.items() if _place(rule) in ambiguous
               for _ in range(n)] + [r for r in add if _place(r) not in ambiguous]
    delete.sort(key=lambda r: not _marked(r))  # exact deletes before wildcard ones
    lines = tuple([_line(r, "del") for r in delete] + [_line(r, "add") for r in add])
    return RuleChanges(want, tuple(delete), tuple(add), lines)


_RESERVED = (253, 254, 255)  # the kernel's default, main and local tables


class RuleApplier:
    invalidated_by = frozenset({drift.RULE, drift.LINK, drift.ADDRESS, drift.OVERRUN})

    def __init__(self, nl: NetlinkSocket) -> None:
        self.nl = nl
        self._cache: Counter[Rule] | None = None
        self._tables: tuple[int, ...] = ()

    def forget(self) -> None:
        self._cache = None

    def read(self, tables: tuple[int, ...], *, fresh: bool = False) -> Counter[Rule]:
        # No rule of ours looks up main (or local, default): a rule that does is someone's.
        tables = tuple(t for t in tables if t not in _RESERVED)
        if tables != self._tables:
            self._cache, self._tables = None, tables
        if self._cache is None or fresh:
            self._cache = Counter(rtnl.dump_rules(self.nl, tables))
        return self._cache

    def apply(self, changes: RuleChanges) -> int:
        requests = [rtnl.rule_request(r, delete=True) for r in changes.delete]
        requests += [rtnl.rule_request(r) for r in changes.add]
        self._cache = None
        writes = self.nl.write(requests)
        self._cache = Counter(changes.want)
        return writes

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: every rule that looks up one of our tables."""
        changes = diff((), self.read(scope.tables, fresh=True))
        self.apply(changes)
        return list(changes.lines)

    def step(self, state: NodeState, p: Pass) -> None:
        live = self.read(p.tables, fresh=p.fresh)
        p.rules = sum(live.values())
        changes = diff(state.rules, live)
        if p.take(changes, changes.lines):
            p.writes += self.apply(changes)
