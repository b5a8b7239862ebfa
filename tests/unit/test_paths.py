"""raven.paths (direct-path state machine), raven.nat_discovery and their hooks in the planner,
the Gateway status and the WireGuard peer diff. Pure: no root, no clock."""

from __future__ import annotations

import json

from raven import nat_discovery as nd
from raven import paths
from raven.dataplane.wireguard.model import LiveDevice, LivePeer, diff_device
from raven.desired import WireGuardPeer
from raven.gateway_status import compute_status, observed_endpoints
from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, Node, NodeInfo
from raven.paths import Candidate, Mode, Path, PathPlan, PathSettings, Sample
from raven.topology import plan_node

S = PathSettings()
KEY_A, KEY_B, KEY_C = "A" * 43 + "=", "B" * 43 + "=", "C" * 43 + "="


# --- nat_discovery ---------------------------------------------------------------------------

def test_annotation_round_trip_drops_bad_entries() -> None:
    text = nd.encode({KEY_B: "198.19.0.14:4500", KEY_A: "198.19.0.10:4500"})
    assert list(json.loads(text)) == [KEY_A, KEY_B]  # sorted: a stable annotation
    assert nd.decode(text) == {KEY_A: "198.19.0.10:4500", KEY_B: "198.19.0.14:4500"}
    bad = json.dumps({KEY_A: "nonsense", KEY_B: "1.2.3.4:99999", KEY_C: "[fd00::1]:4500"})
    assert nd.decode(bad) == {KEY_C: "[fd00::1]:4500"}
    assert nd.decode("not json") == {} and nd.decode("[1]") == {} and nd.decode(None) == {}


def test_mapping_kind_needs_two_observers() -> None:
    assert nd.mapping_kind({"p1": "1.1.1.1:5"}) == nd.UNKNOWN
    assert nd.mapping_kind({"p1": "1.1.1.1:5", "p2": "1.1.1.1:5"}) == nd.INDEPENDENT
    assert nd.mapping_kind({"p1": "1.1.1.1:5", "p2": "1.1.1.1:6"}) == nd.DEPENDENT
    assert nd.endpoint_config({"p2": "1.1.1.1:6", "p1": "1.1.1.1:5"}) == {
        nd.CONFIG_MAPPED_ENDPOINT: "1.1.1.1:5", nd.CONFIG_NAT_MAPPING: nd.DEPENDENT}
    assert nd.endpoint_config({}) == {}


def _node(name: str, pool: str, ip: str, key: str, observed: dict | None = None) -> Node:
    notes = {"raven.openyurt.io/wireguard-public-key": key}
    if observed is not None:
        notes[nd.ANNOTATION_OBSERVED] = nd.encode(observed)
    return Node(name=name, internal_ips=(ip,), pod_cidrs=(f"10.{ip.split('.')[2]}.0.0/24",),
                labels=FrozenMap({"raven.openyurt.io/gateway": pool}),
                annotations=FrozenMap(notes))


def test_controller_copies_what_public_gateways_saw_into_the_nat_endpoint() -> None:
    nodes = {
        "p1": _node("p1", "gw-cloud", "198.18.1.10", KEY_C, {KEY_A: "198.19.0.10:4500"}),
        "p2": _node("p2", "gw-cloud", "198.18.1.11", KEY_B, {KEY_A: "198.19.0.10:4500"}),
        "a1": _node("a1", "gw-a", "198.18.2.10", KEY_A),
    }
    gw = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
          "metadata": {"name": "gw-a"},
          "spec": {"endpoints": [{"nodeName": "a1", "type": "tunnel", "port": 4500,
                                  "underNAT": True}]}}
    status = compute_status(gw, nodes, {"a1": 100.0}, 100.0).status
    config = status["activeEndpoints"][0]["config"]
    assert config[nd.CONFIG_MAPPED_ENDPOINT] == "198.19.0.10:4500"
    assert config[nd.CONFIG_NAT_MAPPING] == nd.INDEPENDENT
    assert observed_endpoints(nodes) == {KEY_A: {"p1": "198.19.0.10:4500",
                                                 "p2": "198.19.0.10:4500"}}
    # A public endpoint never carries NAT facts, whatever the annotations say.
    gw["spec"]["endpoints"][0]["underNAT"] = False
    config = compute_status(gw, nodes, {"a1": 100.0}, 100.0).status["activeEndpoints"][0][
        "config"]
    assert nd.CONFIG_MAPPED_ENDPOINT not in config


# --- the state machine -----------------------------------------------------------------------

CAND = Candidate("gw-b", KEY_B, "198.19.0.14:4500")


