"""Our nftables table: created in one transaction, elements changed without a rebuild, a broken
skeleton rebuilt atomically, foreign tables never touched. Oracle: `nft -j list`."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import run
from dp_states import member

pytestmark = pytest.mark.root

FOREIGN = """
table ip nat {
  chain post { type nat hook postrouting priority srcnat; policy accept; masquerade; }
}
table inet filter {
  chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }
}
"""


def elements(node, set_name: str = "remote4") -> set[str]:
    out = set()
    for obj in node.nft("list", "set", "inet", "raven", set_name):
        for elem in obj.get("set", {}).get("elem", []):
            prefix = elem["prefix"]
            out.add(f"{prefix['addr']}/{prefix['len']}")
    return out


def rule_handles(node) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for obj in node.nft("list", "table", "inet", "raven"):
        if "rule" in obj:
            out.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["handle"])
    return out


def foreign_ruleset(node) -> list[dict]:
    """Every object of every table but ours, as nft reports it."""
    out = []
    for obj in node.nft("list", "ruleset"):
        if "metainfo" in obj:
            continue
        body = next(iter(obj.values()))
        table = body["name"] if "table" in obj else body["table"]
        if (body["family"], table) != ("inet", "raven"):
            out.append(obj)
    return out


def test_table_created_updated_incrementally_and_rebuilt_when_broken(node) -> None:
    run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input=FOREIGN)
    foreign_before = foreign_ruleset(node)
    assert len(foreign_before) == 6  # 2 tables, 2 chains, 2 rules
    dp = node.dataplane()
    state = member(1, gateway=3, remote=("10.2.0.0/16", "10.2.5.0/24", "10.3.0.0/24"))
    state = replace(state, firewall=replace(
        state.firewall, remote_subnets=(*state.firewall.remote_subnets, "fd00:2::/64")))
    dp.apply(state)

    # Nested 10.2.5.0/24 is covered by 10.2.0.0/16: interval sets reject overlaps, so it's dropped.
    assert elements(node) == {"10.2.0.0/16", "10.3.0.0/24"}
    assert elements(node, "remote6") == {"fd00:2::/64"}
    chains = {o["chain"]["name"]: o["chain"] for o in node.nft("list", "table", "inet", "raven")
              if "chain" in o}
    assert {n: (c["type"], c["hook"]) for n, c in chains.items()} == {
        "prerouting": ("filter", "prerouting"), "output": ("route", "output"),
        "postrouting": ("nat", "postrouting")}
    assert chains["postrouting"]["prio"] < 100  # before srcnat: our identity SNAT binds first
    handles = rule_handles(node)
    assert {c: len(h) for c, h in handles.items()} == {"prerouting": 4, "output": 2,
                                                      "postrouting": 4}
    assert dp.apply(state).writes == 0

    grown = replace(state, firewall=replace(
        state.firewall, remote_subnets=("10.2.0.0/16", "10.4.0.0/24", "fd00:2::/64")))
    result = dp.apply(grown)
    assert result.writes == 1, result.changes  # one transaction for both set changes
    assert elements(node) == {"10.2.0.0/16", "10.4.0.0/24"}
    assert rule_handles(node) == handles  # elements changed in place: nothing rebuilt
    assert dp.apply(grown).writes == 0

    # Someone deletes one of our rules: the skeleton is rebuilt atomically at the next apply.
    node.exec("nft", "delete", "rule", "inet", "raven", "output", "handle",
              str(handles["output"][0]))
    result = dp.apply(grown)
    assert result.writes == 1 and any("rebuild" in c for c in result.changes)
    assert {c: len(h) for c, h in rule_handles(node).items()} == {
        "prerouting": 4, "output": 2, "postrouting": 4}
    assert elements(node) == {"10.2.0.0/16", "10.4.0.0/24"}

    # Someone deletes an element: restored at the next apply (the ruleset generation moved).
    node.exec("nft", "delete", "element", "inet", "raven", "remote4", "{ 10.4.0.0/24 }")
    assert dp.apply(grown).writes == 1
    assert elements(node) == {"10.2.0.0/16", "10.4.0.0/24"}

    dp.cleanup()
    assert ("inet", "raven") not in node.nft_tables()
    assert foreign_ruleset(node) == foreign_before
