"""A punched direct path's gateway is probed over the path (issue 12, case (c) for sources on
a direct path): raven.failover.probe_targets(direct=...), raven.standby (the VTEP /32 on the
direct peer), raven.paths.step(down=...) (fall back at once, not after `dead_after` of
silence) and raven.agent_failover (those verdicts never move a pool's gateway)."""

from __future__ import annotations

from raven import failover, paths, standby
from raven.agent_failover import ProbeFailover
from raven.failover import Target, Verdict
from raven.paths import Candidate, Mode, Path, PathPlan, PathSettings, Sample
from raven.settings import AgentSettings
from raven.topology import plan_node, vtep_for
from tests.unit.test_failover_decision import fleet, key

S = PathSettings()


def vtep(ip: str) -> str:
    return vtep_for(ip)[0]


def test_the_gateway_of_a_direct_path_is_probed_over_it_and_only_it() -> None:
    gws = fleet()  # cone (k1 active, k2 standby) and sym (s1) are both behind NAT
    plain = failover.probe_targets(gws, "k1", vtep, "raven0", "raven-wg0")
    assert not any(t.pool == "sym" for t in plain)  # relayed: the relay's concern
    with_path = failover.probe_targets(gws, "k1", vtep, "raven0", "raven-wg0", {"sym": "s1"})
    assert set(with_path) - set(plain) == {Target("sym", "s1", vtep("198.18.0.1"), "raven-wg0")}
    # a node that is not a candidate there, or a member asking: nothing more
    assert failover.probe_targets(gws, "k1", vtep, "raven0", "raven-wg0", {"sym": "x"}) == plain
    assert failover.probe_targets(gws, "k3", vtep, "raven0", "raven-wg0", {"sym": "s1"}) == \
        failover.probe_targets(gws, "k3", vtep, "raven0", "raven-wg0")


def test_the_direct_peer_allows_the_far_gateways_vtep_while_a_probing_one_does_not() -> None:
    gws = fleet()
    probe = f"{vtep('198.18.0.1')}/32"
    direct = {"sym": PathPlan("sym", key("s1"), None, True)}
    state = standby.warm(plan_node(gws, "k1", paths=direct), gws, "k1")
    assert state.wireguard is not None
    peer = next(p for p in state.wireguard.peers if p.public_key == key("s1"))
    assert probe in peer.allowed_ips and "10.244.20.0/24" in peer.allowed_ips
    probing = {"sym": PathPlan("sym", key("s1"), "198.19.0.9:4500", False)}
    state = standby.warm(plan_node(gws, "k1", paths=probing), gws, "k1")
    assert state.wireguard is not None
    peer = next(p for p in state.wireguard.peers if p.public_key == key("s1"))
    assert peer.allowed_ips == ()
    relayed = standby.warm(plan_node(gws, "k1"), gws, "k1")
    assert relayed.wireguard is not None
    assert not any(probe in p.allowed_ips for p in relayed.wireguard.peers)


CAND = Candidate("sym", key("s1"), "198.19.0.9:4500")


def test_a_direct_path_whose_gateway_is_down_falls_back_at_once() -> None:
    p = Path("sym", Mode.DIRECT, key("s1"), CAND.endpoint, since=0, rx_bytes=100,
             rx_changed=10.0)
    sample = {key("s1"): Sample(1000, 100)}
    # heard 0.1 s ago: without a verdict it stays direct
    kept = paths.step({"sym": p}, [CAND], sample, 10.1, 1010.1, S, "cone")["sym"]
    assert kept.mode == Mode.DIRECT
    fell = paths.step({"sym": p}, [CAND], sample, 10.1, 1010.1, S, "cone", down={"sym"})["sym"]
    assert fell.mode == Mode.RELAYED and fell.failures == 1 and "probes" in fell.reason
    assert paths.plans({"sym": fell}) == {}  # the subnets go back to the relay in this write
    # a probing path is not judged by the prober (it is not probed over a path not yet built)
    probing = Path("sym", Mode.PROBING, key("s1"), CAND.endpoint, since=10, since_wall=1010)
    assert paths.step({"sym": probing}, [CAND], {}, 10.1, 1010.1, S, "cone",
                      down={"sym"})["sym"].mode == Mode.PROBING


class FakeProber:
    def __init__(self) -> None:
        self.targets: tuple[Target, ...] = ()
        self.verdict: dict[tuple[str, str], Verdict] = {}
        self.replies: dict[tuple[str, str], int] = {}

    def set_targets(self, targets: object, source: object, netns: object = None) -> None:
        self.targets = tuple(targets)  # type: ignore[call-overload]
        self.netns = netns

    def verdicts(self) -> dict[tuple[str, str], Verdict]:
        return {(t.pool, t.node): self.verdict.get((t.pool, t.node), Verdict.UNKNOWN)
                for t in self.targets}

    def claims(self) -> dict:
        return {}

    def heard(self) -> dict[tuple[str, str], bool]:
        return {k: True for k in self.verdicts()}

    def report(self) -> list[dict[str, object]]:
        return [{"pool": t.pool, "node": t.node, "verdict": str(v),
                 "replies": self.replies.get((t.pool, t.node), 0)}
                for t in self.targets
                for v in [self.verdict.get((t.pool, t.node), Verdict.UNKNOWN)]]


def test_direct_path_verdicts_drive_the_path_not_the_pools_gateway() -> None:
    gws = fleet()  # seen from s1 (pool sym), direct to cone's active gateway k1
    prober = FakeProber()
    fo = ProbeFailover(AgentSettings(node="s1"), prober)  # type: ignore[arg-type]
    state = standby.warm(plan_node(gws, "s1"), gws, "s1")
    fo.retarget(gws, state)
    assert not any(pool == "cone" for pool, _ in prober.verdicts())
    fo.set_direct({"cone": "k1"})  # retargets at once with the last plan
    assert set(prober.verdicts()) >= {("cone", "k1")} and fo.direct_down() == set()
    assert ("cone", "k2") not in prober.verdicts()  # the standby is not reachable over it
    prober.verdict[("cone", "k1")] = Verdict.DOWN  # after 600 unanswered probes
    assert fo.direct_down() == set()  # never answered over the path (an older far agent)
    prober.replies[("cone", "k1")] = 12  # it answered, then stopped
    assert fo.direct_down() == {"cone"}
    # Nobody's gateway moves on it: k1 may be alive with only the path broken (a NAT rebound);
    # the same DOWN as an ordinary verdict would make cone's gateway k2 here.
    assert fo.effective(gws, 1000.0) == gws
    moved, _ = failover.effective_gateways(gws, {("cone", "k1"): Verdict.DOWN}, "s1")
    assert moved != gws
    fo.set_direct({})  # no longer direct: no longer probed, its verdict forgotten
    assert ("cone", "k1") not in prober.verdicts() and fo.direct_down() == set()
