"""Our nftables table: created in one transaction, elements changed without a rebuild, a broken
skeleton rebuilt atomically, foreign tables never touched; the identity SNAT chain exactly while
another table has a postrouting nat chain; a node programmed by an older agent (mark chains,
fwmark rules) upgraded in one apply. Oracles: `nft -j list`, `ip -j rule`."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import run
from dp_states import gateway, member

from raven.desired import WireGuardPeer

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
    # A member's mark chains, and, as the foreign `ip nat` postrouting chain could masquerade,
    # the identity SNAT chain.
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


def chain_names(node) -> set[str]:
    return {o["chain"]["name"] for o in node.nft("list", "table", "inet", "raven") if "chain" in o}


def test_identity_snat_chain_follows_the_other_tables_nat_chains(node) -> None:
    dp = node.dataplane()
    state = member(1, gateway=3)
    dp.apply(state)
    marks = {"prerouting", "output"}  # a member's mark chains, there in every case
    # Nothing else on the node: no NAT chain of ours (it alone would turn conntrack on).
    assert chain_names(node) == marks and elements(node) == {"10.2.0.0/16"}
    assert dp.apply(state).writes == 0

    # A filter chain, or a nat chain on another hook (DNAT), cannot rewrite a source.
    run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input=(
        "table inet filter { chain input { type filter hook input priority 0; }; }\n"
        "table ip kube { chain pre { type nat hook prerouting priority dstnat; }; }\n"))
    assert dp.observe().drift == ()
    assert dp.apply(state).writes == 0 and chain_names(node) == marks

    # kube-proxy (iptables-nft) makes its postrouting nat chain: the next apply adds ours.
    run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input=(
        "table ip nat { chain POSTROUTING { type nat hook postrouting priority srcnat; }; }\n"))
    (line,) = dp.observe().drift
    assert "identity SNAT (could masquerade: ip nat POSTROUTING)" in line
    result = dp.apply(state)
    assert result.writes == 1 and result.changes == (line,)
    assert chain_names(node) == marks | {"postrouting"} and elements(node) == {"10.2.0.0/16"}
    assert dp.apply(state).writes == 0

    # It goes again: so does ours.
    node.exec("nft", "delete", "table", "ip", "nat")
    result = dp.apply(state)
    assert result.writes == 1 and "no identity SNAT" in result.changes[0]
    assert chain_names(node) == marks and elements(node) == {"10.2.0.0/16"}
    assert dp.apply(state).writes == 0
    dp.cleanup()
    assert ("inet", "raven") not in node.nft_tables()
    assert ("inet", "filter") in node.nft_tables()


# What agents before the selector-less rule left on a node (docs/dataplane.md, upgrade).
OLD_TABLE = """
table inet raven {
  set remote4 { type ipv4_addr; flags interval; elements = { 10.2.0.0/16, 10.9.0.0/16 } }
  set remote6 { type ipv6_addr; flags interval; }
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    ip daddr @remote4 meta mark set meta mark & 0xffffffbf | 0x40 comment "raven:0123456789abcdef"
    ip saddr @remote4 meta mark set meta mark & 0xffffffbf | 0x40 comment "raven:0123456789abcdef"
  }
  chain output {
    type route hook output priority mangle; policy accept;
    ip daddr @remote4 meta mark set meta mark & 0xffffffbf | 0x40 comment "raven:0123456789abcdef"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat - 10; policy accept;
    ip daddr @remote4 snat ip to ip saddr comment "raven:0123456789abcdef"
    ip saddr @remote4 snat ip to ip saddr comment "raven:0123456789abcdef"
  }
}
"""


@pytest.mark.parametrize("role", ["member", "gateway"])
def test_a_node_of_an_older_agent_is_upgraded_in_one_apply(node, role) -> None:
    table = 9027 if role == "member" else 9028
    run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input=OLD_TABLE)
    for family in ("-4", "-6"):
        node.ip(family, "rule", "add", "priority", "100", "fwmark", "0x40/0x40", "lookup",
                str(table), "proto", "82")
    # Something else's marked rule at another priority looking up another table: not ours.
    node.ip("rule", "add", "priority", "100", "fwmark", "0x40/0x40", "lookup", "100")
    dp = node.dataplane()
    state = member(1, gateway=3, marked=False) if role == "member" else gateway(
        None, members=(), peers=(
        WireGuardPeer(public_key="B" * 43 + "=", endpoint="198.51.100.2:4500",
                      allowed_ips=("10.2.0.0/16",)),))
    result = dp.apply(state)
    assert result.skipped == (), result
    # The IPv6 rule goes (this plan routes no IPv6); the IPv4 rule loses its mark.
    assert f"rule del -6 fwmark 0x40/0x40 lookup {table} priority 100" in result.changes
    ours = [(r["priority"], r.get("fwmark")) for r in node.rules()
            if r.get("table") == str(table)]
    assert ours == [(100, None)]
    assert [r for r in node.ip_json("-6", "rule", "show") if r.get("table") == str(table)] == []
    assert [r.get("fwmark") for r in node.rules() if r.get("table") == "100"] == ["0x40"]
    # The table lost the SNAT chain (nothing here could masquerade), its mark chains and the
    # stale element; the wanted one stayed.
    assert chain_names(node) == set()
    assert elements(node) == {"10.2.0.0/16"}
    assert dp.apply(state).writes == 0
    removed = dp.cleanup()
    assert f"rule del lookup {table} priority 100" in removed
    assert [r for r in node.rules() if r.get("table") == str(table)] == []
    assert ("inet", "raven") not in node.nft_tables()