def run(path: Path | None, sample: Sample | None, now: float, wall: float) -> Path:
    state = {"gw-b": path} if path else {}
    return paths.step(state, [CAND], {KEY_B: sample} if sample else {}, now, wall, S)["gw-b"]


def test_probe_then_direct_at_the_scheduled_instant() -> None:
    p = run(None, None, now=10, wall=1000)
    assert p.mode == Mode.PROBING and p.endpoint == CAND.endpoint
    assert paths.plans({"gw-b": p}) == {"gw-b": PathPlan("gw-b", KEY_B, CAND.endpoint, False)}
    p = run(p, Sample(0, 0), now=11, wall=1001)
    assert p.mode == Mode.PROBING and p.switch_at is None
    # Handshake at wall 1001.5, seen at 1001.8: the move happens at handshake + settle.
    p = run(p, Sample(1001.5, 92), now=11.8, wall=1001.8)
    assert p.mode == Mode.PROBING and p.switch_at == 11.8 + (1001.5 + S.settle - 1001.8)
    assert paths.next_deadline({"gw-b": p}, 11.8, 0.2) == min(12.0, p.switch_at)
    p = run(p, Sample(1001.5, 92), now=p.switch_at, wall=1002.5)
    assert p.mode == Mode.DIRECT
    assert paths.plans({"gw-b": p}) == {"gw-b": PathPlan("gw-b", KEY_B, None, True)}


def test_a_newer_handshake_moves_the_instant_until_it_is_committed() -> None:
    # Both sides initiated: each side aims at the last handshake, so both move at one instant;
    # from `commit` before the move its instant is fixed (the runner holds the lock then).
    p = run(None, None, now=10.0, wall=1000.0)
    p = run(p, Sample(1000.5, 92), now=10.6, wall=1000.6)
    assert p.switch_at == 10.6 + (1000.5 + S.settle - 1000.6)
    p = run(p, Sample(1000.52, 184), now=10.8, wall=1000.8)
    assert p.switch_at == 10.8 + (1000.52 + S.settle - 1000.8) and p.handshake == 1000.52
    fixed = p.switch_at
    p = run(p, Sample(1001.2, 276), now=fixed - S.commit + 0.01, wall=1001.3)
    assert p.switch_at == fixed and p.mode == Mode.PROBING
    assert paths.next_deadline({"gw-b": p}, 11.0, 0.2, S.commit) == fixed - S.commit


def test_renewals_only_for_peers_that_send_and_never_shook_hands() -> None:
    samples = {KEY_A: Sample(0.0, 0, "198.19.0.10:4500", 1),  # waits
               KEY_B: Sample(990.0, 5, "198.19.0.14:4500", 1),  # answered once
               KEY_C: Sample(0.0, 0, None, 0)}  # learns its endpoint: never initiates
    waiting, renew = paths.renewals({}, samples, 10.0, S)
    assert waiting == {KEY_A: (10.0, 0)} and renew == []
    now = 10.0
    for n in range(1, S.renew_max + 1):
        wait = S.renew_after * 2 ** (n - 1)  # each wait twice the one before
        assert paths.renewals(waiting, samples, now + wait - 0.01, S)[1] == []
        now += wait
        waiting, renew = paths.renewals(waiting, samples, now, S)
        assert renew == [KEY_A] and waiting == {KEY_A: (now, n)}
    # Every renewal before WireGuard's own first retry (5 s after the first initiation).
    assert now - 10.0 < 5.0
    # A far end that stays silent is left to WireGuard's own retries.
    assert paths.renewals(waiting, samples, now + 100 * S.renew_after, S)[1] == []
    assert paths.renewals(waiting, {}, 12.0, S) == ({}, [])


def test_old_handshake_does_not_count() -> None:
    p = run(None, None, now=10, wall=1000)
    p = run(p, Sample(999.0, 500), now=11, wall=1001)  # from before the probe began
    assert p.switch_at is None


