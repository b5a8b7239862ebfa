"""Policy-routing rules pointing at our tables (a rule may legitimately appear twice: counted).

Rules kept: every rule whose table is ours is ours. Cache as for routes (see routes.py): kept
equal to what we wrote, dropped on a foreign rule, link or address event, an overrun, a failed
write or a change of tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from raven.dataplane import drift, rtnl
from raven.dataplane.netlink import NetlinkSocket
from raven.desired import Rule


@dataclass(frozen=True)
class RuleChanges:
    want: Counter[Rule] = field(default_factory=Counter)
    delete: tuple[Rule, ...] = ()
    add: tuple[Rule, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.delete and not self.add


def _line(rule: Rule, verb: str) -> str:
    return (f"rule {verb} fwmark {rule.fwmark:#x}/{rule.fwmask:#x} lookup {rule.table} "
            f"priority {rule.priority}")


def diff(desired: tuple[Rule, ...], live: Counter[Rule]) -> RuleChanges:
    want = Counter(desired)
    delete = tuple(rule for rule, n in live.items() for _ in range(n - want.get(rule, 0)))
    add = tuple(rule for rule, n in want.items() for _ in range(n - live.get(rule, 0)))
    lines = tuple([_line(r, "del") for r in delete] + [_line(r, "add") for r in add])
    return RuleChanges(want, delete, add, lines)


class RuleApplier:
    invalidated_by = frozenset({drift.RULE, drift.LINK, drift.ADDRESS, drift.OVERRUN})

    def __init__(self, nl: NetlinkSocket) -> None:
        self.nl = nl
        self._cache: Counter[Rule] | None = None
        self._tables: tuple[int, ...] = ()

    def forget(self) -> None:
        self._cache = None

    def read(self, tables: tuple[int, ...], *, fresh: bool = False) -> Counter[Rule]:
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
