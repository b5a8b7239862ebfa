"""raven.failover (health hysteresis, the pool's effective gateway, probe targets) and
raven.standby (warm standby state): pure, exhaustive where the space is small."""

from __future__ import annotations

import base64
import itertools
import random
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from raven import failover, standby
from raven.desired import NodeState, Role
from raven.failover import Health, ProbeSettings, Verdict
from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, NodeInfo
from raven.topology import plan_node, vtep_for

S = ProbeSettings()


def run(h: Health, outcomes: str) -> Health:
    """'r' = reply, 'l' = lost."""
    for o in outcomes:
        h = failover.replied(h, 0.001, S) if o == "r" else failover.lost(h, S)
    return h


# --- health ---------------------------------------------------------------------------------

def test_a_target_that_never_answered_needs_a_long_silence_to_be_down() -> None:
    assert run(Health(), "l" * (S.unknown_down_after - 1)).verdict == Verdict.UNKNOWN
    assert run(Health(), "l" * S.unknown_down_after).verdict == Verdict.DOWN
    assert S.unknown_down_after * S.interval >= 30  # a tunnel has time to come up at start


def test_up_after_up_after_replies_and_down_after_down_after_losses() -> None:
    h = run(Health(), "r" * (S.up_after - 1))
    assert h.verdict == Verdict.UNKNOWN
    h = run(h, "r")
    assert h.verdict == Verdict.UP
    h = run(h, "l" * (S.down_after - 1))
    assert h.verdict == Verdict.UP
    h = run(h, "l")
    assert h.verdict == Verdict.DOWN
    h = run(h, "r" * (S.up_after - 1))
    assert h.verdict == Verdict.DOWN  # hysteresis on the way back too
    assert run(h, "r").verdict == Verdict.UP


def test_one_reply_resets_the_loss_run() -> None:
    h = run(Health(), "r" * S.up_after + ("l" * (S.down_after - 1) + "r") * 50)
    assert h.verdict == Verdict.UP
    assert h.lost == 50 * (S.down_after - 1)


def test_rtt_is_smoothed() -> None:
    h = failover.replied(Health(), 0.010, S)
    h = failover.replied(h, 0.002, S)
    assert h.rtt_ms is not None and 2.0 < h.rtt_ms < 10.0


def test_five_percent_loss_each_way_for_ten_minutes_never_marks_a_target_down() -> None:
    """The hysteresis claim behind 'no flapping': 10 minutes of probes at the default interval,
    a probe lost when either direction loses it (5 % each way), several seeds."""
    probes = int(600 / S.interval)
    for seed in range(5):
        rng = random.Random(seed)
        h = run(Health(), "r" * S.up_after)
        for _ in range(probes):
            lost_it = rng.random() < 0.05 or rng.random() < 0.05
            h = failover.lost(h, S) if lost_it else failover.replied(h, 0.001, S)
            assert h.verdict == Verdict.UP


def test_probe_settings_problems() -> None:
    assert failover.probe_problems(S) == []
    assert failover.probe_problems(ProbeSettings(interval=-1))
    assert failover.probe_problems(ProbeSettings(port=0))
    assert failover.probe_problems(ProbeSettings(slow_interval=0.01)) == [
        "probe slow_interval 0.01: must be at least the probe interval (0.05)"]
    assert failover.probe_problems(ProbeSettings(interval=0, slow_interval=0)) == []


# --- pools ----------------------------------------------------------------------------------

def key(name: str) -> str:
    """A well-formed WireGuard key (base64 of 32 bytes) that names its node."""
    return base64.b64encode(name.encode().ljust(32, b".")).decode()


def ep(name: str, nat: bool, public_ip: str = "") -> Endpoint:
    return Endpoint(name, port=4500, under_nat=nat, public_ip=public_ip,
                    config=FrozenMap({"public-key": key(name)}))


def pool(name: str, nodes: list[tuple[str, str, str]], candidates: list[str], nat: bool,
         public: dict[str, str] | None = None, created: str = "") -> Gateway:
    public = public or {}
    eps = [ep(c, nat, public.get(c, "")) for c in candidates]
    extra = {failover.STANDBY_FIELD: [e.to_k8s() for e in eps[1:]]} if len(eps) > 1 else {}
    return Gateway(
        name, spec=GatewaySpec(endpoints=tuple(Endpoint(c, under_nat=nat) for c in candidates)),
        status=GatewayStatus(nodes=tuple(NodeInfo(n, ip, (s,)) for n, ip, s in nodes),
                             active_endpoints=tuple(eps[:1]), extra=FrozenMap(extra)),
        metadata=FrozenMap({"name": name, "creationTimestamp": created} if created
                           else {"name": name}))


