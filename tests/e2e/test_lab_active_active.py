"""Active-active gateways on test-topologies/active-active.yaml (docs/gateway.md §3b): pool `site`
(behind a cone NAT) has two active gateways (tunnelConfig.Replicas 2) and three members, pool
`hq` is public. Read from the kernels (raven.lab.gateway_load: `ip -j route`, `wg show`), never from
the agents: every site node sends through one of the two gateways and both carry a share;
hq's gateway sends each site subnet to the gateway that carries it (the return path is the
path); under an all-pairs iperf3 load each pair's bytes cross the WireGuard device of its
gateway and not the other's. Then one gateway is powered off (`raven lab gateway-fail`):
every pair still answers, only its share moved, and it takes back exactly that share when
it returns. The second active gateway powered off, then blackholed (alive, heartbeating):
each is one GatewayFailover event (power-off, probe loss) and the status follows the pool.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from overlay_support import overlay_lab, raven
from test_failover import events

from raven import shards
from raven.lab import cluster, faults
from raven.lab import gateway_load as gl
from raven.lab.netns import icmp_probe_many
from raven.lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.slow]

POOL, REMOTE, GATEWAYS = "site", "hq", ("site-1", "site-2")


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    with overlay_lab("active-active.yaml", area="aa") as plan:
        yield plan


def subnet_of(plan: LabPlan, node: str) -> str:
    return next(str(n.pod_cidr) for _, n in plan.nodes() if n.name == node)


def sharded(plan: LabPlan, alive: tuple[str, ...], timeout: float = 90.0) -> dict[str, str]:
    """Wait until every live site node sends through a live gateway, both ways agree (hq's
    gateway allows each site node's subnet on the peer of the gateway that node sends
    through, and on no other) and the split is the rendezvous split over `alive`."""
    nodes = [n.name for n in plan.pools[1].nodes if n.name in alive or n.name not in GATEWAYS]
    expected = shards.assign(nodes, alive)
    deadline = time.monotonic() + timeout
    while True:
        # Read each time: a gateway that was just powered on has no device (no key) yet.
        keys = {g: gl.public_key(plan.name, g) for g in alive}
        carrier = {n: g for n, g in gl.gateway_of_nodes(plan, POOL).items() if n in nodes}
        allowed = gl.peer_subnets(plan.name, "hq-1")
        back = {n: [g for g, k in keys.items()
                    if k and subnet_of(plan, n) in allowed.get(k, set())]
                for n in nodes}
        if carrier == expected and all(back[n] == [carrier[n]] for n in nodes):
            return carrier
        assert time.monotonic() < deadline, (
            f"site nodes send via {carrier} (expected {expected}); hq-1 sends them back via "
            f"{back}")
        time.sleep(0.5)


def all_answer(plan: LabPlan, skip: tuple[str, ...], timeout: float = 30.0) -> None:
    """Every site pod (but those on `skip`) and every hq pod answer each other."""
    site = [p for n in plan.pools[1].nodes if n.name not in skip for p in n.pods]
    hq = [p for n in plan.pools[0].nodes for p in n.pods]
    probes = {**{p.netns: [q.ip for q in hq] for p in site},
              **{q.netns: [p.ip for p in site] for q in hq}}
    deadline = time.monotonic() + timeout
    while True:
        results = icmp_probe_many(probes)
        failed = sorted((src, dst) for src, answers in results.items()
                        for dst, rtt in answers.items() if rtt is None)
        if not failed:
            return
        assert time.monotonic() < deadline, f"no answer: {failed}"


def assert_each_pair_on_its_gateway(loads: list[gl.PairLoad], carrier: dict[str, str]) -> None:
    assert loads
    for load in loads:
        gw = carrier[load.src_node]
        assert load.bytes > 0
        # WireGuard counts the ciphertext of the pair's packets (and their ACKs) and the
        # probes: never less than iperf3's payload on the carrying gateway ...
        assert load.moved[gw] >= load.bytes, load
        # ... and the other gateway moved less than the pair (probes only, no payload).
        for other, moved in load.moved.items():
            if other != gw:
                assert moved < load.bytes, load


def test_active_active_spreads_and_a_failure_moves_only_its_share(lab: LabPlan) -> None:
    assert sorted(cluster.active_gateways(lab.name)["gw-site"]) == list(GATEWAYS)
    carrier = sharded(lab, GATEWAYS)
    assert set(carrier.values()) == set(GATEWAYS)
    assert any(n not in GATEWAYS for n in carrier if carrier[n] == "site-1")
    assert any(n not in GATEWAYS for n in carrier if carrier[n] == "site-2")
    all_answer(lab, ())
    loads = gl.all_pairs_load(lab, POOL, REMOTE, list(GATEWAYS))
    assert_each_pair_on_its_gateway(loads, carrier)
    assert all(gl.split(loads, carrier).get(g, 0) > 0 for g in GATEWAYS)

    failed = faults.gateway_fail(lab.name, POOL)
    survivor = next(g for g in GATEWAYS if g != failed)
    try:
        all_answer(lab, (failed,))
        after = sharded(lab, (survivor,))
        assert set(after.values()) == {survivor}
        moved = sorted(n for n in after if carrier[n] != after[n])
        assert moved == sorted(n for n, g in carrier.items() if g == failed and n != failed)
        loads = gl.all_pairs_load(lab, POOL, REMOTE, list(GATEWAYS), skip=(failed,))
        assert_each_pair_on_its_gateway(loads, after)
    finally:
        faults.node_up(lab.name, failed)
    # Back: it takes exactly its share again.
    assert sharded(lab, GATEWAYS) == carrier
    all_answer(lab, ())


def failover_events(plan: LabPlan, before: dict[str, str], node: str) -> list[str]:
    """Messages of the GatewayFailover events recorded since `before` that name `node` as the
    gateway that failed (read with kubectl: the Events the API server stored)."""
    return [m for n, m in events(plan, "GatewayFailover").items()
            if n not in before and f"active gateway {node} -> " in m]


def test_power_off_of_the_second_active_gateway_is_one_power_off_event(lab: LabPlan) -> None:
    """Issue 12, item 7, for active-active pools: the failover of an active gateway that is not
    the first one (the single-name votes keep naming the first; the set votes drop it) is one
    GatewayFailover event naming the Gateway, the node, the survivor that took its share and
    the cause "power-off"; its return moves nothing and reports nothing. The fault is
    `raven lab gateway-fail --index 1`'s (node_down of activeEndpoints[1]). Oracle:
    `kubectl get events -o json`."""
    sharded(lab, GATEWAYS)
    first, second = cluster.active_gateways(lab.name)["gw-site"]
    before = events(lab, "GatewayFailover")
    assert faults.gateway_fail(lab.name, POOL, index=1) == second
    try:
        all_answer(lab, (second,))
        deadline = time.monotonic() + 120  # power-off is settled by its stale heartbeat
        while not failover_events(lab, before, second):
            assert time.monotonic() < deadline, (
                f"no GatewayFailover event for {second}; status "
                f"{cluster.active_gateways(lab.name)['gw-site']}")
            time.sleep(1.0)
        assert cluster.active_gateways(lab.name)["gw-site"] == [first]
    finally:
        faults.node_up(lab.name, second)
    assert sharded(lab, GATEWAYS)  # back as it was (takes its share again)
    assert failover_events(lab, before, second) == [
        f"Gateway gw-site: active gateway {second} -> {first}, cause: power-off"]


def status_is(plan: LabPlan, want: list[str], timeout: float = 120.0) -> None:
    """Wait until the Gateway status names exactly `want` as its active gateways (kubectl)."""
    deadline = time.monotonic() + timeout
    while (got := cluster.active_gateways(plan.name)["gw-site"]) != want:
        assert time.monotonic() < deadline, f"gw-site status names {got}, expected {want}"
        time.sleep(0.5)


def lab_verb(*args: str) -> None:
    result = raven("lab", *args)
    assert result.returncode == 0, result.stderr


def test_blackhole_of_the_second_active_gateway_is_one_probe_loss_event(lab: LabPlan) -> None:
    """Issue 12, item 7, for a non-first active gateway that stays alive and heartbeats but
    whose data path is broken (`raven lab blackhole`): its members' cross-pool pairs answer
    again through the first gateway, the Gateway status stops naming it (the pool's agents
    vote for their whole active set, `raven.openyurt.io/pool-gateways`) and exactly one
    GatewayFailover event says why: probe loss. Unblackholed, the pool takes it back (its
    share and the status) with no further event. Oracles: the nodes' routes and hq-1's
    WireGuard peers (`sharded`), pings between pods, `kubectl get gateway` / `get events`."""
    carrier = sharded(lab, GATEWAYS)
    first, second = cluster.active_gateways(lab.name)["gw-site"]
    share = sorted(n for n, g in carrier.items() if g == second and n != second)
    assert share, f"{second} carries no member: {carrier}"
    before = events(lab, "GatewayFailover")
    lab_verb("blackhole", lab.name, second)
    try:
        all_answer(lab, (second,))  # its members' pods reach hq (and back) through `first`
        moved = sharded(lab, (first,))
        assert all(moved[n] == first for n in share)
        status_is(lab, [first])
        deadline = time.monotonic() + 120  # the cause settles once it renewed after the move
        while not failover_events(lab, before, second):
            assert time.monotonic() < deadline, f"no GatewayFailover event for {second}"
            time.sleep(1.0)
    finally:
        lab_verb("unblackhole", lab.name, second)
    assert sharded(lab, GATEWAYS) == carrier  # it takes exactly its share back
    status_is(lab, [first, second])
    all_answer(lab, ())
    # Nothing more to report: wait out a heartbeat timeout and two controller resyncs, in
    # which a second move (or a late event for this one) would have shown.
    settings = cluster.load_settings(lab.name)
    time.sleep(settings.heartbeat_timeout + 2 * settings.controller_resync)
    fresh = [m for n, m in events(lab, "GatewayFailover").items() if n not in before]
    assert fresh == [f"Gateway gw-site: active gateway {second} -> {first}, cause: probe loss"]
    assert cluster.active_gateways(lab.name)["gw-site"] == [first, second]