def test_probe_timeout_backs_off_and_a_new_endpoint_retries_at_once() -> None:
    p = run(None, None, now=10, wall=1000)
    p = run(p, Sample(), now=10 + S.probe_timeout, wall=1012)
    assert p.mode == Mode.RELAYED and p.failures == 1
    # The next try is the pair's next wall-clock slot, at most one backoff period away.
    slot = paths.retry_slot(1012, S.backoff(1), paths.pair_offset("", "gw-b", S))
    assert p.next_try == 22 + (slot - 1012) and 0 < slot - 1012 <= S.backoff(1)
    p2 = run(p, None, now=p.next_try - 0.1, wall=1013)
    assert p2.mode == Mode.RELAYED
    moved = Candidate("gw-b", KEY_B, "198.19.0.14:31000")  # the remote NAT rebound
    p3 = paths.step({"gw-b": p}, [moved], {}, p.next_try - 1, 1013, S)["gw-b"]
    assert p3.mode == Mode.PROBING and p3.endpoint == moved.endpoint
    assert [S.backoff(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 60.0]


def _fail(p: Path | None, c: Candidate, now: float) -> Path:
    """One probe of `c` from `now` that gets no handshake (the far NAT filtered it)."""
    p = paths.step({"gw-b": p} if p else {}, [c], {}, max(now, p.next_try if p else now),
                   now, S)["gw-b"]
    assert p.mode == Mode.PROBING and p.aimed == c.endpoint
    return paths.step({"gw-b": p}, [c], {KEY_B: Sample()}, p.since + S.probe_timeout,
                      now + S.probe_timeout, S)["gw-b"]


def test_a_symmetric_side_with_a_port_filtering_one_stops_probing_after_never_after() -> None:
    for mine, its in ((nd.INDEPENDENT, nd.DEPENDENT), (nd.DEPENDENT, nd.INDEPENDENT)):
        c = Candidate("gw-b", KEY_B, "198.19.0.22:53572", its, mine)
        p = _fail(None, c, 10)
        assert p.mode == Mode.RELAYED and p.next_try < float("inf")  # one failure: maybe luck
        p = _fail(p, c, p.next_try)
        assert p.failures == S.never_after and p.next_try == float("inf")
        assert "per destination" in p.reason and "port-restricted" in p.reason
        # Never probed again while nothing changes, however long it waits.
        later = paths.step({"gw-b": p}, [c], {}, 1e6, 1e6, S)["gw-b"]
        assert later.mode == Mode.RELAYED and paths.plans({"gw-b": later}) == {}
        assert paths.next_deadline({"gw-b": later}, 1e6, 0.2) == 1e6 + 1.0
        # A new mapping of the pair (the NAT rebound, or now known as another kind) retries.
        moved = Candidate("gw-b", KEY_B, "198.19.0.22:60000", its, mine)
        again = paths.step({"gw-b": later}, [moved], {}, 1e6 + 1, 1e6 + 1, S)["gw-b"]
        assert again.mode == Mode.PROBING and again.aimed == moved.endpoint
        assert again.failures == 0
        kind = Candidate("gw-b", KEY_B, c.endpoint, nd.UNKNOWN, mine)
        assert paths.step({"gw-b": later}, [kind], {}, 1e6 + 1, 1e6 + 1,
                          S)["gw-b"].mode == Mode.PROBING


def test_pairs_whose_kinds_do_not_explain_a_failure_keep_retrying() -> None:
    # Unknown kinds (one public gateway), or two cone sides: a failure proves nothing.
    for mine, its in ((nd.UNKNOWN, nd.UNKNOWN), (nd.INDEPENDENT, nd.INDEPENDENT),
                      (nd.UNKNOWN, nd.DEPENDENT)):
        c = Candidate("gw-b", KEY_B, "198.19.0.14:4500", its, mine)
        p = None
        for _ in range(4):
            p = _fail(p, c, p.next_try if p else 10)
        assert p.failures == 4 and p.next_try < float("inf") and "filtering" in p.reason


def test_the_endpoint_shown_is_the_current_one() -> None:
    # Direct to a symmetric far side: its peer talks from another port than the one the
    # public gateways see; the path shows the live one and says why.
    c = Candidate("gw-b", KEY_B, "198.19.0.22:53572", nd.DEPENDENT)
    p = run_c(None, c, None, now=10, wall=1000)
    p = run_c(p, c, Sample(1000.5, 92, "198.19.0.22:49088"), now=10.6, wall=1000.6)
    p = run_c(p, c, Sample(1000.5, 92, "198.19.0.22:49088"), now=p.switch_at, wall=1001.6)
    assert p.mode == Mode.DIRECT and p.endpoint == "198.19.0.22:49088"
    assert "per destination" in p.reason and "198.19.0.22:53572" in p.reason
    assert p.aimed == "198.19.0.22:53572"
    # Relayed: the mapped endpoint the public gateways see now, not the one of the last probe.
    fell = run_c(p, c, Sample(1000.5, 92, "198.19.0.22:49088"), now=p.since + 5, wall=1007)
    assert fell.mode == Mode.RELAYED
    moved = Candidate("gw-b", KEY_B, "198.19.0.22:61000", nd.DEPENDENT)
    shown = paths.step({"gw-b": fell}, [moved], {}, fell.since + 0.01, 1007, S)["gw-b"]
    assert shown.endpoint == moved.endpoint


def run_c(path: Path | None, c: Candidate, sample: Sample | None, now: float,
          wall: float) -> Path:
    state = {"gw-b": path} if path else {}
    return paths.step(state, [c], {KEY_B: sample} if sample else {}, now, wall, S)["gw-b"]


def test_retry_slots_of_both_sides_meet_whatever_their_backoffs() -> None:
    offset = paths.pair_offset("gw-a", "gw-b", S)
    assert offset == paths.pair_offset("gw-b", "gw-a", S) and 0 <= offset < S.backoff_min
    assert offset != paths.pair_offset("gw-a", "gw-c", S)
    for failures_a, failures_b in ((1, 4), (3, 5), (2, 10)):
        wall = 1_000_003.7
        a = [paths.retry_slot(wall, S.backoff(failures_a), offset)]
        b = paths.retry_slot(wall, S.backoff(failures_b), offset)
        while a[-1] < b:  # side A keeps probing each of its slots
            a.append(paths.retry_slot(a[-1], S.backoff(failures_a), offset))
        assert b in a, (failures_a, failures_b)  # B's slot is one of A's: they probe together


def test_direct_path_falls_back_when_silent_and_stays_while_it_hears() -> None:
    p = Path("gw-b", Mode.DIRECT, KEY_B, CAND.endpoint, since=0, rx_bytes=100, rx_changed=0)
    p = run(p, Sample(1, 200), now=1.0, wall=1)
    assert p.mode == Mode.DIRECT and p.rx_changed == 1.0
    assert run(p, Sample(1, 200), now=1.0 + S.dead_after - 0.01, wall=2).mode == Mode.DIRECT
    fell = run(p, Sample(1, 200), now=1.0 + S.dead_after, wall=3)
    assert fell.mode == Mode.RELAYED and fell.failures == 1 and "silent" in fell.reason
    assert paths.plans({"gw-b": fell}) == {}


def test_an_adopted_direct_path_that_fell_back_retries_a_new_mapping_at_once() -> None:
    # raven.path_agent.adopt keeps a direct path of the previous agent: endpoint = the mapping.
    p = Path("gw-b", Mode.DIRECT, KEY_B, CAND.endpoint, since=0, rx_bytes=100, rx_changed=0)
    fell = run(p, Sample(1, 100, CAND.endpoint), now=S.dead_after, wall=1000)
    assert fell.mode == Mode.RELAYED and fell.next_try > S.dead_after
    moved = Candidate("gw-b", KEY_B, "198.19.0.14:31000")  # the NAT rebound meanwhile
    again = paths.step({"gw-b": fell}, [moved], {}, S.dead_after + 0.1, 1000.1, S)["gw-b"]
    assert again.mode == Mode.PROBING and again.aimed == moved.endpoint


def test_a_new_gateway_in_the_remote_pool_starts_over() -> None:
    p = Path("gw-b", Mode.DIRECT, KEY_B, CAND.endpoint, rx_changed=5)
    other = Candidate("gw-b", KEY_C, "198.19.0.14:4500")
    p = paths.step({"gw-b": p}, [other], {}, 6, 1006, S)["gw-b"]
    assert p.mode == Mode.PROBING and p.public_key == KEY_C
    assert paths.step({"gw-b": p}, [], {}, 7, 1007, S) == {}  # no longer a candidate


# --- candidates and the planner ---------------------------------------------------------------

def _gateway(name: str, node: str, ip: str, key: str, nat: bool, subnet: str,
             config: dict | None = None, created: str = "") -> Gateway:
    ep = Endpoint(node_name=node, type="tunnel", port=4500, under_nat=nat,
                  public_ip="" if nat else ip,
                  config=FrozenMap({"public-key": key, **(config or {})}))
    return Gateway(name=name, spec=GatewaySpec(endpoints=(ep,)),
                   status=GatewayStatus(nodes=(NodeInfo(node, ip, (subnet,)),),
                                        active_endpoints=(ep,)),
                   metadata=FrozenMap({"name": name, "creationTimestamp": created}))


def _fleet(b_mapping: str = nd.INDEPENDENT, a_mapping: str = nd.INDEPENDENT) -> list[Gateway]:
    return [
        _gateway("gw-cloud", "c1", "198.18.1.10", KEY_C, False, "10.244.0.0/24",
                 created="2024-01-01T00:00:00Z"),
        _gateway("gw-a", "a1", "198.18.2.10", KEY_A, True, "10.244.10.0/24",
                 {nd.CONFIG_MAPPED_ENDPOINT: "198.19.0.10:4500", nd.CONFIG_NAT_MAPPING:
                  a_mapping}),
        _gateway("gw-b", "b1", "198.18.3.10", KEY_B, True, "10.244.20.0/24",
                 {nd.CONFIG_MAPPED_ENDPOINT: "198.19.0.14:4500", nd.CONFIG_NAT_MAPPING:
                  b_mapping}),
    ]


def test_candidates_skip_symmetric_pairs_and_public_pools() -> None:
    found, why = paths.candidates(_fleet(), "gw-a")
    assert found == [Candidate("gw-b", KEY_B, "198.19.0.14:4500", nd.INDEPENDENT,
                               nd.INDEPENDENT)]
    assert why == []
    found, why = paths.candidates(_fleet(nd.DEPENDENT, nd.DEPENDENT), "gw-a")
    assert found == [] and "symmetric" in why[0]
    found, _ = paths.candidates(_fleet(nd.DEPENDENT), "gw-a")  # one side cone: worth a try
    assert [c.pool for c in found] == ["gw-b"]
    assert paths.candidates(_fleet(), "gw-cloud") == ([], [])  # a public pool never punches


def _peer(state, key: str) -> WireGuardPeer:
    return next(p for p in state.wireguard.peers if p.public_key == key)


def test_planner_probes_beside_the_relay_then_moves_the_subnets() -> None:
    fleet = _fleet()
    relayed = plan_node(fleet, "a1")
    assert "10.244.20.0/24" in _peer(relayed, KEY_C).allowed_ips
    assert KEY_B not in {p.public_key for p in relayed.wireguard.peers}
    probing = plan_node(fleet, "a1", paths={"gw-b": PathPlan("gw-b", KEY_B, "198.19.0.14:4500",
                                                               False)})
    assert "10.244.20.0/24" in _peer(probing, KEY_C).allowed_ips  # traffic stays relayed
    assert _peer(probing, KEY_B) == WireGuardPeer(KEY_B, "198.19.0.14:4500", (), 1, pool="gw-b")
    direct = plan_node(fleet, "a1", paths={"gw-b": PathPlan("gw-b", KEY_B, None, True)})
    assert "10.244.20.0/24" not in _peer(direct, KEY_C).allowed_ips
    assert _peer(direct, KEY_B).allowed_ips == ("10.244.20.0/24",)
    assert direct.routes == relayed.routes  # only WireGuard changes: one write switches
    # A plan for another key (the remote pool changed gateway) is ignored.
    stale = plan_node(fleet, "a1", paths={"gw-b": PathPlan("gw-b", KEY_A, None, True)})
    assert stale.wireguard == relayed.wireguard


# --- the WireGuard diff: a subnet moving between peers ---------------------------------------

def test_an_allowed_ip_moving_to_another_peer_is_only_added_there() -> None:
    live = LiveDevice(private_key="k", listen_port=4500, peers={
        KEY_C: LivePeer(KEY_C, "198.18.1.10:4500", frozenset({"10.244.0.0/24", "10.244.20.0/24"}),
                        25, None),
        KEY_B: LivePeer(KEY_B, "198.19.0.14:4500", frozenset(), 1, None),
    })
    desired = (WireGuardPeer(KEY_B, None, ("10.244.20.0/24",), 1),
               WireGuardPeer(KEY_C, "198.18.1.10:4500", ("10.244.0.0/24",), 25))
    write, _ = diff_device("k", 4500, desired, live, move_removed=True)
    assert [(w.public_key, w.allowed_ips, w.removed_allowed_ips) for w in write.peers] == [
        (KEY_B, ("10.244.20.0/24",), ())]  # nothing removed: the add takes it from C


# --- telemetry: status.paths and the graph -----------------------------------------------------

def test_status_paths_carry_the_figures_of_the_change_and_drop_bad_ones() -> None:
    text = json.dumps({
        "gw-b": {"path": "direct", "rttMs": 0.42, "loss": 0.0, "handshake": 1796188333,
                 "rxBytes": 92, "txBytes": 184},
        "gw-sym": {"path": "relayed", "via": "gw-cloud", "rttMs": 1.5},
        "gw-c": {"path": "direct", "rttMs": "fast", "loss": -1, "handshake": True,
                 "rxBytes": 2.0},
        "gw-x": {"path": "sideways"}, "gw-y": ["direct"]})
    assert nd.status_paths(text) == [
        {"gateway": "gw-b", "path": "direct", "rttMs": 0.42, "loss": 0.0, "rxBytes": 92,
         "txBytes": 184, "lastHandshake": "2026-12-02T05:12:13Z"},
        {"gateway": "gw-c", "path": "direct", "rxBytes": 2},
        {"gateway": "gw-sym", "path": "relayed", "via": "gw-cloud", "rttMs": 1.5}]


def test_status_paths_from_the_gateway_annotation() -> None:
    text = json.dumps({"gw-b": "direct", "gw-sym": "relayed:gw-cloud", "gw-x": "bogus",
                       "gw-c": "probing"})
    assert nd.status_paths(text) == [
        {"gateway": "gw-b", "path": "direct"}, {"gateway": "gw-c", "path": "probing"},
        {"gateway": "gw-sym", "path": "relayed", "via": "gw-cloud"}]
    assert nd.status_paths("[") == [] and nd.status_paths(None) == []
    node = _node("a1", "gw-a", "198.18.2.10", KEY_A)
    node = Node(**{**node.__dict__, "annotations": FrozenMap(
        {**node.annotations.to_dict(), nd.ANNOTATION_PATHS: text})})
    gw = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
          "metadata": {"name": "gw-a"},
          "spec": {"endpoints": [{"nodeName": "a1", "type": "tunnel", "port": 4500,
                                  "underNAT": True}]}}
    status = compute_status(gw, {"a1": node}, {"a1": 100.0}, 100.0).status
    assert [p["gateway"] for p in status["paths"]] == ["gw-b", "gw-c", "gw-sym"]


