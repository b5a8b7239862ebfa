"""Topology file validation: every rule, table-driven; the shipped topologies; the CLI refusal."""

from __future__ import annotations

import copy
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raven.errors import ValidationError
from raven.lab.plan import plan_from_json, plan_lab, plan_to_json
from raven.lab.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = sorted((ROOT / "test-topologies").glob("*.yaml"))

VALID = {
    "name": "t",
    "tunnel": "wireguard",
    "pools": [
        {"name": "cloud", "gateway": "gw-cloud", "nat": "none", "pods": 1, "nodes": [
            {"name": "c1", "podCIDR": "10.244.0.0/24", "gatewayCandidate": True},
            {"name": "c2", "podCIDR": "10.244.1.0/24"},
        ]},
        {"name": "edge", "nat": "cone", "nodes": [
            {"name": "e1", "podCIDR": "10.244.2.0/24"},
        ]},
    ],
}


def mutate(path: str, value: object) -> dict:
    """Copy of VALID with `path` (dotted, list indexes as numbers) set; DELETE removes it."""
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target: object = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[key]  # type: ignore[index]
    else:
        target[key] = value  # type: ignore[index]
    return doc


DELETE = object()

# (id, document, fragments that must ALL appear in one problem message)
CASES = [
    ("duplicate pool", mutate("pools.1.name", "cloud"), ["pool 'cloud'", "'name'", "duplicate"]),
    ("duplicate node same pool", mutate("pools.0.nodes.1.name", "c1"),
     ["pool 'cloud' node 'c1'", "'name'", "duplicate"]),
    ("duplicate node across pools", mutate("pools.1.nodes.0.name", "c1"),
     ["pool 'edge' node 'c1'", "duplicate", "pool 'cloud' node 'c1'"]),
    ("podCIDR garbage", mutate("pools.0.nodes.0.podCIDR", "10.244.0/xx"),
     ["pool 'cloud' node 'c1'", "'podCIDR'", "not a valid IPv4 or IPv6 network"]),
    ("podCIDR host bits", mutate("pools.0.nodes.0.podCIDR", "10.244.0.1/24"),
     ["node 'c1'", "'podCIDR'", "host bits"]),
    ("podCIDR ipv6 alone is IPv6 single-stack", mutate("pools.0.nodes.0.podCIDR", "fd00::/64"),
     []),
    ("podCIDR too small", mutate("pools.0.nodes.0.podCIDR", "10.244.0.0/31"),
     ["node 'c1'", "'podCIDR'", "too small"]),
    ("podCIDR not a string", mutate("pools.0.nodes.0.podCIDR", 42),
     ["node 'c1'", "'podCIDR'", "must be a string"]),
    ("podCIDR missing", mutate("pools.0.nodes.0.podCIDR", DELETE),
     ["node 'c1'", "'podCIDR' is missing"]),
    ("podCIDR overlap in pool", mutate("pools.0.nodes.1.podCIDR", "10.244.0.128/25"),
     ["pool 'cloud' node 'c2'", "'podCIDR'", "overlaps", "node 'c1'"]),
    ("podCIDR overlap across pools", mutate("pools.1.nodes.0.podCIDR", "10.244.0.0/16"),
     ["pool 'edge' node 'e1'", "overlaps"]),
    ("podCIDR loopback", mutate("pools.0.nodes.0.podCIDR", "127.1.0.0/24"),
     ["node 'c1'", "'podCIDR'", "loopback"]),
    ("podCIDR multicast", mutate("pools.0.nodes.0.podCIDR", "224.1.0.0/24"),
     ["node 'c1'", "'podCIDR'", "multicast"]),
    ("podCIDR link-local", mutate("pools.0.nodes.0.podCIDR", "169.254.3.0/24"),
     ["node 'c1'", "'podCIDR'", "link-local"]),
    ("podCIDR in underlay", mutate("pools.0.nodes.0.podCIDR", "198.18.5.0/24"),
     ["node 'c1'", "'podCIDR'", "underlay"]),
    ("podCIDR /30 holds one pod", mutate("pools.0.nodes.0.podCIDR", "10.244.0.0/30"), []),
    ("podCIDR too few addresses",
     {**VALID, "pools": [{**VALID["pools"][0], "pods": 10, "nodes": [
         {"name": "c1", "podCIDR": "10.244.0.0/29"}]}]},
     ["node 'c1'", "'podCIDR'", "room for 5 pods, 10 asked"]),
    ("unknown nat", mutate("pools.1.nat", "full-cone"), ["pool 'edge'", "'nat'", "full-cone",
                                                         "none, cone, symmetric"]),
    ("empty pool", mutate("pools.1.nodes", []), ["pool 'edge'", "no nodes"]),
    ("pool without nodes", mutate("pools.1.nodes", DELETE), ["pool 'edge'", "no nodes"]),
    ("nodes not a list", mutate("pools.1.nodes", {"name": "e1"}),
     ["pool 'edge'", "'nodes'", "must be a list"]),
    ("pods a string", mutate("pools.0.pods", "2"), ["pool 'cloud'", "'pods'", "integer"]),
    ("pods a boolean", mutate("pools.0.pods", True), ["pool 'cloud'", "'pods'", "integer"]),
    ("pods negative", mutate("pools.0.pods", -1), ["pool 'cloud'", "'pods'", "out of range"]),
    ("node pods too many", mutate("pools.0.nodes.0.pods", 1000),
     ["node 'c1'", "'pods'", "out of range"]),
    ("candidate not bool", mutate("pools.0.nodes.0.gatewayCandidate", "yes"),
     ["node 'c1'", "'gatewayCandidate'", "true or false"]),
    ("node name number", mutate("pools.0.nodes.0.name", 7),
     ["pool 'cloud' nodes[0]", "'name'", "must be a string"]),
    ("node name uppercase", mutate("pools.0.nodes.0.name", "Cloud_1"),
     ["pool 'cloud' nodes[0]", "'name'", "lowercase"]),
    ("node name missing", mutate("pools.0.nodes.0.name", DELETE),
     ["pool 'cloud' nodes[0]", "'name' is missing"]),
    ("node name reserved", mutate("pools.0.nodes.0.name", "internet"),
     ["node 'internet'", "reserved"]),
    ("node name router-", mutate("pools.0.nodes.0.name", "router-x"),
     ["node 'router-x'", "reserved"]),
    ("pool name bad", mutate("pools.0.name", "a.b"), ["pools[0]", "'name'", "lowercase"]),
    ("pool not a mapping", mutate("pools.1", "edge"), ["pools[1]", "must be a mapping"]),
    ("node not a mapping", mutate("pools.1.nodes.0", "e1"),
     ["pool 'edge' nodes[0]", "must be a mapping"]),
    ("gateway bad", mutate("pools.0.gateway", "GW"), ["pool 'cloud'", "'gateway'"]),
    ("gateway shared", mutate("pools.1.gateway", "gw-cloud"),
     ["pool 'edge'", "'gateway'", "pool 'cloud'"]),
    ("unknown top key", mutate("poolz", []), ["unknown field 'poolz'"]),
    ("unknown pool key", mutate("pools.0.natType", "cone"), ["pool 'cloud'",
                                                             "unknown field 'natType'"]),
    ("unknown node key", mutate("pools.0.nodes.0.podCidr", "10.9.0.0/24"),
     ["pool 'cloud' node 'c1'", "unknown field 'podCidr'"]),
    ("pools missing", mutate("pools", DELETE), ["'pools' is missing"]),
    ("pools empty", mutate("pools", []), ["'pools' is empty"]),
    ("pools not a list", mutate("pools", {"cloud": {}}), ["'pools'", "must be a list"]),
    ("tunnel unknown", mutate("tunnel", "ipsec"), ["'tunnel'", "ipsec"]),
    ("lab name bad", mutate("name", "My Lab"), ["'name'", "lowercase"]),
    ("lab name too long", mutate("name", "a" * 30), ["'name'", "at most"]),
    ("mtu string", mutate("underlayMTU", "1500"), ["'underlayMTU'", "integer"]),
    ("pool mtu low", mutate("pools.0.underlayMTU", 500), ["pool 'cloud'", "'underlayMTU'",
                                                           "out of range"]),
]