def fleet() -> list[Gateway]:
    return [
        pool("cloud", [("c1", "192.0.2.1", "10.244.0.0/24"), ("c2", "192.0.2.2", "10.244.1.0/24")],
             ["c1"], False, {"c1": "203.0.113.1"}, "2024-01-01T00:00:00Z"),
        pool("cone", [("k1", "198.51.100.1", "10.244.10.0/24"),
                      ("k2", "198.51.100.2", "10.244.11.0/24"),
                      ("k3", "198.51.100.3", "10.244.12.0/24")], ["k1", "k2"], True,
             created="2024-01-02T00:00:00Z"),
        pool("sym", [("s1", "198.18.0.1", "10.244.20.0/24")], ["s1"], True,
             created="2024-01-03T00:00:00Z"),
    ]


def active_of(gateways: list[Gateway], name: str) -> list[str]:
    gw = next(g for g in gateways if g.name == name)
    return [e.node_name for e in gw.status.active_endpoints]


def test_candidates_are_the_active_endpoints_then_the_standbys() -> None:
    cone = fleet()[1]
    assert [e.node_name for e in failover.candidates(cone)] == ["k1", "k2"]
    assert failover.candidates(cone)[1].public_key == key("k2")


def test_choose() -> None:
    down, up = Verdict.DOWN, Verdict.UP
    assert failover.choose(["a", "b", "c"], {"a": down}, "x") == ("b",)
    assert failover.choose(["a", "b", "c"], {"a": down, "b": down}, "x") == ("c",)
    assert failover.choose(["a", "b"], {"a": down, "b": down}, "x") == ("a",)  # controller's
    assert failover.choose(["a", "b"], {"a": down, "b": up}, "a") == ("a",)  # I count myself up
    assert failover.choose(["a", "b", "c"], {"a": down}, "x", replicas=2) == ("b", "c")


def test_no_verdicts_change_nothing() -> None:
    gws = fleet()
    out, switches = failover.effective_gateways(gws, {}, "k3")
    assert out == gws and switches == []


def test_a_down_active_gateway_is_replaced_by_the_next_candidate() -> None:
    gws = fleet()
    out, switches = failover.effective_gateways(gws, {("cone", "k1"): Verdict.DOWN}, "k3")
    assert active_of(out, "cone") == ["k2"]
    assert [str(s) for s in switches] == [
        "Gateway cone: k1 -> k2 (data-path probes: k1 down)"]
    # The old active gateway stays a standby (its peers stay warm for its return).
    cone = next(g for g in out if g.name == "cone")
    assert [e.node_name for e in failover.standby_endpoints(cone)] == ["k1"]
    assert active_of(out, "cloud") == ["c1"]


@given(st.lists(st.sampled_from(list(Verdict)), min_size=2, max_size=2))
def test_every_observer_with_the_same_view_picks_the_same_gateway(view: list[Verdict]) -> None:
    """Members, the other candidate and a remote gateway decide alike from the same verdicts
    (a candidate judges only the others: it counts itself up)."""
    gws = fleet()
    verdicts = {("cone", n): v for n, v in zip(["k1", "k2"], view, strict=True)}
    picks = set()
    for me in ["k3", "c1", "s1"]:
        out, _ = failover.effective_gateways(gws, verdicts, me)
        picks.add(tuple(active_of(out, "cone")))
    assert len(picks) == 1
    expected = ["k2"] if view[0] == Verdict.DOWN and view[1] != Verdict.DOWN else ["k1"]
    assert picks == {tuple(expected)}


def test_exhaustive_three_candidates_first_alive_in_order() -> None:
    order = ["a", "b", "c"]
    for view in itertools.product(list(Verdict), repeat=3):
        verdicts = dict(zip(order, view, strict=True))
        chosen = failover.choose(order, verdicts, "member")
        alive = [n for n in order if verdicts[n] != Verdict.DOWN]
        assert chosen == (alive[0],) if alive else chosen == ("a",)


def vtep(ip: str) -> str:
    return vtep_for(ip)[0]


def test_probe_targets() -> None:
    gws = fleet()
    # A member probes its pool's candidates over VXLAN only.
    assert failover.probe_targets(gws, "k3", vtep, "raven0", "raven-wg0") == (
        failover.Target("cone", "k1", vtep("198.51.100.1"), "raven0"),
        failover.Target("cone", "k2", vtep("198.51.100.2"), "raven0"))
    # A candidate probes the other candidate, and the public pool over WireGuard; never the
    # symmetric pool (both behind NAT: the relay's concern).
    assert failover.probe_targets(gws, "k2", vtep, "raven0", "raven-wg0") == (
        failover.Target("cloud", "c1", vtep("192.0.2.1"), "raven-wg0"),
        failover.Target("cone", "k1", vtep("198.51.100.1"), "raven0"))
    # The public gateway probes every candidate of the NAT'd pools.
    assert {(t.pool, t.node, t.device) for t in failover.probe_targets(
        gws, "c1", vtep, "raven0", "raven-wg0")} == {
        ("cone", "k1", "raven-wg0"), ("cone", "k2", "raven-wg0"), ("sym", "s1", "raven-wg0")}
    assert failover.probe_targets(gws, "nobody", vtep, "raven0", "raven-wg0") == ()


