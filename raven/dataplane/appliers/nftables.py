"""Our nftables table `inet <overlay.nft_table>`, through netfilter netlink only (nftnl.py).

Cache: what we last read or wrote, keyed by the ruleset generation id (one small netlink
request; it moves with every transaction of any table) and the skeleton, so an unchanged
ruleset is never listed again; dropped on a failed write. Whether the skeleton carries the
identity SNAT chain is decided at every read (firewall.masquerade_risk): the other tables' base
chains are dumped again only when the generation moved, iptables-legacy's table names (which
the generation does not cover) are read every time. Rules kept: see firewall.py (pure plan)
and nftnl.py (wire).
"""

from __future__ import annotations

from pathlib import Path

from raven.dataplane import netns
from raven.dataplane.appliers import Pass, Scope
from raven.dataplane.firewall import (
    Collapser,
    FirewallPlan,
    LiveFirewall,
    chain_specs,
    judge,
    masquerade_risk,
    plan_firewall,
    skeleton,
    skeleton_specs,
)
from raven.dataplane.nftnl import (
    NftSocket,
    delete_table_message,
    element_messages,
    table_messages,
)
from raven.desired import Firewall, NodeState

diff = plan_firewall  # the pure diff: (desired, live, want) -> FirewallPlan

# iptables-legacy's tables of the calling THREAD's namespace (/proc/net follows the process's
# main thread, which never enters the node's namespace).
LEGACY_NAMES = {"ip": Path("/proc/thread-self/net/ip_tables_names"),
                "ip6": Path("/proc/thread-self/net/ip6_tables_names")}


def legacy_nat_tables(netns_name: str | None) -> list[str]:
    """`ip nat` / `ip6 nat` when iptables-legacy has a nat table in the namespace."""
    found = []
    with netns.entered(netns_name):
        for family, path in LEGACY_NAMES.items():
            try:
                names = path.read_text().split()
            except OSError:
                continue  # no ip_tables module: no legacy tables at all
            if "nat" in names:
                found.append(f"{family} nat")
    return found


class FirewallApplier:
    invalidated_by: frozenset[str] = frozenset()  # the generation id is our invalidation

    def __init__(self, netns_name: str | None, table: str) -> None:
        self.table = table
        self.netns = netns_name
        self.nft = NftSocket(netns_name)
        self.collapse = Collapser()
        self._cache: tuple[int, str, LiveFirewall | None] | None = None  # (gen, fp, live)
        self._chains: tuple[int, list[tuple[str, str, str, str, int]]] | None = None
        # What could masquerade, as found by the last read(); diff() plans with it.
        self.snat_for: tuple[str, ...] = ()

    def close(self) -> None:
        self.nft.close()

    def forget(self) -> None:
        self._cache = None
        self._chains = None

    def _masquerade_risk(self, generation: int, fresh: bool) -> tuple[str, ...]:
        if fresh or self._chains is None or self._chains[0] != generation:
            self._chains = (generation, self.nft.base_chains())
        return masquerade_risk(self._chains[1], self.table, legacy_nat_tables(self.netns))

    def read(self, desired: Firewall | None, *, fresh: bool = False) -> LiveFirewall | None:
        generation = self.nft.generation()
        self.snat_for = self._masquerade_risk(generation, fresh) if desired is not None else ()
        fingerprint = skeleton(desired, bool(self.snat_for))[1] if desired is not None else ""
        cached = self._cache
        if not fresh and cached is not None and cached[:2] == (generation, fingerprint):
            return cached[2]
        live = judge(self.nft.read_table(self.table), fingerprint, bool(self.snat_for),
                     desired.marks if desired is not None else True)
        self._cache = (generation, fingerprint, live)
        return live

    def diff(self, desired: Firewall | None, live: LiveFirewall | None) -> FirewallPlan:
        """Plans with what the last read() found could masquerade."""
        want = self.collapse(desired.remote_subnets) if desired is not None else None
        return plan_firewall(desired, live, want, table=self.table, snat_for=self.snat_for)

    def apply(self, plan: FirewallPlan, desired: Firewall | None) -> int:
        if plan.empty():
            return 0
        self._cache = None  # a failed write leaves the table unknown
        if desired is None:
            self.nft.write([delete_table_message(self.table)])
            self._cache = (self.nft.generation(), "", None)
            return 1
        snat = bool(plan.snat_for)
        ids: dict[str, int] = {}
        requests = []
        if plan.build is not None:
            sets, rules = skeleton_specs(desired, snat)
            requests, ids = table_messages(desired.table, sets, chain_specs(desired.marks, snat),
                                           rules,
                                           skeleton(desired, snat)[1],
                                           replace=plan.build == "rebuild")
        for set_name, cidrs, delete in plan.elements:
            requests += element_messages(desired.table, set_name, cidrs, delete,
                                         set_id=ids.get(set_name))
        self.nft.write(requests)
        # What we wrote is now the table; remember it under the generation it created.
        want = plan.want if plan.want is not None else self.collapse(desired.remote_subnets)
        self._cache = (self.nft.generation(), skeleton(desired, snat)[1],
                       LiveFirewall(True, want))
        return 1

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: our table `inet <table>`, whole (foreign tables are never read for
        deletion)."""
        plan = self.diff(None, self.read(None, fresh=True))
        if plan.empty():
            return []
        self.apply(plan, None)
        return [f"delete nft table inet {self.table}"]

    def step(self, state: NodeState, p: Pass) -> None:
        live = self.read(state.firewall, fresh=p.fresh)
        p.firewall_elements = sum(map(len, live.elements.values())) if live else 0
        plan = self.diff(state.firewall, live)
        if p.take(plan, plan.changes):
            p.writes += self.apply(plan, state.firewall)