def test_graph_draws_a_direct_pair_as_its_own_tunnel() -> None:
    from dataclasses import replace

    from raven.commands.graph import render_dot

    fleet = _fleet()
    relayed = render_dot(fleet)
    assert 'label="relayed via gw-cloud"' in relayed and "direct" not in relayed
    a = fleet[1]
    fleet[1] = replace(a, status=replace(a.status, extra=FrozenMap({"paths": (
        FrozenMap({"gateway": "gw-b", "path": "direct"}),)})))
    direct = render_dot(fleet)
    assert '"gw-a/a1" -> "gw-b/b1" [dir=both, color=darkgreen' in direct
    assert "relayed via" not in direct
    # Edges carry the RTT the Gateway status reports through each path.
    fleet[1] = replace(a, status=replace(a.status, extra=FrozenMap({"paths": (
        FrozenMap({"gateway": "gw-b", "path": "direct", "rttMs": 0.42}),)})))
    assert 'label="WireGuard direct (through both NATs), 0.42 ms"' in render_dot(fleet)
    fleet[1] = replace(a, status=replace(a.status, extra=FrozenMap({"paths": (
        FrozenMap({"gateway": "gw-b", "path": "relayed", "via": "gw-cloud", "rttMs": 1.5}),)})))
    assert 'label="relayed via gw-cloud, 1.5 ms"' in render_dot(fleet)