def test_only_targets_whose_verdict_decides_are_probed_at_full_rate() -> None:
    """A pool with one candidate has nothing to switch to: telemetry only (the slow rate);
    a pool with two, or the far gateway of a punched direct path, decides (full rate)."""
    gws = fleet()  # cloud: c1 alone; cone: k1, k2; sym: s1 alone

    def rates(me: str, direct: dict[str, str] | None = None) -> dict[tuple[str, str], bool]:
        return {(t.pool, t.node): t.telemetry for t in failover.probe_targets(
            gws, me, vtep, "raven0", "raven-wg0", direct)}

    assert rates("c2") == {("cloud", "c1"): True}  # a member of a one-candidate pool
    assert rates("k3") == {("cone", "k1"): False, ("cone", "k2"): False}
    assert rates("c1") == {("cone", "k1"): False, ("cone", "k2"): False, ("sym", "s1"): True}
    assert rates("k2") == {("cloud", "c1"): True, ("cone", "k1"): False}
    assert rates("k1", {"sym": "s1"})[("sym", "s1")] is False  # its DOWN ends the path
    # The flag is no part of a target's identity: its slot (health) is kept when it changes.
    t = failover.Target("cloud", "c1", "10.0.0.1", "raven0")
    assert t == failover.Target("cloud", "c1", "10.0.0.1", "raven0", telemetry=True)
    assert {t: 1}[failover.Target("cloud", "c1", "10.0.0.1", "raven0", telemetry=True)] == 1


def test_candidates_this_node_does_not_use_are_standbys() -> None:
    """A candidate that is not among its pool's active endpoints in the Gateways given (the
    effective ones: after a switch, the replaced gateway is the standby) is probed at the
    standby rate; the gateway in use, a one-candidate pool and a punched path's gateway are
    not standbys."""
    gws = fleet()  # cone: k1 active, k2 standby

    def standbys(gateways: list[Gateway], me: str,
                 direct: dict[str, str] | None = None) -> dict[tuple[str, str], bool]:
        return {(t.pool, t.node): t.standby for t in failover.probe_targets(
            gateways, me, vtep, "raven0", "raven-wg0", direct)}

    assert standbys(gws, "k3") == {("cone", "k1"): False, ("cone", "k2"): True}
    assert standbys(gws, "k1")[("cone", "k2")] is True  # the active gateway's view
    assert standbys(gws, "k2")[("cone", "k1")] is False  # the standby's: its gateway
    assert standbys(gws, "c1") == {("cone", "k1"): False, ("cone", "k2"): True,
                                   ("sym", "s1"): False}
    assert standbys(gws, "c2") == {("cloud", "c1"): False}
    # k1 seen DOWN: k3 uses k2 now, and k1 (whatever its verdict) is the standby.
    effective, _ = failover.effective_gateways(gws, {("cone", "k1"): Verdict.DOWN}, "k3")
    assert standbys(effective, "k3") == {("cone", "k1"): True, ("cone", "k2"): False}
    t = failover.Target("cone", "k2", "10.0.0.2", "raven0")
    assert t == replace(t, standby=True) and {t: 1}[replace(t, standby=True)] == 1
    assert failover.probe_problems(replace(S, standby_interval=S.interval / 2))
    assert not failover.probe_problems(S)


# --- warm standby ---------------------------------------------------------------------------

def warm(me: str, gws: list[Gateway] | None = None) -> NodeState:
    gws = gws or fleet()
    return standby.warm(plan_node(gws, me), gws, me)


def test_a_member_knows_every_candidate_of_its_pool() -> None:
    state = warm("k3")
    assert state.role == Role.MEMBER and state.wireguard is None
    assert {f.dst for f in state.fdb} == {"198.51.100.1", "198.51.100.2"}
    assert {n.ip for n in state.neighbours} == {vtep("198.51.100.1"), vtep("198.51.100.2")}


