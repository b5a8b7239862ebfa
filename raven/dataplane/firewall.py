"""Our own nftables table (`inet raven`): the remote pools' subnets, on members the chains that
mark traffic to and from them, and, only where another table could masquerade, an identity SNAT
that keeps their traffic's source address.

What the table does (and why):
- sets `remote4` / `remote6` (flags interval) hold every remote pool's pod subnets, collapsed so
  that no two intervals overlap (nft rejects overlapping intervals). Sets cost nothing per
  packet: only base chains (hooks) are evaluated for packets;
- with `Firewall.marks` (a member): chain `prerouting` (filter, priority mangle) sets mark bits
  on forwarded pod traffic to a remote subnet, chain `output` (route, priority mangle, so the
  kernel re-routes after the mark) does the same for the node's own traffic; the fwmark rule
  then sends it to our table. `prerouting` also marks traffic coming FROM a remote subnet:
  with `src_valid_mark=1` on our devices (set by the data plane) the kernel's reverse-path
  check then finds the route back through our table. The mark is what lets a member pass
  strict rp_filter (raven.topology `_member_rules`). An active gateway has no mark chains: its
  rule has no selector, and these chains, evaluated for every packet, cost about 10 % of the
  cross-pool throughput (docs/benchmarks.md);
- chain `postrouting` (nat, priority srcnat - 10) applies an identity SNAT (`snat ip to ip saddr`)
  to traffic to remote subnets, and to traffic from them (a remote pod reaching a local pod
  through the gateway keeps its address too). The kernel runs the NAT chains of every table,
  ours, iptables-nft and iptables-legacy alike, in priority order and stops at the first one
  that binds the connection; binding it to its own source first means a CNI's or kube-proxy's
  MASQUERADE in another table can never rewrite a pod address that has to cross pools. Nothing
  else is touched. The chain exists only while the node has another NAT chain on the
  postrouting hook (an nft chain of type nat in any other table, or iptables-legacy's `nat`
  table): without one nothing can rewrite a source, and a NAT chain of ours would be the only
  thing turning connection tracking on in the node, for every packet of the path (about 4 %
  of the cross-pool throughput). Where kube-proxy or a CNI has a nat chain, conntrack runs
  anyway and our chain stays, with its cost. The data plane re-checks at every apply.

Rules kept: pure (no I/O; nftnl.py encodes and sends); only table `inet <name>` is ever
written; every write is one netfilter netlink transaction (creating or rebuilding the table with
its elements, or element changes alone); a correct table is never rebuilt: set contents change
through element add/delete only; the skeleton (sets, chains, rules) is rebuilt atomically only
when it is not what we would write (an older agent's shape included). `skeleton()` renders the
same specs nftnl.py encodes as the nft script it is equivalent to: its hash is the fingerprint
every rule carries as its comment, which is how we recognise our rules.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from raven.dataplane.errors import DataplaneError
from raven.dataplane.nftnl import ChainSpec, LiveTable, RuleSpec, SetSpec
from raven.desired import Firewall

SETS = {4: "remote4", 6: "remote6"}
MARK_CHAINS = (ChainSpec("prerouting", "filter", "prerouting", -150),
               ChainSpec("output", "route", "output", -150))
SNAT_CHAIN = ChainSpec("postrouting", "nat", "postrouting", 90)
PRIORITY_TEXT = {-150: "mangle", 90: "srcnat - 10"}
# Hook number of postrouting in netfilter (NF_INET_POST_ROUTING).
POSTROUTING_HOOK = 4


def chain_specs(marks: bool, snat: bool) -> tuple[ChainSpec, ...]:
    """The base chains of our table: the mark chains, the identity SNAT chain, both or none."""
    return (*(MARK_CHAINS if marks else ()), *((SNAT_CHAIN,) if snat else ()))


def rules_per_chain(marks: bool, snat: bool) -> dict[str, int]:
    out = {"prerouting": 2 * len(SETS), "output": len(SETS)} if marks else {}
    if snat:
        out[SNAT_CHAIN.name] = 2 * len(SETS)
    return out


def masquerade_risk(nat_chains: Iterable[tuple[str, str, str, str, int]], own_table: str,
                    legacy_tables: Iterable[str]) -> tuple[str, ...]:
    """What on the node could rewrite a pod's source: nft chains of type nat on the
    postrouting hook outside our table ((family, table, chain, type, hook) as dumped), and
    iptables-legacy `nat` tables (ip_tables_names / ip6_tables_names). Sorted; empty = none,
    so the identity SNAT is not needed."""
    found = {f"{family} {table} {chain}" for family, table, chain, kind, hook in nat_chains
             if kind == "nat" and hook == POSTROUTING_HOOK
             and not (family == "inet" and table == own_table)}
    found.update(f"iptables-legacy {name}" for name in legacy_tables)
    return tuple(sorted(found))


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


def skeleton_specs(fw: Firewall, snat: bool = False) -> tuple[tuple[SetSpec, ...],
                                                             tuple[RuleSpec, ...]]:
    """The sets and rules of our table (chains: `chain_specs(fw.marks, snat)`), in the order we
    write them."""
    keep = ~fw.mark_mask & 0xFFFFFFFF
    sets = tuple(SetSpec(name, version) for version, name in SETS.items())
    rules: list[RuleSpec] = []
    for chain in chain_specs(fw.marks, snat):
        for version, set_name in SETS.items():
            if chain.name == "prerouting":
                rules.append(RuleSpec(chain.name, version, "daddr", set_name, (keep, fw.mark)))
                rules.append(RuleSpec(chain.name, version, "saddr", set_name, (keep, fw.mark)))
            elif chain.name == "output":
                rules.append(RuleSpec(chain.name, version, "daddr", set_name, (keep, fw.mark)))
            else:
                rules.append(RuleSpec(chain.name, version, "daddr", set_name, None))
                # Traffic FROM a remote pool to a local pod leaves the gateway towards the pod's
                # node; a foreign MASQUERADE would rewrite its source there, and the reply (to
                # the gateway's own address) would then be de-NATed only after a member's
                # prerouting mark, so it misses our table. Binding it to its own source first
                # prevents both.
                rules.append(RuleSpec(chain.name, version, "saddr", set_name, None))
    return sets, tuple(rules)


def _rule_text(rule: RuleSpec) -> str:
    proto = "ip" if rule.version == 4 else "ip6"
    match = f"{proto} {rule.match} @{rule.set_name}"
    if rule.mark is None:
        return f"{match} snat {proto} to {proto} saddr"
    keep, mark = rule.mark
    return f"{match} meta mark set meta mark & {keep:#x} | {mark:#x}"


def skeleton(fw: Firewall, snat: bool = False) -> tuple[str, str]:
    """(nft script equivalent to the empty table we write, fingerprint)."""
    # not keyed on the 10,000 subnets
    return _skeleton(fw.table, fw.mark, fw.mark_mask, fw.marks, snat)


@functools.lru_cache(maxsize=16)
def _skeleton(table: str, mark: int, mark_mask: int, marks: bool,
              snat: bool) -> tuple[str, str]:
    fw = Firewall(table=table, mark=mark, mark_mask=mark_mask, local_subnets=(),
                  remote_subnets=(), marks=marks)
    sets, rule_specs = skeleton_specs(fw, snat)
    chain_specs_ = chain_specs(marks, snat)
    body = [f"  set {s.name} {{ type ipv{s.version}_addr; flags interval; }}" for s in sets]
    rules: dict[str, list[str]] = {c.name: [] for c in chain_specs_}
    for rule in rule_specs:
        rules[rule.chain].append(_rule_text(rule))
    hooks = {c.name: f"type {c.kind} hook {c.hook} priority {PRIORITY_TEXT[c.priority]}; "
             "policy accept;" for c in chain_specs_}
    text = "\n".join(body) + "".join(
        f"\n  chain {c.name} {{ {hooks[c.name]} " + " ".join(f"{r};" for r in rules[c.name])
        + " }" for c in chain_specs_
    )
    fingerprint = "raven:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    chains = []
    for chain in chain_specs_:
        lines = "\n".join(f"    {r} comment \"{fingerprint}\"" for r in rules[chain.name])
        chains.append(f"  chain {chain.name} {{\n    {hooks[chain.name]}\n{lines}\n  }}")
    script = (f"table inet {fw.table} {{\n" + "\n".join(body + chains) + "\n}\n")
    return script, fingerprint


@dataclass(frozen=True)
class LiveFirewall:
    fingerprint_ok: bool  # the skeleton is exactly ours (sets, chains, rule comments)
    elements: dict[int, frozenset[str]]  # family version -> CIDRs in the set


def judge(table: LiveTable | None, fingerprint: str, snat: bool = False,
          marks: bool = True) -> LiveFirewall | None:
    """What a live table means to us: None when absent; `fingerprint_ok` when its skeleton is
    exactly what we write (so only elements may need changing)."""
    if table is None:
        return None
    ok = table.others == 0 and set(table.sets) == set(SETS.values())
    ok = ok and all(flags == NFT_SET_INTERVAL for flags in table.sets.values())
    ok = ok and table.chains == frozenset(c.name for c in chain_specs(marks, snat))
    per_chain: dict[str, int] = {}
    for chain, comment in table.rules:
        per_chain[chain] = per_chain.get(chain, 0) + 1
        ok = ok and comment == fingerprint
    ok = ok and per_chain == rules_per_chain(marks, snat)
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
    # what could masquerade (masquerade_risk): the skeleton has the identity SNAT chain
    snat_for: tuple[str, ...] = ()

    def empty(self) -> bool:
        return self.build is None and not self.elements and not self.delete_table


def plan_firewall(desired: Firewall | None, live: LiveFirewall | None,
                  want: dict[int, frozenset[str]] | None = None, *,
                  table: str = "", snat_for: tuple[str, ...] = ()) -> FirewallPlan:
    """The pure diff: delete the table when nothing is desired; a create/rebuild when the
    skeleton is missing or not ours (elements included); else element deltas.

    `want` is `collapse(desired.remote_subnets)`, when the caller has it already; `table` names
    the table to delete when `desired` is None; `snat_for` names what could masquerade (see
    `masquerade_risk`): the skeleton then has the identity SNAT chain (`live` must have been
    judged against the same skeleton)."""
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
        snat = (f", identity SNAT (could masquerade: {', '.join(snat_for)})" if snat_for
                else ", no identity SNAT (nothing else on the node has a postrouting nat chain)")
        return FirewallPlan(build=what, elements=adds, want=want, snat_for=snat_for, changes=(
            f"nft table inet {desired.table} {what}{detail} with "
            f"{sum(len(w) for w in want.values())} remote subnets{snat}",))
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
    return FirewallPlan(elements=tuple(elements), changes=tuple(changes), want=want,
                        snat_for=snat_for)