def test_diagnose_explains_key_nat_peers_mtu_and_paths() -> None:
    from raven.commands.diagnose import explain

    agent = {"node": "a1", "pool": "gw-a", "role": "active-gateway", "publicKey": KEY_A,
             "activeGateways": ["a1"],
             "plan": {"wireguard": {"name": "raven-wg0", "mtu": 1420, "peers": [
                 {"public_key": KEY_C, "pool": "gw-cloud"}, {"public_key": KEY_B,
                                                             "pool": "gw-b"}]},
                      "notes": ["Gateway gw-sym: both it and gw-a are undialable; relayed "
                                "through gw-cloud"]},
             "paths": [{"pool": "gw-b", "mode": "direct", "reason": "direct to 1.2.3.4:4500"},
                       {"pool": "gw-sym", "mode": "relayed", "reason": "both NATs map ..."}]}
    gateways = [{"metadata": {"name": "gw-a"}, "status": {"activeEndpoints": [
        {"nodeName": "a1", "underNAT": True, "config": {
            nd.CONFIG_MAPPED_ENDPOINT: "198.19.0.10:4500", nd.CONFIG_NAT_MAPPING: "unknown"}}]}}]
    node = {"metadata": {"annotations": {"raven.openyurt.io/wireguard-public-key": KEY_A}}}
    peers = [{"public_key": KEY_C, "endpoint": "198.18.1.10:4500", "handshake_age_s": 3.0,
              "rx_bytes": 10},
             {"public_key": KEY_B, "endpoint": None, "handshake_age_s": None, "rx_bytes": 0}]
    found = {(f["topic"], f["status"]): f["text"] for f in explain(agent, gateways, node, peers)}
    assert "published" in found[("key", "ok")]
    assert "198.19.0.10:4500" in found[("nat", "info")] and "two are needed" in found[
        ("nat", "info")]
    assert "gw-cloud" in found[("udp", "ok")] and "gw-b" in found[("udp", "warn")]
    assert "1420" in found[("mtu", "info")]
    assert "relayed through gw-cloud" in found[("relay", "info")]
    unpublished = explain(agent, gateways, {"metadata": {}}, [])
    assert unpublished[0]["status"] == "warn" and "cannot build a tunnel" in unpublished[0]["text"]


