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
  to traffic to remote subnets. The kernel runs the NAT chains of every table, ours, iptables-nft
  and iptables-legacy alike, in priority order and stops at the first one that binds the
  connection; binding it to its own source first means a CNI's or kube-proxy's MASQUERADE in
  another table can never rewrite a pod address that has to cross pools. Nothing else is touched.

Rules kept: only table `inet <name>` is ever written; every write is one transaction: creating
or rebuilding the table is one `nft -f` file, element changes are one netfilter netlink batch
(see nftnl.py for why); a correct table is never rebuilt: set contents change through element
add/delete only; the skeleton (sets, chains, rules) is rebuilt atomically only when it is not
what we would write.
Every rule carries a comment with a fingerprint of the skeleton, which is how we recognise it.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import socket
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from raven.dataplane import netns
from raven.dataplane.errors import DataplaneError
from raven.dataplane.netlink import NETLINK_NETFILTER, NetlinkSocket, parse_attrs
from raven.desired import Firewall

SETS = {4: "remote4", 6: "remote6"}
CHAINS = ("prerouting", "output", "postrouting")
RULES_PER_CHAIN = {"prerouting": 2 * len(SETS), "output": len(SETS), "postrouting": len(SETS)}


@dataclass(frozen=True)
class LiveFirewall:
    fingerprint_ok: bool  # the skeleton is exactly ours (sets, chains, rule comments)
    elements: dict[int, frozenset[str]]  # family version -> CIDRs in the set


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


def skeleton(fw: Firewall) -> tuple[str, str]:
    """(nft script defining the empty table, fingerprint). Elements are added separately."""
    keep = ~fw.mark_mask & 0xFFFFFFFF
    mark = f"meta mark set meta mark & {keep:#x} | {fw.mark:#x}"
    body = []
    for version, set_name in SETS.items():
        body.append(f"  set {set_name} {{ type ipv{version}_addr; flags interval; }}")
    rules = {"prerouting": [], "output": [], "postrouting": []}  # type: dict[str, list[str]]
    for version, set_name in SETS.items():
        proto = "ip" if version == 4 else "ip6"
        rules["prerouting"].append(f"{proto} daddr @{set_name} {mark}")
        rules["prerouting"].append(f"{proto} saddr @{set_name} {mark}")
        rules["output"].append(f"{proto} daddr @{set_name} {mark}")
        rules["postrouting"].append(f"{proto} daddr @{set_name} snat {proto} to {proto} saddr")
    hooks = {
        "prerouting": "type filter hook prerouting priority mangle; policy accept;",
        "output": "type route hook output priority mangle; policy accept;",
        "postrouting": "type nat hook postrouting priority srcnat - 10; policy accept;",
    }
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


NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1


class RulesetGeneration:
    """The nftables ruleset generation id: it changes with every transaction of any table.

    Reading it is one small netlink request, far cheaper than listing a 10,000-element set, so
    an unchanged generation lets a reconcile reuse what it last read or wrote.
    """

    def __init__(self, netns_name: str | None) -> None:
        self.sock = NetlinkSocket(NETLINK_NETFILTER, netns_name)

    def read(self) -> int:
        body = struct.pack("=BBH", 0, 0, 0)  # nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0
        reply = self.sock.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 0, body)
        attrs = parse_attrs(reply[0], 4)
        return struct.unpack("!I", attrs[NFTA_GEN_ID][:4])[0]

    def close(self) -> None:
        self.sock.close()


def _element_cidr(elem: object, version: int) -> str | None:
    if isinstance(elem, str):
        return f"{elem}/{32 if version == 4 else 128}"
    if isinstance(elem, dict):
        if "prefix" in elem:
            return f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
        if "elem" in elem:
            return _element_cidr(elem["elem"].get("val"), version)
    return None  # a range that is not one prefix: not something we wrote


