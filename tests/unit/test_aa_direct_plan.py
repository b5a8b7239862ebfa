"""Direct (hole-punched) paths with active-active pools (raven.topology, raven.paths,
raven.shards): a direct peer to an active-active pool takes only the share of the remote
active gateway it is direct with, the other shares stay on the relay, only a pool's first
active gateway takes direct paths, and every packet passes WireGuard's allowed-IPs check at
every hop, both ways, crossing the same gateways (the acceptance bug: mill-a's direct peer to
farm-c held all of farm's subnets and dropped farm-a's share arriving through the relay)."""

from __future__ import annotations

import base64
import ipaddress
import itertools

from test_shards_plan import gateway_of  # the same hop finder (tests/unit on sys.path)

from raven import paths, shards
from raven.desired import NodeState
from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, NodeInfo
from raven.nat_discovery import CONFIG_MAPPED_ENDPOINT
from raven.paths import PathPlan
from raven.topology import plan_node


def key(name: str) -> str:
    return base64.b64encode(name.encode().ljust(32, b".")).decode()


def pool(name: str, nodes: list[str], active: list[str], nat: bool, net: int,
         created: str) -> Gateway:
    infos = tuple(NodeInfo(n, f"192.168.{net}.{i}", (f"10.{net}.{i}.0/24",))
                  for i, n in enumerate(nodes, 1))
    eps = tuple(Endpoint(c, port=4500, under_nat=nat,
                         public_ip="" if nat else f"203.0.113.{net}",
                         config=FrozenMap({"public-key": key(c),
                                           CONFIG_MAPPED_ENDPOINT: f"198.51.{net}.1:4500"}))
                for c in active)
    return Gateway(name, spec=GatewaySpec(endpoints=tuple(Endpoint(c, under_nat=nat)
                                                          for c in active)),
                   status=GatewayStatus(nodes=infos, active_endpoints=eps),
                   metadata=FrozenMap({"name": name, "creationTimestamp": created}))


def fleet(mill_active: list[str]) -> list[Gateway]:
    """The acceptance-replicas shape: public relay `core`, cone `farm` (active-active over
    farm-c and farm-a: farm-c first, as in the lab), cone `mill`."""
    return [
        pool("core", ["core-a", "core-b"], ["core-a"], False, 1, "2024-01-01T00:00:00Z"),
        pool("farm", ["farm-a", "farm-b", "farm-c", "farm-d", "farm-e"], ["farm-c", "farm-a"],
             True, 2, "2024-01-02T00:00:00Z"),
        pool("mill", ["mill-a", "mill-b", "mill-c", "mill-d"], mill_active, True, 3,
             "2024-01-03T00:00:00Z"),
    ]


def direct(pool_name: str, gw: str) -> dict[str, PathPlan]:
    return {pool_name: PathPlan(pool_name, key(gw), None, direct=True)}


def nodes_of(gws: list[Gateway]) -> dict[str, tuple[str, str, str]]:
    """node -> (pool, underlay ip, pod subnet)."""
    return {n.node_name: (g.name, n.private_ip, n.subnets[0]) for g in gws for n in g.status.nodes}


def plans(gws: list[Gateway], punched: dict[str, dict[str, PathPlan]]) -> dict[str, NodeState]:
    """Every node's plan; `punched`: node -> the path plans its path manager hands it."""
    return {n: plan_node(gws, n, paths=punched.get(n)) for n in nodes_of(gws)}


def peer_for(state: NodeState, dst: str) -> str | None:
    """The public key of the WireGuard peer allowing `dst`, as WireGuard picks it (asserts that
    no subnet is on two peers)."""
    assert state.wireguard is not None
    net = ipaddress.ip_network(dst)
    hits = [p.public_key for p in state.wireguard.peers
            if any(net.subnet_of(ipaddress.ip_network(a)) for a in p.allowed_ips  # type: ignore[arg-type]
                   if ipaddress.ip_network(a).version == net.version)]
    assert len(hits) <= 1, f"{dst} allowed on {len(hits)} peers of {state.node}"
    return hits[0] if hits else None


def trace(out: dict[str, NodeState], nodes: dict[str, tuple[str, str, str]], x: str, y: str
          ) -> list[str]:
    """The gateways a packet from pod x to pod y crosses; at every WireGuard hop the receiver
    must accept it (its peer for x's subnet is the sender), as WireGuard checks."""
    by_key = {key(n): n for n in nodes}
    hops = [gateway_of(out[x], nodes)]
    while nodes[hops[-1]][0] != nodes[y][0]:
        assert len(hops) < 4, hops
        nxt = peer_for(out[hops[-1]], nodes[y][2])
        assert nxt is not None, f"{hops[-1]} has no peer for {y} ({x} -> {y})"
        here = by_key[nxt]
        assert peer_for(out[here], nodes[x][2]) == key(hops[-1]), \
            f"{here} drops {x} -> {y} arriving from {hops[-1]} (allowed-IPs check)"
        hops.append(here)
    return hops


