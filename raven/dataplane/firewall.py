"""Our own nftables table (`inet raven`): mark cross-pool traffic, keep its source address.

What the table does (and why):
- sets `remote4` / `remote6` (flags interval) hold every remote pool's pod subnets, collapsed so
  that no two intervals overlap (nft rejects overlapping intervals);
- chain `prerouting` (filter, priority mangle) sets mark bits on forwarded pod traffic to a
  remote subnet, chain `output` (route, priority mangle, so the kernel re-routes after the mark)
  does the same for the node's own traffic; the fwmark rule then sends it to our table;
- `prerouting` also marks traffic coming FROM a remote subnet. With `src_valid_mark=1` on our
  devices (set by the data plane) the kernel's reverse-path check then finds the route back
  through our table. Without it, rp_filter (loose or strict, whatever the host's `all` value)
  drops every packet arriving on raven-wg0: that device has no address and the way back to a
  remote pod is only in table 9028, which an unmarked lookup never reaches. Marked traffic for a
  local destination finds nothing in our table and falls through to the main table as before;
- chain `postrouting` (nat, priority srcnat - 10) applies an identity SNAT (`snat ip to ip saddr`)
  to traffic to remote subnets, and to traffic from them (a remote pod reaching a local pod
  through the gateway keeps its address too). The kernel runs the NAT chains of every table,
  ours, iptables-nft and iptables-legacy alike, in priority order and stops at the first one
  that binds the connection; binding it to its own source first means a CNI's or kube-proxy's
  MASQUERADE in another table can never rewrite a pod address that has to cross pools. Nothing
  else is touched.

Rules kept: pure (no I/O; nftnl.py encodes and sends); only table `inet <name>` is ever
written; every write is one netfilter netlink transaction (creating or rebuilding the table with
its elements, or element changes alone); a correct table is never rebuilt: set contents change
through element add/delete only; the skeleton (sets, chains, rules) is rebuilt atomically only
when it is not what we would write. `skeleton()` renders the same specs nftnl.py encodes as the
nft script it is equivalent to: its hash is the fingerprint every rule carries as its comment,
which is how we recognise our rules.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import socket
from dataclasses import dataclass, field

from raven.dataplane.errors import DataplaneError
from raven.dataplane.nftnl import ChainSpec, LiveTable, RuleSpec, SetSpec
from raven.desired import Firewall

SETS = {4: "remote4", 6: "remote6"}
CHAINS = ("prerouting", "output", "postrouting")
RULES_PER_CHAIN = {"prerouting": 2 * len(SETS), "output": len(SETS),
                   "postrouting": 2 * len(SETS)}
CHAIN_SPECS = (ChainSpec("prerouting", "filter", "prerouting", -150),
               ChainSpec("output", "route", "output", -150),
               ChainSpec("postrouting", "nat", "postrouting", 90))
PRIORITY_TEXT = {-150: "mangle", 90: "srcnat - 10"}
NFT_SET_INTERVAL = 0x4


@functools.lru_cache(maxsize=1 << 17)
def _interval(cidr: str) -> tuple[int, int, int, int, str]:
    """(family version, first address, -last address, last address, canonical CIDR).

    Ordered so that plain tuple sorting (C speed, no key function) puts a wider prefix before
    the prefixes nested in it."""
    address, _, prefix = cidr.partition("/")
    version, family, bits = (6, socket.AF_INET6, 128) if ":" in address else (4, socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, address), "big")
        length = int(prefix) if prefix else bits
        if not 0 <= length <= bits:
            raise ValueError(prefix)
    except (OSError, ValueError):
        raise DataplaneError(
            f"firewall remote subnet {cidr!r} is not a CIDR (expected e.g. 10.244.1.0/24)"
        ) from None
    size = 1 << (bits - length)
    first = value & ~(size - 1)
    text = f"{socket.inet_ntop(family, first.to_bytes(bits // 8, 'big'))}/{length}"
    return version, first, 1 - first - size, first + size - 1, text


@functools.lru_cache(maxsize=4)
def collapse(subnets: tuple[str, ...]) -> dict[int, frozenset[str]]:
    """Subnets per family with every subnet nested in another one dropped.

    nft interval sets reject overlapping elements; two CIDRs either nest or are disjoint, so
    dropping nested ones is enough (adjacent ones are accepted as they are). Memoized twice
    (per tuple and per CIDR) because the planner hands us the same values on every reconcile.
    """
    out: dict[int, list[str]] = {4: [], 6: []}
    last_end = {4: -1, 6: -1}
    for version, first, _neg_last, last, text in sorted(map(_interval, set(subnets))):
        if first <= last_end[version]:
            continue  # inside the previous kept subnet
        out[version].append(text)
        last_end[version] = last
    return {version: frozenset(texts) for version, texts in out.items()}


class Collapser:
    """`collapse` for a sequence of desired states that differ by a few subnets each time.

    While the subnets contain no nested pair (the normal case: pools' subnets do not overlap),
    the result is simply the input split by family, and a new input is checked only for what it
    adds, against its neighbours in a sorted list of intervals (two CIDRs either nest or are
    disjoint, so the predecessor and the successor are the only candidates). Anything else falls
    back to the full `collapse`.
    """

    _MAX_DELTA = 256

    def __init__(self) -> None:
        self._input: frozenset[str] = frozenset()
        self._result: dict[int, frozenset[str]] = {4: frozenset(), 6: frozenset()}
        self._sorted: list[tuple[int, int, int, int, str]] = []
        self._exact = True  # the result equals the input (no nested subnets)

    def __call__(self, subnets: tuple[str, ...]) -> dict[int, frozenset[str]]:
        new = frozenset(subnets)
        added, removed = new - self._input, self._input - new
        if not added and not removed:
            return self._result
        if self._exact and len(added) + len(removed) <= self._MAX_DELTA and self._patch(
                added, removed):
            self._input = new
            return self._result
        self._rebuild(new)
        return self._result

    def _patch(self, added: frozenset[str], removed: frozenset[str]) -> bool:
        items = self._sorted
        for cidr in removed:
            interval = _interval(cidr)
            i = bisect.bisect_left(items, interval)
            if i < len(items) and items[i] == interval:
                del items[i]
        for cidr in added:
            interval = _interval(cidr)
            version, first, _neg, last, _text = interval
            i = bisect.bisect_left(items, interval)
            before = items[i - 1] if i > 0 else None
            after = items[i] if i < len(items) else None
            if (before is not None and before[0] == version and before[3] >= first) or (
                    after is not None and after[0] == version and after[1] <= last):
                return False  # nests with a neighbour: let the full collapse decide
            items.insert(i, interval)
        result = {v: set(texts) for v, texts in self._result.items()}
        for cidr in removed:
            result[_interval(cidr)[0]].discard(_interval(cidr)[4])
        for cidr in added:
            result[_interval(cidr)[0]].add(_interval(cidr)[4])
        self._result = {v: frozenset(texts) for v, texts in result.items()}
        return True

    def _rebuild(self, new: frozenset[str]) -> None:
        self._input = new
        self._result = collapse(tuple(sorted(new)))
        self._sorted = sorted(map(_interval, new))
        self._exact = sum(map(len, self._result.values())) == len(self._sorted)


def skeleton_specs(fw: Firewall) -> tuple[tuple[SetSpec, ...], tuple[RuleSpec, ...]]:
    """The sets and rules of our table (chains are CHAIN_SPECS), in the order we write them."""
    keep = ~fw.mark_mask & 0xFFFFFFFF
    sets = tuple(SetSpec(name, version) for version, name in SETS.items())
    rules: list[RuleSpec] = []
    for chain in CHAINS:
        for version, set_name in SETS.items():
            if chain == "prerouting":
                rules.append(RuleSpec(chain, version, "daddr", set_name, (keep, fw.mark)))
                rules.append(RuleSpec(chain, version, "saddr", set_name, (keep, fw.mark)))
            elif chain == "output":
                rules.append(RuleSpec(chain, version, "daddr", set_name, (keep, fw.mark)))
            else:
                rules.append(RuleSpec(chain, version, "daddr", set_name, None))
                # Traffic FROM a remote pool to a local pod leaves the gateway towards the pod's
                # node; a foreign MASQUERADE would rewrite its source there, and the reply (to
                # the gateway's own address) would then be de-NATed only after our prerouting
                # mark, so it misses our table. Binding it to its own source first prevents both.
                rules.append(RuleSpec(chain, version, "saddr", set_name, None))
    return sets, tuple(rules)


def _rule_text(rule: RuleSpec) -> str:
    proto = "ip" if rule.version == 4 else "ip6"
    match = f"{proto} {rule.match} @{rule.set_name}"
    if rule.mark is None:
        return f"{match} snat {proto} to {proto} saddr"
    keep, mark = rule.mark
    return f"{match} meta mark set meta mark & {keep:#x} | {mark:#x}"


def skeleton(fw: Firewall) -> tuple[str, str]:
    """(nft script equivalent to the empty table we write, fingerprint)."""
    return _skeleton(fw.table, fw.mark, fw.mark_mask)  # not keyed on the 10,000 subnets


@functools.lru_cache(maxsize=8)
def _skeleton(table: str, mark: int, mark_mask: int) -> tuple[str, str]:
    fw = Firewall(table=table, mark=mark, mark_mask=mark_mask, local_subnets=(),
                  remote_subnets=())
    sets, rule_specs = skeleton_specs(fw)
    body = [f"  set {s.name} {{ type ipv{s.version}_addr; flags interval; }}" for s in sets]
    rules: dict[str, list[str]] = {c: [] for c in CHAINS}
    for rule in rule_specs:
        rules[rule.chain].append(_rule_text(rule))
    hooks = {c.name: f"type {c.kind} hook {c.hook} priority {PRIORITY_TEXT[c.priority]}; "
             "policy accept;" for c in CHAIN_SPECS}
    text = "\n".join(body) + "".join(
        f"\n  chain {c} {{ {hooks[c]} " + " ".join(f"{r};" for r in rules[c]) + " }"
        for c in CHAINS
    )
    fingerprint = "raven:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    chains = []
    for chain in CHAINS:
        lines = "\n".join(f"    {r} comment \"{fingerprint}\"" for r in rules[chain])
        chains.append(f"  chain {chain} {{\n    {hooks[chain]}\n{lines}\n  }}")
    script = (f"table inet {fw.table} {{\n" + "\n".join(body) + "\n" + "\n".join(chains)
              + "\n}\n")
    return script, fingerprint


@dataclass(frozen=True)
class LiveFirewall:
    fingerprint_ok: bool  # the skeleton is exactly ours (sets, chains, rule comments)
    elements: dict[int, frozenset[str]]  # family version -> CIDRs in the set


def judge(table: LiveTable | None, fingerprint: str) -> LiveFirewall | None:
    """What a live table means to us: None when absent; `fingerprint_ok` when its skeleton is
    exactly what we write (so only elements may need changing)."""
    if table is None:
        return None
    ok = table.others == 0 and set(table.sets) == set(SETS.values())
    ok = ok and all(flags == NFT_SET_INTERVAL for flags in table.sets.values())
    ok = ok and table.chains == frozenset(CHAINS)
    per_chain: dict[str, int] = {}
    for chain, comment in table.rules:
        per_chain[chain] = per_chain.get(chain, 0) + 1
        ok = ok and comment == fingerprint
    ok = ok and per_chain == RULES_PER_CHAIN
    elements: dict[int, frozenset[str]] = {}
    for version, name in SETS.items():
        prefixes, exact = table.elements.get(name, (set(), True))
        ok = ok and exact
        elements[version] = frozenset(prefixes)
    return LiveFirewall(ok, elements)


@dataclass(frozen=True)
class FirewallPlan:
    build: str | None = None  # "create" | "rebuild": the whole table in one transaction
    elements: tuple[tuple[str, tuple[str, ...], bool], ...] = ()  # (set, CIDRs, delete?)
    delete_table: bool = False
    changes: tuple[str, ...] = ()
    # the collapsed subnets the table holds after this plan (None when it is deleted)
    want: dict[int, frozenset[str]] | None = field(default=None, compare=False)

    def empty(self) -> bool:
        return self.build is None and not self.elements and not self.delete_table


def plan_firewall(desired: Firewall | None, live: LiveFirewall | None,
                  want: dict[int, frozenset[str]] | None = None, *,
                  table: str = "") -> FirewallPlan:
    """The pure diff: delete the table when nothing is desired; a create/rebuild when the
    skeleton is missing or not ours (elements included); else element deltas.

    `want` is `collapse(desired.remote_subnets)`, when the caller has it already; `table` names
    the table to delete when `desired` is None."""
    if desired is None:
        if live is None:
            return FirewallPlan()
        return FirewallPlan(delete_table=True, changes=(f"nft table inet {table}: delete",))
    if want is None:
        want = collapse(tuple(desired.remote_subnets))
    if live is None or not live.fingerprint_ok:
        what = "create" if live is None else "rebuild"
        adds = tuple((name, tuple(sorted(want[version])), False)
                     for version, name in SETS.items() if want[version])
        detail = "" if live is None else " (skeleton differed)"
        return FirewallPlan(build=what, elements=adds, want=want, changes=(
            f"nft table inet {desired.table} {what}{detail} with "
            f"{sum(len(w) for w in want.values())} remote subnets",))
    elements: list[tuple[str, tuple[str, ...], bool]] = []
    changes: list[str] = []
    for version, set_name in SETS.items():  # deletions first: a wider prefix may replace them
        stale = live.elements[version] - want[version]
        if stale:
            elements.append((set_name, tuple(sorted(stale)), True))
            changes.append(f"nft {set_name} delete {len(stale)} elements")
    for version, set_name in SETS.items():
        missing = want[version] - live.elements[version]
        if missing:
            elements.append((set_name, tuple(sorted(missing)), False))
            changes.append(f"nft {set_name} add {len(missing)} elements")
    return FirewallPlan(elements=tuple(elements), changes=tuple(changes), want=want)