def _sym_agent(mode: str, **path: object) -> dict:
    """cona-1's status file: a direct peer to full, a probe peer to sym, the relay gw-cloud."""
    return {"node": "a1", "pool": "gw-a", "role": "active-gateway", "publicKey": KEY_A,
            "plan": {"wireguard": {"name": "raven-wg0", "mtu": 1420, "peers": [
                {"public_key": KEY_C, "pool": "gw-cloud", "relays_for": ["gw-sym"]},
                {"public_key": KEY_B, "pool": "gw-sym", "relays_for": []}]}},
            "paths": [{"pool": "gw-sym", "mode": mode, **path}]}


def test_status_shows_where_a_path_goes_now() -> None:
    from raven.commands.status import path_text

    # A probing pair's traffic is on the relay: that is what the user must read first.
    agent = _sym_agent("probing", endpoint="198.19.0.22:53572", failures=4,
                       reason="probing 198.19.0.22:53572", rttMs=2.5)
    text = path_text(agent["paths"][0], agent, [])
    assert text.startswith("relayed via gw-cloud; probing a direct path to 198.19.0.22:53572 "
                           "(attempt 5)"), text
    # Direct: the endpoint the kernel's peer talks to now, not the port the public gateways
    # saw (a symmetric far side talks to us from a port of its own).
    agent = _sym_agent("direct", endpoint="198.19.0.22:53572",
                       reason="direct to 198.19.0.22:49088 (its NAT maps per destination: "
                              "public gateways see 198.19.0.22:53572)")
    live = [{"public_key": KEY_B, "endpoint": "198.19.0.22:49088"},
            {"public_key": KEY_C, "endpoint": "198.18.1.10:4500"}]
    text = path_text(agent["paths"][0], agent, live)
    assert text.startswith("direct to 198.19.0.22:49088 (its NAT maps per destination"), text
    assert text.count("direct to") == 1
    # Relayed for good, with the reason and the relay from the plan.
    agent = _sym_agent("relayed", reason="its NAT maps a new port per destination ...")
    assert path_text(agent["paths"][0], agent, []) == (
        "relayed via gw-cloud (its NAT maps a new port per destination ...)")