class Nft:
    """Runs `nft` inside the node's network namespace, scoped to one inet table."""

    def __init__(self, netns_name: str | None, table: str) -> None:
        self.netns = netns_name
        self.table = table

    def _run(self, args: list[str], script: str | None = None) -> str:
        argv = [*netns.command_prefix(self.netns), "nft", *args]
        try:
            proc = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise DataplaneError("nft not found: install the nftables package") from None
        if proc.returncode != 0:
            raise DataplaneError(
                f"nft {' '.join(args)} failed in netns {self.netns or '(current)'}: "
                f"{proc.stderr.strip()}" + (f"\nscript:\n{script[:2000]}" if script else "")
            )
        return proc.stdout

    def exists(self) -> bool:
        out = json.loads(self._run(["-j", "list", "tables", "inet"]) or '{"nftables": []}')
        return any(o.get("table", {}).get("name") == self.table for o in out["nftables"])

    def read(self, fingerprint: str) -> LiveFirewall | None:
        if not self.exists():
            return None
        out = json.loads(self._run(["-j", "list", "table", "inet", self.table]))["nftables"]
        elements: dict[int, set[str]] = {4: set(), 6: set()}
        ok = True
        sets_seen, chains_seen = set(), set()
        rules_per_chain: dict[str, int] = {}
        for obj in out:
            if "set" in obj:
                s = obj["set"]
                version = next((v for v, n in SETS.items() if n == s["name"]), None)
                if version is None or "interval" not in s.get("flags", []):
                    ok = False
                    continue
                sets_seen.add(s["name"])
                for elem in s.get("elem", []):
                    cidr = _element_cidr(elem, version)
                    if cidr is None:
                        ok = False
                    else:
                        elements[version].add(cidr)
            elif "chain" in obj:
                chains_seen.add(obj["chain"]["name"])
            elif "rule" in obj:
                rule = obj["rule"]
                rules_per_chain[rule["chain"]] = rules_per_chain.get(rule["chain"], 0) + 1
                if rule.get("comment") != fingerprint:
                    ok = False
            elif "table" not in obj and "metainfo" not in obj:
                ok = False  # maps, counters, flowtables: not ours
        ok = (ok and sets_seen == set(SETS.values()) and chains_seen == set(CHAINS)
              and all(rules_per_chain.get(c) == n for c, n in RULES_PER_CHAIN.items()))
        return LiveFirewall(ok, {v: frozenset(e) for v, e in elements.items()})

    def transaction(self, script: str) -> None:
        self._run(["-f", "-"], script)

    def delete_table(self) -> bool:
        if not self.exists():
            return False
        self._run(["delete", "table", "inet", self.table])
        return True


def _elements_stmt(verb: str, table: str, set_name: str, cidrs: Iterable[str]) -> str:
    items = ", ".join(sorted(cidrs))
    return f"{verb} element inet {table} {set_name} {{ {items} }}\n"


@dataclass(frozen=True)
class FirewallPlan:
    script: str | None = None  # whole-table `nft -f` transaction (create or rebuild)
    elements: tuple[tuple[str, tuple[str, ...], bool], ...] = ()  # (set, CIDRs, delete?) batch
    changes: tuple[str, ...] = ()

    def empty(self) -> bool:
        return self.script is None and not self.elements


def plan_firewall(desired: Firewall, live: LiveFirewall | None,
                  want: dict[int, frozenset[str]] | None = None) -> FirewallPlan:
    """A create/rebuild script when the skeleton is missing or not ours, else element deltas.

    `want` is `collapse(desired.remote_subnets)`, when the caller has it already."""
    script, _fingerprint = skeleton(desired)
    if want is None:
        want = collapse(tuple(desired.remote_subnets))
    if live is None or not live.fingerprint_ok:
        text = ""
        if live is not None:  # replace atomically: declare (no-op if present), delete, define
            text += f"table inet {desired.table} {{}}\ndelete table inet {desired.table}\n"
        text += script
        for version, set_name in SETS.items():
            if want[version]:
                text += _elements_stmt("add", desired.table, set_name, want[version])
        what = "create" if live is None else "rebuild (skeleton differed)"
        return FirewallPlan(script=text, changes=(
            f"nft table inet {desired.table} {what} with "
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
    return FirewallPlan(elements=tuple(elements), changes=tuple(changes))
