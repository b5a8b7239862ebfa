"""Our nftables table `inet <overlay.nft_table>`, through netfilter netlink only (nftnl.py).

Cache: what we last read or wrote, keyed by the ruleset generation id (one small netlink
request; it moves with every transaction of any table), so an unchanged ruleset is never listed
again; dropped on a failed write. Rules kept: see firewall.py (pure plan) and nftnl.py (wire).
"""

from __future__ import annotations

from raven.dataplane.firewall import (
    CHAIN_SPECS,
    Collapser,
    FirewallPlan,
    LiveFirewall,
    judge,
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
from raven.desired import Firewall

diff = plan_firewall  # the pure diff: (desired, live, want) -> FirewallPlan


class FirewallApplier:
    invalidated_by: frozenset[str] = frozenset()  # the generation id is our invalidation

    def __init__(self, netns_name: str | None, table: str) -> None:
        self.table = table
        self.nft = NftSocket(netns_name)
        self.collapse = Collapser()
        self._cache: tuple[int, str, LiveFirewall | None] | None = None  # (gen, fp, live)

    def close(self) -> None:
        self.nft.close()

    def forget(self) -> None:
        self._cache = None

    def read(self, desired: Firewall | None, *, fresh: bool = False) -> LiveFirewall | None:
        fingerprint = skeleton(desired)[1] if desired is not None else ""
        generation = self.nft.generation()
        cached = self._cache
        if not fresh and cached is not None and cached[:2] == (generation, fingerprint):
            return cached[2]
        live = judge(self.nft.read_table(self.table), fingerprint)
        self._cache = (generation, fingerprint, live)
        return live

    def diff(self, desired: Firewall | None, live: LiveFirewall | None) -> FirewallPlan:
        want = self.collapse(desired.remote_subnets) if desired is not None else None
        return plan_firewall(desired, live, want, table=self.table)

    def apply(self, plan: FirewallPlan, desired: Firewall | None) -> int:
        if plan.empty():
            return 0
        self._cache = None  # a failed write leaves the table unknown
        if desired is None:
            self.nft.write([delete_table_message(self.table)])
            self._cache = (self.nft.generation(), "", None)
            return 1
        ids: dict[str, int] = {}
        requests = []
        if plan.build is not None:
            sets, rules = skeleton_specs(desired)
            requests, ids = table_messages(desired.table, sets, CHAIN_SPECS, rules,
                                           skeleton(desired)[1], replace=plan.build == "rebuild")
        for set_name, cidrs, delete in plan.elements:
            requests += element_messages(desired.table, set_name, cidrs, delete,
                                         set_id=ids.get(set_name))
        self.nft.write(requests)
        # What we wrote is now the table; remember it under the generation it created.
        want = plan.want if plan.want is not None else self.collapse(desired.remote_subnets)
        self._cache = (self.nft.generation(), skeleton(desired)[1], LiveFirewall(True, want))
        return 1