def test_diagnose_says_per_destination_for_a_symmetric_side() -> None:
    from raven.commands.diagnose import explain

    sym_config = {nd.CONFIG_MAPPED_ENDPOINT: "198.19.0.22:53572",
                  nd.CONFIG_NAT_MAPPING: nd.DEPENDENT}
    gateways = [
        {"metadata": {"name": "gw-a"}, "status": {"activeEndpoints": [
            {"nodeName": "a1", "underNAT": True, "config": sym_config}]}},
        {"metadata": {"name": "gw-sym"}, "status": {"activeEndpoints": [
            {"nodeName": "s1", "underNAT": True, "config": sym_config}]}}]
    agent = _sym_agent("relayed", reason="both NATs map a new port per destination")
    found = {(f["topic"], f["status"]): f["text"] for f in explain(agent, gateways, None, [])}
    nat = found[("nat", "info")]
    assert "198.19.0.22 from a port per destination" in nat and "mapping dependent" in nat
    path = found[("path", "info")]
    assert path.startswith("to gw-sym: relayed via gw-cloud (both NATs map") and (
        "its NAT maps a new port per destination (public gateways see it at 198.19.0.22, "
        "each from its own port)") in path
    assert "53572" not in path
    # The probe peer of a probing pair (no allowed IPs) unanswered is no fault.
    agent = _sym_agent("probing", endpoint="198.19.0.22:53572", reason="probing ...")
    agent["plan"]["wireguard"]["peers"][0]["allowed_ips"] = ["10.244.40.0/24"]
    agent["plan"]["wireguard"]["peers"][1]["allowed_ips"] = []
    peers = [{"public_key": KEY_B, "endpoint": "198.19.0.22:53572", "handshake_age_s": None}]
    udp = [f for f in explain(agent, gateways, None, peers) if f["topic"] == "udp"]
    assert [f["status"] for f in udp] == ["info"] and "probe peer gw-sym" in udp[0]["text"]