def check_every_pair(out: dict[str, NodeState], nodes: dict[str, tuple[str, str, str]]) -> int:
    pairs = 0
    for x, y in itertools.permutations(nodes, 2):
        if nodes[x][0] == nodes[y][0]:
            continue
        there, back = trace(out, nodes, x, y), trace(out, nodes, y, x)
        assert there == back[::-1], (x, y, there, back)
        assert there[-1] == gateway_of(out[y], nodes), (x, y, there)
        pairs += 1
    return pairs


def share(gw: Gateway, gateway: str) -> set[str]:
    assigned = shards.assign([n.node_name for n in gw.status.nodes],
                             [e.node_name for e in gw.status.active_endpoints])
    return {n.subnets[0] for n in gw.status.nodes if assigned[n.node_name] == gateway}


def test_direct_peer_to_an_active_active_pool_takes_only_that_gateways_share() -> None:
    gws = fleet(["mill-a"])
    farm = gws[1]
    assert share(farm, "farm-a") and share(farm, "farm-c")  # the split is real here
    out = plans(gws, {"mill-a": direct("farm", "farm-c"), "farm-c": direct("mill", "mill-a")})
    mill = out["mill-a"]
    assert mill.wireguard is not None
    allowed = {p.public_key: set(p.allowed_ips) for p in mill.wireguard.peers}
    assert share(farm, "farm-c") <= allowed[key("farm-c")]
    assert not share(farm, "farm-a") & allowed[key("farm-c")]
    assert share(farm, "farm-a") <= allowed[key("core-a")]  # farm-a's share stays relayed
    assert any("farm-c's share" in n for n in mill.notes)
    # farm-c (first active) is direct to mill; farm-a keeps mill on the relay
    assert peer_for(out["farm-c"], "10.3.1.0/24") == key("mill-a")
    assert peer_for(out["farm-a"], "10.3.1.0/24") == key("core-a")
    assert check_every_pair(out, nodes_of(gws)) > 30


def test_our_second_active_gateway_ignores_path_plans_and_stays_relayed() -> None:
    gws = fleet(["mill-a"])
    out = plan_node(gws, "farm-a", paths=direct("mill", "mill-a"))
    assert out.wireguard is not None
    assert key("mill-a") not in {p.public_key for p in out.wireguard.peers}
    assert peer_for(out, "10.3.2.0/24") == key("core-a")
    assert any("farm-a's share stays relayed" in n for n in out.notes)


def test_only_the_first_active_gateway_probes_and_the_other_says_why() -> None:
    gws = fleet(["mill-a"])
    first, why_first = paths.candidates(gws, "farm", "farm-c")
    assert [c.pool for c in first] == ["mill"] and not why_first
    other, why = paths.candidates(gws, "farm", "farm-a")
    assert other == []
    assert why and why[0].startswith(
        "mill: active-active pool farm: only its first active gateway farm-c")
    assert [c.pool for c in paths.candidates(gws, "farm")[0]] == ["mill"]  # no node: as before
    # the remote side probes farm's first active endpoint only
    assert [c.public_key for c in paths.candidates(gws, "mill", "mill-a")[0]] == [key("farm-c")]


def test_both_pools_active_active_every_pair_crosses_the_same_gateways() -> None:
    gws = fleet(["mill-b", "mill-a"])
    mill = gws[2]
    assert share(mill, "mill-a") and share(mill, "mill-b")
    nodes = nodes_of(gws)
    relayed = plans(gws, {})
    assert check_every_pair(relayed, nodes) > 30
    out = plans(gws, {"mill-b": direct("farm", "farm-c"), "farm-c": direct("mill", "mill-b"),
                      # handed to second active gateways too: ignored by the planner
                      "mill-a": direct("farm", "farm-c"), "farm-a": direct("mill", "mill-b")})
    assert check_every_pair(out, nodes) > 30
    fc = {p.public_key: set(p.allowed_ips) for p in out["farm-c"].wireguard.peers}  # type: ignore[union-attr]
    assert fc[key("mill-b")] == share(mill, "mill-b")
    assert share(mill, "mill-a") <= fc[key("core-a")]
    # the pairs of the two first gateways' shares go direct: no hop through core-a
    for x in ("farm-b", "farm-c"):
        for y in share(mill, "mill-b"):
            y_node = next(n for n, v in nodes.items() if v[2] == y)
            assert trace(out, nodes, x, y_node) == ["farm-c", "mill-b"]


def test_probing_keeps_every_share_on_the_relay() -> None:
    gws = fleet(["mill-a"])
    probe = {"mill-a": {"farm": PathPlan("farm", key("farm-c"), "198.51.2.1:4500", False)},
             "farm-c": {"mill": PathPlan("mill", key("mill-a"), "198.51.3.1:4500", False)}}
    out = plans(gws, probe)
    peers = {p.public_key: p for p in out["mill-a"].wireguard.peers}  # type: ignore[union-attr]
    assert peers[key("farm-c")].allowed_ips == ()
    assert check_every_pair(out, nodes_of(gws)) > 30