def test_a_standby_candidate_holds_warm_peers_that_carry_no_pod_subnet() -> None:
    state = warm("k2")
    assert state.role == Role.MEMBER
    assert {f.dst for f in state.fdb} == {"198.51.100.1", "198.51.100.3"}
    assert state.wireguard is not None
    (peer,) = state.wireguard.peers  # the public pool only: sym is reached via the relay
    assert peer.public_key == key("c1") and peer.endpoint == "203.0.113.1:4500"
    assert peer.allowed_ips == (f"{vtep('192.0.2.1')}/32",)
    assert peer.keepalive == 25  # we are behind NAT: keep the mapping open
    # raven-wg0 set as on the active gateway (k1), so a switch does not have to write it.
    def wg_sysctls(s: NodeState) -> dict[str, str]:
        return {k: v for k, v in s.sysctls if ".raven-wg0." in k}
    assert wg_sysctls(state) == wg_sysctls(warm("k1")) == {
        "net.ipv4.conf.raven-wg0.rp_filter": "0", "net.ipv4.conf.raven-wg0.accept_local": "1"}
    # Its pod traffic still goes to the active gateway over VXLAN.
    assert all(r.table == 9027 for r in state.routes)


def test_the_active_gateway_adds_probe_addresses_and_standby_peers() -> None:
    state = warm("c1")
    assert state.role == Role.ACTIVE_GATEWAY and state.wireguard is not None
    peers = {p.public_key: p for p in state.wireguard.peers}
    assert set(peers) == {key("k1"), key("k2"), key("s1")}
    assert f"{vtep('198.51.100.1')}/32" in peers[key("k1")].allowed_ips
    assert "10.244.10.0/24" in peers[key("k1")].allowed_ips
    assert peers[key("k2")].allowed_ips == (f"{vtep('198.51.100.2')}/32",)
    assert peers[key("k2")].endpoint is None  # behind NAT: learned from its handshake
    owners = [a for p in peers.values() for a in p.allowed_ips]
    assert len(owners) == len(set(owners))  # an address allowed on one peer only


def test_after_a_switch_the_pod_subnets_move_to_the_new_gateway_peer() -> None:
    gws, _ = failover.effective_gateways(fleet(), {("cone", "k1"): Verdict.DOWN}, "c1")
    state = standby.warm(plan_node(gws, "c1"), gws, "c1")
    assert state.wireguard is not None
    peers = {p.public_key: p for p in state.wireguard.peers}
    assert "10.244.10.0/24" in peers[key("k2")].allowed_ips
    assert peers[key("k1")].allowed_ips == (f"{vtep('198.51.100.1')}/32",)
    # And the new gateway plans as one, the member routes via it.
    gws_k, _ = failover.effective_gateways(fleet(), {("cone", "k1"): Verdict.DOWN}, "k2")
    assert standby.warm(plan_node(gws_k, "k2"), gws_k, "k2").role == Role.ACTIVE_GATEWAY
    gws_m, _ = failover.effective_gateways(fleet(), {("cone", "k1"): Verdict.DOWN}, "k3")
    member = standby.warm(plan_node(gws_m, "k3"), gws_m, "k3")
    assert {r.gateway for r in member.routes} == {vtep("198.51.100.2")}


def test_alone_stays_alone() -> None:
    state = warm("nobody")
    assert state.role == Role.ALONE and state.fdb == () and state.wireguard is None


def test_the_responder_script_speaks_the_wire_format() -> None:
    """raven/healthprobe/responder.py runs with the standard library only (python -I -S), so it
    keeps its own copy of the format: it must stay equal to raven.healthprobe.wire."""
    from raven.healthprobe import responder, wire

    request = wire.encode(wire.REQUEST, 7)
    assert (responder.MAGIC, responder.REQUEST, responder.REPLY, responder.SIZE) == (
        wire.MAGIC, wire.REQUEST, wire.REPLY, wire.SIZE)
    reply = request[:4] + bytes([responder.REPLY]) + request[5:]
    assert wire.decode(reply) == (wire.REPLY, 7)
    assert wire.decode(b"junk") is None


def test_a_malformed_key_is_neither_probed_nor_kept_warm() -> None:
    gws = fleet()
    cone = gws[1]
    bad = cone.status.active_endpoints[0]
    cone = replace(cone, status=replace(cone.status, active_endpoints=(
        replace(bad, config=FrozenMap({"public-key": "not-a-key"})),)))
    gws[1] = cone
    assert ("cone", "k1") not in {(t.pool, t.node) for t in failover.probe_targets(
        gws, "c1", vtep, "raven0", "raven-wg0")}
    state = standby.warm(plan_node(gws, "c1"), gws, "c1")
    assert state.wireguard is not None
    assert "not-a-key" not in {p.public_key for p in state.wireguard.peers if
                               p.allowed_ips == (f"{vtep('198.51.100.1')}/32",)}
