"""raven.path_agent with a fake agent and a fake WireGuard device: what the runner does with the
pure machine's decisions (publishes, applies, the take-over write, adoption after a restart).
No root, no clock: `tick(now, wall)` is driven by the test."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

from test_paths import KEY_A, KEY_B, KEY_C, _fleet

from raven import paths
from raven.dataplane.wireguard.model import LivePeer
from raven.path_agent import IDLE_POLL, LEARN_FAST, POLL, PathManager
from raven.topology import plan_node


@dataclass
class FakeDataplane:
    live: dict[str, LivePeer] = field(default_factory=dict)
    taken: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    taken_at: list[float | None] = field(default_factory=list)
    renewed: list[list[str]] = field(default_factory=list)
    nudged: list[list[str]] = field(default_factory=list)

    def wireguard_peers(self) -> dict[str, LivePeer]:
        return dict(self.live)

    def take_allowed_ips(self, key: str, cidrs: tuple[str, ...], at: float | None = None
                         ) -> None:
        self.taken.append((key, cidrs))
        self.taken_at.append(at)

    def nudge(self, source: str, targets: list[str]) -> int:
        self.nudged.append(targets)
        return len(targets)

    def renew_peers(self, keys: list[str]) -> list[str]:
        self.renewed.append(keys)
        return keys


class FakeAgent:
    def __init__(self, node: str = "a1") -> None:
        self.settings = SimpleNamespace(node=node, overlay=None)
        self.dataplane = FakeDataplane()
        self.gateways = _fleet()
        self.inputs = object()
        self.applied: list[dict] = []
        self.published: list[dict] = []
        self.observed: list[dict] = []
        self.reports: list[list] = []
        self.state = plan_node(self.gateways, node)
        self.lock = threading.RLock()
        self.probes = None  # no data-path prober (raven.agent_failover)

    def path_switch(self) -> threading.RLock:
        return self.lock

    def apply_paths(self, plans: dict) -> bool:
        self.applied.append(plans)
        self.state = plan_node(self.gateways, self.settings.node, paths=plans)
        return True

    def peer_subnets(self, plans: dict) -> dict:
        state = plan_node(self.gateways, self.settings.node, paths=plans)
        return {p.public_key: p.allowed_ips for p in state.wireguard.peers}

    def record_paths(self, report: list) -> None:
        self.reports.append(report)

    def publish_paths(self, compact: dict) -> bool:
        self.published.append(compact)
        return True

    def publish_observed(self, observed: dict) -> bool:
        self.observed.append(observed)
        return True

    def publish_relay_rtts(self, rtts: dict) -> bool:
        self.published.append({"rtt": rtts})
        return True


def manager(agent: FakeAgent) -> PathManager:
    m = PathManager(agent)  # type: ignore[arg-type]
    m._gateways_for = agent.inputs  # the fake hands over parsed Gateways directly
    m._gateways = agent.gateways
    return m


def peer(key: str, ips: tuple[str, ...] = (), handshake: float = 0.0, rx: int = 0,
         keepalive: int = 1) -> LivePeer:
    return LivePeer(key, "198.19.0.14:4500", frozenset(ips), keepalive, None, handshake, rx)


def test_probe_handshake_take_over_and_nudges() -> None:
    agent = FakeAgent()
    m = manager(agent)
    m.tick(10.0, 1000.0)
    assert agent.applied[-1] == {"gw-b": paths.PathPlan("gw-b", KEY_B, "198.19.0.14:4500",
                                                         False)}
    assert agent.published == []  # the path thread only queues API writes
    assert m.flush_outbox() and agent.published[-1] == {"gw-b": {"path": "probing",
                                                                  "via": "gw-cloud"}}
    agent.dataplane.live = {KEY_B: peer(KEY_B, handshake=1000.5, rx=92)}
    deadline = m.tick(10.6, 1000.6)
    switch = m.paths["gw-b"].switch_at
    assert switch is not None and deadline == min(10.6 + 0.2, switch)
    assert m._prepared["gw-b"] == ("10.244.20.0/24",)  # computed ahead of the instant
    m.tick(switch, 1001.5)
    m.flush_outbox()
    # First thing at the instant: the one prepared write; then the plan with the path direct.
    assert agent.dataplane.taken == [(KEY_B, ("10.244.20.0/24",))]
    assert agent.applied[-1] == {"gw-b": paths.PathPlan("gw-b", KEY_B, None, True)}
    # Written at the change with the direct peer's handshake and counters of that moment.
    assert agent.published[-1] == {"gw-b": {"path": "direct", "handshake": 1000,
                                            "rxBytes": 92, "txBytes": 0}}
    assert agent.dataplane.nudged[-1] == ["10.244.20.1"]
    writes = len(agent.published)
    agent.dataplane.live = {KEY_B: peer(KEY_B, ("10.244.20.0/24",), 1000.5, 500)}
    recorded = len(agent.reports)
    m.tick(switch + 0.1, 1001.6)
    m.tick(switch + 0.3, 1001.8)
    m.flush_outbox()
    assert len(agent.published) == writes  # counters moved, the path did not: no write
    # Nor is the status file: the report carries no clock or counter (changedAt is the
    # instant the path went direct).
    assert len(agent.reports) == recorded
    assert agent.reports[-1][0]["mode"] == "direct"
    assert agent.reports[-1][0]["changedAt"] == round(1000.0 + (switch - 10.0))
    # Silence: back to the relay, and the far side is told through the annotation.
    agent.dataplane.live = {KEY_B: peer(KEY_B, ("10.244.20.0/24",), 1000.5, 92)}
    m.tick(switch + 0.2, 1001.7)
    m.tick(switch + 0.2 + paths.PathSettings().dead_after, 1003.3)
    m.flush_outbox()
    assert agent.applied[-1] == {}
    assert agent.published[-1] == {"gw-b": {"path": "relayed", "via": "gw-cloud"}}


def test_the_move_holds_the_reconcile_lock_from_commit_and_writes_at_its_instant() -> None:
    agent = FakeAgent()
    m = manager(agent)
    m.tick(10.0, 1000.0)
    agent.dataplane.live = {KEY_B: peer(KEY_B, handshake=1000.5, rx=92)}
    deadline = m.tick(10.6, 1000.6)
    switch = m.paths["gw-b"].switch_at
    assert switch is not None and deadline == 10.6 + 0.2
    assert m.tick(deadline, 1000.8) == switch - m.settings.commit
    agent.dataplane.live = {}  # no read happens from here: a read now would see nothing
    held = []
    real = agent.lock

    class Lock:
        def __enter__(self) -> None:
            real.acquire()
            held.append(True)

        def __exit__(self, *exc: object) -> None:
            held.append(False)
            real.release()

    agent.path_switch = lambda: Lock()  # type: ignore[method-assign]
    agent.apply_paths = lambda plans: (held.append(plans), FakeAgent.apply_paths(  # type: ignore[method-assign]
        agent, plans))[1]
    m.tick(switch - m.settings.commit, 1001.0)
    # The write waits for the instant (the data plane sleeps until `at`); the reconcile with
    # the path direct follows inside the same hold of the lock.
    assert agent.dataplane.taken == [(KEY_B, ("10.244.20.0/24",))]
    assert agent.dataplane.taken_at == [switch]
    assert held == [True, {"gw-b": paths.PathPlan("gw-b", KEY_B, None, True)}, False]
    assert m.paths["gw-b"].mode == paths.Mode.DIRECT and m.paths["gw-b"].since == switch


def test_a_peer_without_a_first_handshake_is_made_afresh_after_renew_after() -> None:
    # The NAT'd gateway's relay peer (endpoint, keepalive) lost its first initiation: renewed
    # after `renew_after`, not left to WireGuard's 5 s retry; a peer that answered is not.
    agent = FakeAgent()
    m = manager(agent)
    agent.dataplane.live = {KEY_C: peer(KEY_C, ("10.244.0.0/24",), keepalive=25),
                            KEY_B: peer(KEY_B, handshake=999.0)}
    first = m.settings.renew_after
    assert m.tick(10.0, 1000.0) <= 10.0 + first
    m.tick(10.0 + first - 0.1, 1000.0 + first - 0.1)
    assert agent.dataplane.renewed == []
    renewed_at = 10.0 + first
    assert m.tick(renewed_at, 1000.0 + first) <= renewed_at + 2 * first
    assert agent.dataplane.renewed == [[KEY_C]]
    m.tick(renewed_at + 2 * first - 0.1, 1001.5)
    assert agent.dataplane.renewed == [[KEY_C]]  # waits again from the renewal, twice as long
    agent.dataplane.live[KEY_C] = peer(KEY_C, ("10.244.0.0/24",), handshake=1001.6,
                                       keepalive=25)
    m.tick(renewed_at + 2 * first, 1002.5)
    assert agent.dataplane.renewed == [[KEY_C]] and m._waiting == {}


def test_public_gateway_publishes_what_it_sees_of_nat_peers() -> None:
    agent = FakeAgent("c1")
    m = manager(agent)
    agent.dataplane.live = {KEY_A: LivePeer(KEY_A, "198.19.0.10:4500", frozenset(), 0, None),
                            KEY_B: LivePeer(KEY_B, "198.19.0.14:31000", frozenset(), 0, None)}
    m.tick(1.0, 1000.0)
    m.flush_outbox()
    assert agent.observed == [{KEY_A: "198.19.0.10:4500", KEY_B: "198.19.0.14:31000"}]
    m.tick(2.0, 1001.0)
    m.flush_outbox()
    assert len(agent.observed) == 1  # unchanged: not written again
    assert agent.applied == []


def test_public_gateway_polls_fast_only_while_a_new_nat_peer_is_unheard() -> None:
    agent = FakeAgent("c1")
    m = manager(agent)
    # Configured for the NAT'd gateways, none heard yet: read again soon.
    agent.dataplane.live = {k: LivePeer(k, None, frozenset(), 0, None) for k in (KEY_A, KEY_B)}
    assert m.tick(1.0, 1000.0) == 1.0 + POLL
    agent.dataplane.live[KEY_A] = LivePeer(KEY_A, "198.19.0.10:4500", frozenset(), 0, None)
    assert m.tick(1.2, 1000.2) == 1.2 + POLL  # KEY_B still unheard
    # A NAT'd gateway that stays silent does not keep the public gateway polling fast.
    assert m.tick(1.0 + LEARN_FAST, 1000.0 + LEARN_FAST) == 1.0 + LEARN_FAST + IDLE_POLL
    agent.dataplane.live[KEY_B] = LivePeer(KEY_B, "198.19.0.14:31000", frozenset(), 0, None)
    assert m.tick(12.0, 1011.0) == 12.0 + IDLE_POLL


def test_restart_adopts_a_working_direct_path_and_not_a_stale_one() -> None:
    agent = FakeAgent()
    agent.dataplane.live = {
        KEY_B: peer(KEY_B, ("10.244.20.0/24",), handshake=990.0, rx=5000),
        KEY_C: peer(KEY_C, ("10.244.0.0/24",), handshake=990.0, keepalive=25),
    }
    m = manager(agent)
    plans = m.adopt(agent.gateways, 50.0, 1000.0)
    assert plans == {"gw-b": paths.PathPlan("gw-b", KEY_B, None, True)}
    agent.dataplane.live[KEY_B] = peer(KEY_B, ("10.244.20.0/24",), handshake=500.0)
    assert manager(agent).adopt(agent.gateways, 50.0, 1000.0) == {}  # too old: probe again


def test_nat_gateway_measures_and_publishes_relay_rtts_when_they_move() -> None:
    agent = FakeAgent()
    rtts = iter([10.0, 10.5, 30.0])
    agent.dataplane.rtt_ms = lambda address: next(rtts)  # type: ignore[attr-defined]
    echoes = iter([(4.0, 3), (None, 0), (6.0, 3)])
    sent: list[tuple[str, str | None]] = []
    agent.dataplane.echo = lambda address, tries, source=None: (  # type: ignore[attr-defined]
        sent.append((address, source)), next(echoes))[1]
    m = manager(agent)
    m._my_subnets = lambda: ("10.244.10.0/24",)  # type: ignore[method-assign]
    m.measure_relays()
    m.flush_outbox()
    assert agent.published[-1] == {"rtt": {"gw-cloud": 10.0}}
    m.measure_relays()  # 10.15 smoothed: not worth a write
    m.flush_outbox()
    assert len(agent.published) == 1
    m.measure_relays()  # a real move: published
    m.flush_outbox()
    assert agent.published[-1]["rtt"]["gw-cloud"] > 15
    # The path to the NAT'd pool gw-b was measured through the tunnel each time (our
    # gateway's first pod-subnet address to theirs): RTT smoothed over the answers, loss over
    # every measurement.
    assert sent == [("10.244.20.1", "10.244.10.1")] * 3
    rtt, loss = m.figures["gw-b"]
    assert rtt == 4.0 + 0.3 * (6.0 - 4.0)
    assert loss == (0.0 + 0.3 * (1.0 - 0.0)) * (1 - 0.3)
    # Published with the path: a relayed pair carries the RTT through the relay.
    m.paths = {"gw-b": paths.Path("gw-b", public_key=KEY_B)}
    assert m._compact(agent.state)["gw-b"] == {"path": "relayed", "via": "gw-cloud",
                                               "rttMs": round(rtt, 2), "loss": round(loss, 3)}


def test_a_failed_api_write_stays_queued_and_the_newest_value_wins() -> None:
    agent = FakeAgent()
    results = iter([False, True])
    sent: list[dict] = []
    agent.publish_paths = lambda v: sent.append(v) or next(results)  # type: ignore[method-assign]
    m = manager(agent)
    m._queue("paths", {"gw-b": "probing"})
    assert not m.flush_outbox()  # the API refused: kept
    m._queue("paths", {"gw-b": "direct"})
    assert m.flush_outbox()
    assert sent == [{"gw-b": "probing"}, {"gw-b": "direct"}]
