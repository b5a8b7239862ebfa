"""Active-active gateways (raven.shards and the planner's use of it): every member has exactly
one gateway, a failure moves only the failed gateway's share, and both directions of every
cross-pool pair take the same two gateways."""

from __future__ import annotations

import base64
import ipaddress
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raven import failover, shards, standby
from raven.desired import NodeState, Role
from raven.errors import ValidationError
from raven.failover import Verdict
from raven.lab import cluster
from raven.lab.plan import plan_from_json, plan_lab, plan_to_json
from raven.lab.topology import load_topology, load_topology_text
from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, NodeInfo
from raven.topology import plan_node, vtep_for

names = st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=6)


@given(st.sets(names, max_size=40), st.sets(names, min_size=1, max_size=6))
def test_every_member_has_exactly_one_active_gateway(members: set[str], gws: set[str]) -> None:
    out = shards.assign(members, gws)
    assert set(out) == members
    assert set(out.values()) <= gws
    for m in members & gws:
        assert out[m] == m  # a gateway carries itself
    assert shards.assign(sorted(members, reverse=True), sorted(gws, reverse=True)) == out
    carried = shards.shares(out)
    assert sorted(m for ms in carried.values() for m in ms) == sorted(members)


@given(st.sets(names, max_size=40), st.sets(names, min_size=2, max_size=6), st.data())
def test_a_failure_moves_only_the_failed_gateways_share(members: set[str], gws: set[str],
                                                        data: st.DataObject) -> None:
    members -= gws  # the failed gateway itself is no member that could move
    failed = data.draw(st.sampled_from(sorted(gws)))
    before = shards.assign(members, gws)
    after = shards.assign(members, gws - {failed})
    for m in members:
        if before[m] != failed:
            assert after[m] == before[m], f"{m} moved off the healthy {before[m]}"
        else:
            assert after[m] != failed
    # and back: the recovered gateway takes exactly its share again, from nobody else
    assert shards.assign(members, gws) == before


def test_the_share_is_spread() -> None:
    out = shards.assign([f"node-{i}" for i in range(1000)], ["gw-a", "gw-b"])
    counts = shards.shares(out)
    assert min(len(v) for v in counts.values()) > 400  # rendezvous hashing is balanced


# --- the planner ------------------------------------------------------------------------------

def key(name: str) -> str:
    return base64.b64encode(name.encode().ljust(32, b".")).decode()


def ep(name: str, nat: bool, public_ip: str = "") -> Endpoint:
    return Endpoint(name, port=4500, under_nat=nat, public_ip=public_ip,
                    config=FrozenMap({"public-key": key(name)}))


def pool(name: str, nodes: list[tuple[str, str, str]], active: list[str], nat: bool,
         public: dict[str, str], created: str) -> Gateway:
    eps = [ep(c, nat, public.get(c, "")) for c in active]
    return Gateway(
        name, spec=GatewaySpec(endpoints=tuple(Endpoint(c, under_nat=nat) for c in active)),
        status=GatewayStatus(nodes=tuple(NodeInfo(n, ip, (s,)) for n, ip, s in nodes),
                             active_endpoints=tuple(eps)),
        metadata=FrozenMap({"name": name, "creationTimestamp": created}))


def fleet() -> list[Gateway]:
    """Two public active-active pools, and two NAT'd pools that meet through the relay (aa)."""
    aa = [(f"a{i}", f"192.0.2.{i}", f"10.1.{i}.0/24") for i in range(1, 9)]
    rem = [(f"r{i}", f"203.0.113.{i}", f"10.2.{i}.0/24") for i in range(1, 6)]
    return [
        pool("aa", aa, ["a1", "a2"], False, {"a1": "192.0.2.1", "a2": "192.0.2.2"},
             "2024-01-01T00:00:00Z"),
        pool("rem", rem, ["r1", "r2"], False, {"r1": "203.0.113.1", "r2": "203.0.113.2"},
             "2024-01-02T00:00:00Z"),
        pool("n1", [("n1-1", "198.51.100.1", "10.3.1.0/24"), ("n1-2", "198.51.100.2",
                                                              "10.3.2.0/24")],
             ["n1-1"], True, {}, "2024-01-03T00:00:00Z"),
        pool("n2", [("n2-1", "198.18.0.1", "10.4.1.0/24")], ["n2-1"], True, {},
             "2024-01-04T00:00:00Z"),
    ]