@pytest.mark.parametrize(("doc", "fragments"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_rule_names_pool_node_and_field(doc: dict, fragments: list[str]) -> None:
    if not fragments:
        parse_topology(doc)  # valid edge case
        return
    with pytest.raises(ValidationError) as info:
        parse_topology(doc)
    problems = info.value.problems
    assert any(all(f in p for f in fragments) for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    doc = copy.deepcopy(VALID)
    doc["pools"][0]["nat"] = "weird"
    doc["pools"][0]["nodes"][1]["podCIDR"] = "10.244.0.0/24"  # overlaps c1
    doc["pools"][1]["nodes"][0]["gatewayCandidate"] = 1
    doc["pools"].append({"name": "empty", "nodes": []})
    doc["extra"] = True
    with pytest.raises(ValidationError) as info:
        parse_topology(doc)
    text = str(info.value)
    for fragment in ("pool 'cloud': field 'nat'", "node 'c2': field 'podCIDR'",
                     "node 'e1': field 'gatewayCandidate'", "pool 'empty'", "'extra'"):
        assert fragment in text, text
    assert len(info.value.problems) == 5


def test_top_level_must_be_a_mapping() -> None:
    for doc in (None, [], "pools"):
        with pytest.raises(ValidationError, match="top level must be a mapping"):
            parse_topology(doc)


def test_defaults() -> None:
    topo = parse_topology({"pools": [{"name": "p", "nodes": [
        {"name": "n", "podCIDR": "10.1.0.0/24"}]}]})
    pool = topo.pools[0]
    assert (topo.name, topo.tunnel, pool.gateway, pool.nat, pool.underlay_mtu) == (
        None, "wireguard", "gw-p", "none", 1500)
    assert pool.nodes[0].pods == 1 and pool.nodes[0].gateway_candidate is False


def test_per_node_pods_override_pool() -> None:
    doc = mutate("pools.0.nodes.0.pods", 3)
    topo = parse_topology(doc)
    assert [n.pods for n in topo.pools[0].nodes] == [3, 1]


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(ValidationError, match="malformed YAML"):
        load_topology(bad)


@pytest.mark.parametrize("path", TOPOLOGIES, ids=[p.name for p in TOPOLOGIES])
def test_shipped_topologies_are_valid(path: Path) -> None:
    topo = load_topology(path)
    assert topo.name == path.stem
    cloud = topo.pools[0]
    assert cloud.nat == "none" and len(cloud.nodes) == 2
    assert cloud.nodes[0].gateway_candidate and not cloud.nodes[1].gateway_candidate


def test_shipped_topologies_have_the_promised_shapes() -> None:
    topos = {p.stem: load_topology(p) for p in TOPOLOGIES}
    assert {"single-pool", "two-pools", "three-pools", "five-pools"} <= set(topos)
    assert [p.nat for p in topos["two-pools"].pools] == ["none", "cone"]
    assert [p.nat for p in topos["three-pools"].pools] == ["none", "cone", "symmetric"]
    assert sum(len(p.nodes) for p in topos["five-pools"].pools) >= 16
    for name in ("two-pools", "three-pools", "five-pools"):
        assert any(sum(n.gateway_candidate for n in p.nodes) >= 2 for p in topos[name].pools)


UNDERLAY = [ipaddress.ip_network(n) for n in
            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15",
             "2001:db8::/32")]


@pytest.mark.parametrize("path", TOPOLOGIES, ids=[p.name for p in TOPOLOGIES])
def test_plan_uses_only_allowed_addresses_and_short_names(path: Path) -> None:
    plan = plan_lab(load_topology(path), "rvt-lab-abcdef")
    cp = plan.control_plane
    addresses = [cp.ip, cp.gateway, *(a for a in (cp.ip6, cp.gateway6) if a)]
    ifnames = ["br0", "wan", "cp", "eth0"]
    for pool in plan.pools:
        addresses += [pool.router_lan_ip, pool.wan_ip, pool.internet_wan_ip]
        addresses += [a for a in (pool.router_lan_ip6, pool.wan_ip6, pool.internet_wan_ip6) if a]
        ifnames.append(pool.internet_port)
        for node in pool.nodes:
            addresses += list(node.underlay_ips())
            ifnames.append(node.router_port)
            ifnames += [p.node_ifname for p in node.pods]
            for pod in node.pods:
                assert pod.ip == pod.addresses()[0]
                for ip, cidr in zip(pod.addresses(), node.cidrs(), strict=True):
                    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)
    for a in addresses:
        assert any(ipaddress.ip_address(a) in net for net in UNDERLAY), a
    underlay = [a for _, n in plan.nodes() for a in n.underlay_ips()]
    underlay += list(dict.fromkeys(a for a in (cp.ip, cp.ip6) if a))
    assert len(set(underlay)) == len(underlay)
    assert all(len(n) <= 15 for n in ifnames)
    assert all(n.startswith("rvt-lab-abcdef.") for n in plan.netns_names())
    assert len(set(plan.netns_names())) == len(plan.netns_names())
    assert plan_from_json(plan_to_json(plan)) == plan


def test_control_plane_sits_on_the_internet_without_a_public_pool() -> None:
    doc = mutate("pools.0.nat", "cone")
    doc["pools"][1]["nat"] = "symmetric"
    plan = plan_lab(parse_topology(doc), "x")
    assert plan.control_plane.pool is None
    assert plan.control_plane.ip == "192.0.2.2"
    assert plan_lab(parse_topology(VALID), "x").control_plane.pool == "cloud"


def test_cli_refuses_an_invalid_file_without_traceback(tmp_path: Path) -> None:
    doc = mutate("pools.1.nat", "bogus")
    doc["pools"][0]["nodes"][1]["name"] = "c1"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "raven.cli", "lab", "up", str(path),
                             "--name", "rvt-lab-never"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "pool 'edge': field 'nat'" in result.stderr
    assert "pool 'cloud' node 'c1': field 'name'" in result.stderr
    assert "nothing was created" in result.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "rvt-lab-never" not in netns
    assert not Path("/run/raven-lab/rvt-lab-never").exists()


def test_lab_name_defaults_to_the_field_then_the_file_name(tmp_path: Path) -> None:
    from raven.lab.build import default_lab_name

    named = parse_topology(VALID)
    assert default_lab_name(named, tmp_path / "other.yaml") == "t"
    unnamed = parse_topology({k: v for k, v in VALID.items() if k != "name"})
    assert default_lab_name(unnamed, tmp_path / "edge-lab.yaml") == "edge-lab"
    assert default_lab_name(unnamed, tmp_path / "Not Valid.yaml") is None


def test_a_topology_file_that_never_ends_is_a_clear_error(tmp_path: Path) -> None:
    # /dev/zero stands for any runaway file: it is read up to safeyaml.MAX_FILE_BYTES only.
    from raven.errors import ValidationError
    from raven.lab.topology import load_topology

    endless = tmp_path / "endless.yaml"
    endless.symlink_to("/dev/zero")
    with pytest.raises(ValidationError, match="larger than 64 MiB"):
        load_topology(endless)