# --- the relay by RTT ----------------------------------------------------------------------------

def test_relay_moves_only_when_better_by_a_margin_for_a_while() -> None:
    from raven.relay_choice import RelaySettings, RelayState, choose

    s = RelaySettings(margin=0.2, min_gain_ms=2.0, hold=30.0)
    cands = ["gw-cloud", "gw-cloud2"]
    near = {"gw-a": {"gw-cloud": 40.0, "gw-cloud2": 10.0}, "gw-b": {"gw-cloud": 40.0,
                                                                   "gw-cloud2": 12.0}}
    relay, state, why = choose("gw-cloud", near, cands, RelayState(), 100.0, s)
    assert relay == "gw-cloud" and state.challenger == "gw-cloud2" and "waiting" in why
    relay, state, _ = choose("gw-cloud", near, cands, state, 129.0, s)
    assert relay == "gw-cloud"
    relay, state, why = choose("gw-cloud", near, cands, state, 130.0, s)
    assert relay == "gw-cloud2" and "replaces" in why
    # A spike that ends before the hold never moves it; the clock restarts.
    _, state, _ = choose("gw-cloud", near, cands, RelayState(), 100.0, s)
    calm = {"gw-a": {"gw-cloud": 11.0, "gw-cloud2": 10.0}, "gw-b": {"gw-cloud": 11.0,
                                                                   "gw-cloud2": 10.0}}
    relay, state, _ = choose("gw-cloud", calm, cands, state, 110.0, s)
    assert relay == "gw-cloud" and state == RelayState()
    # Small differences never move it (margin and absolute gain).
    assert choose("gw-cloud", calm, cands, RelayState(), 0, s)[1] == RelayState()


def test_relay_never_moves_to_an_unmeasured_or_new_gateway() -> None:
    from raven.relay_choice import RelayState, choose

    partial = {"gw-a": {"gw-cloud": 40.0, "gw-new": 1.0}, "gw-b": {"gw-cloud": 40.0}}
    relay, state, _ = choose("gw-cloud", partial, ["gw-cloud", "gw-new"], RelayState(), 0.0)
    assert relay == "gw-cloud" and state == RelayState()
    assert choose("gw-cloud", {}, ["gw-cloud", "gw-new"], RelayState(), 0.0)[0] == "gw-cloud"
    # The relay in force is gone: the best measured one takes over at once.
    full = {"gw-a": {"gw-x": 5.0, "gw-y": 3.0}}
    assert choose("gw-cloud", full, ["gw-x", "gw-y"], RelayState(), 0.0)[0] == "gw-y"


def test_planner_and_status_follow_the_chosen_relay() -> None:
    from dataclasses import replace

    cloud2 = _gateway("gw-cloud2", "d1", "198.18.4.10", "D" * 43 + "=", False, "10.244.30.0/24",
                      created="2025-01-01T00:00:00Z")
    fleet = [*_fleet(nd.DEPENDENT, nd.DEPENDENT), cloud2]  # symmetric pair: relayed
    assert "10.244.20.0/24" in _peer(plan_node(fleet, "a1"), KEY_C).allowed_ips  # oldest
    flagged = replace(cloud2, status=replace(cloud2.status, extra=FrozenMap({"relay": True})))
    fleet[-1] = flagged
    state = plan_node(fleet, "a1")
    assert "10.244.20.0/24" in _peer(state, "D" * 43 + "=").allowed_ips
    assert "10.244.20.0/24" not in _peer(state, KEY_C).allowed_ips
    gw = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
          "metadata": {"name": "gw-cloud2"},
          "spec": {"endpoints": [{"nodeName": "d1", "type": "tunnel", "port": 4500}]}}
    nodes = {"d1": _node("d1", "gw-cloud2", "198.18.4.10", KEY_C)}
    assert compute_status(gw, nodes, {"d1": 1.0}, 1.0, relay="gw-cloud2").status["relay"] is True
    assert "relay" not in compute_status(gw, nodes, {"d1": 1.0}, 1.0, relay=None).status


def test_relay_rtts_read_from_the_nat_gateways_nodes() -> None:
    from raven.gateway_status import relay_rtts

    node = _node("a1", "gw-a", "198.18.2.10", KEY_A)
    node = Node(**{**node.__dict__, "annotations": FrozenMap({
        **node.annotations.to_dict(),
        "raven.openyurt.io/relay-rtt": json.dumps({"gw-cloud": 3.5, "bad": "x"})})})
    fleet = _fleet()
    assert relay_rtts(fleet, {"a1": node}) == {"gw-a": {"gw-cloud": 3.5}, "gw-b": {}}