def members(gws: list[Gateway]) -> dict[str, tuple[str, str, str]]:
    """node -> (pool, underlay ip, pod subnet)."""
    return {n.node_name: (g.name, n.private_ip, n.subnets[0]) for g in gws for n in g.status.nodes}


def plans(gws: list[Gateway]) -> dict[str, NodeState]:
    return {n: plan_node(gws, n) for n in members(gws)}


def next_hop(state: NodeState, dst: str) -> str:
    """Where a member's route for `dst` goes: the node whose VTEP is its gateway."""
    route = next(r for r in state.routes if r.dst == dst)
    return route.gateway or ""


def peer_for(state: NodeState, dst: str) -> str | None:
    """The public key of the WireGuard peer allowing `dst`, the way WireGuard picks it."""
    assert state.wireguard is not None
    hits = [p.public_key for p in state.wireguard.peers
            if ipaddress.ip_network(dst).subnet_of(_net(p.allowed_ips, dst))]
    assert len(hits) <= 1, f"{dst} allowed on {len(hits)} peers"
    return hits[0] if hits else None


def _net(allowed: tuple[str, ...], dst: str) -> ipaddress.IPv4Network:
    for a in allowed:
        if ipaddress.ip_network(dst).subnet_of(ipaddress.ip_network(a)):  # type: ignore[arg-type]
            return ipaddress.ip_network(a)  # type: ignore[return-value]
    return ipaddress.ip_network("0.0.0.0/32")  # type: ignore[return-value]


def gateway_of(state: NodeState, nodes: dict[str, tuple[str, str, str]]) -> str:
    """The node a plan sends cross-pool traffic through: itself when it is an active gateway,
    else the node whose VTEP its routes name (every route names the same one)."""
    if state.role == Role.ACTIVE_GATEWAY:
        return state.node
    hops = {r.gateway for r in state.routes}
    assert len(hops) == 1, hops
    by_vtep = {vtep_for(ip)[0]: n for n, (_, ip, _) in nodes.items()}
    return by_vtep[hops.pop() or ""]


def test_both_active_gateways_carry_and_members_follow_their_shard() -> None:
    gws = fleet()
    nodes = members(gws)
    out = plans(gws)
    assert out["a1"].role == out["a2"].role == Role.ACTIVE_GATEWAY
    assert out["r1"].role == out["r2"].role == Role.ACTIVE_GATEWAY
    expected = shards.assign([n for n, v in nodes.items() if v[0] == "aa"], ["a1", "a2"])
    assert set(expected.values()) == {"a1", "a2"}  # this fleet spreads over both
    for node, gw in expected.items():
        assert gateway_of(out[node], nodes) == gw
        state = out[node]
        if state.role == Role.MEMBER:
            assert state.fdb[0].dst == nodes[gw][1]


def test_every_pair_takes_the_same_two_gateways_both_ways() -> None:
    """Member x in pool P sends via gw(x); gw(x)'s peer for y's subnet is gw(y); gw(y)'s peer
    for x's subnet is gw(x): the return enters P where x's traffic left it."""
    gws = fleet()
    nodes = members(gws)
    out = plans(gws)
    pairs = 0
    for x, y in itertools.permutations(nodes, 2):
        px, py = nodes[x][0], nodes[y][0]
        if px == py or {px, py} == {"n1", "n2"}:
            continue  # same pool; NAT'd pair: the relay (next test)
        gx, gy = gateway_of(out[x], nodes), gateway_of(out[y], nodes)
        assert peer_for(out[gx], nodes[y][2]) == key(gy), (x, y)
        assert peer_for(out[gy], nodes[x][2]) == key(gx), (y, x)
        pairs += 1
    assert pairs > 100


def test_undialable_pools_relay_through_the_first_active_gateway_of_the_relay() -> None:
    gws = fleet()
    nodes = members(gws)
    out = plans(gws)
    # n1 -> n2 goes to a1 (the relay's first active endpoint), which forwards to n2-1
    assert peer_for(out["n1-1"], "10.4.1.0/24") == key("a1")
    assert peer_for(out["n2-1"], "10.3.2.0/24") == key("a1")
    assert peer_for(out["a1"], "10.4.1.0/24") == key("n2-1")
    assert peer_for(out["a1"], "10.3.2.0/24") == key("n1-1")
    # the relay pool's own members are still sharded for NAT'd pools
    for node, (p, _, subnet) in nodes.items():
        if p == "aa":
            gw = gateway_of(out[node], nodes)
            assert peer_for(out["n1-1"], subnet) == key(gw)
            assert peer_for(out[gw], "10.3.1.0/24") == key("n1-1")


def test_a_down_active_gateway_moves_only_its_share() -> None:
    """a2 seen DOWN by the data-path probes of aa's members and of rem's gateways: its share
    goes to a1, nothing else moves, and remote peers follow with the same rule."""
    gws = fleet()
    nodes = members(gws)
    before = plans(gws)
    verdicts = {("aa", "a2"): Verdict.DOWN, ("aa", "a1"): Verdict.UP}
    after: dict[str, NodeState] = {}
    for node in nodes:
        seen, _ = failover.effective_gateways(gws, verdicts, node)
        after[node] = standby.warm(plan_node(seen, node), seen, node)
    moved = []
    for node, (p, _, subnet) in nodes.items():
        if p != "aa" or node == "a2":
            continue
        old, new = gateway_of(before[node], nodes), gateway_of(after[node], nodes)
        assert new == "a1"
        if old != new:
            moved.append(node)
            assert old == "a2"
        for remote in ("r1", "r2"):
            assert peer_for(after[remote], subnet) == key("a1")
    assert moved == [n for n, g in shards.assign(
        [n for n, v in nodes.items() if v[0] == "aa"], ["a1", "a2"]).items()
        if g == "a2" and n != "a2"]
    assert moved  # the fleet gives a2 a share
    # rem's own sharding is untouched
    for node, (p, _, _) in nodes.items():
        if p == "rem":
            assert gateway_of(after[node], nodes) == gateway_of(before[node], nodes)


def test_a_second_active_endpoint_without_a_key_carries_nothing_yet() -> None:
    gws = fleet()
    aa = gws[0]
    eps = (aa.status.active_endpoints[0], Endpoint("a2", port=4500, public_ip="192.0.2.2"))
    gws[0] = Gateway(aa.name, spec=aa.spec, metadata=aa.metadata,
                     status=GatewayStatus(nodes=aa.status.nodes, active_endpoints=eps))
    out = plans(gws)
    nodes = members(gws)
    for node, (p, _, _) in nodes.items():
        if p == "aa" and node != "a1":
            assert gateway_of(out[node], nodes) == "a1"
    assert any("standby" in n for n in out["a3"].notes)


# --- the lab's tunnelReplicas ---------------------------------------------------------------

def test_lab_pool_tunnel_replicas_reach_the_gateway_object() -> None:
    root = Path(__file__).resolve().parents[2]
    topo = load_topology(root / "test-topologies" / "active-active.yaml")
    plan = plan_lab(topo, "rvt-lab-abcdef")
    site = next(p for p in plan_from_json(plan_to_json(plan)).pools if p.name == "site")
    assert site.tunnel_replicas == 2
    assert cluster.gateway_object(site)["spec"]["tunnelConfig"] == {"Replicas": 2}
    assert sum(n.gateway_candidate for n in site.nodes) >= 2
    with pytest.raises(ValidationError, match="pool 'p': field 'tunnelReplicas': 0 is not an "
                                              "integer from 1 to 16"):
        load_topology_text("pools: [{name: p, tunnelReplicas: 0, nodes: "
                           "[{name: n1, podCIDR: 10.244.0.0/24}]}]")
