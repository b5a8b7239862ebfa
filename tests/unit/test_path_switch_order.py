"""The scheduled relay -> direct move against the agent's own reconciles: the real `Agent` with a
fake WireGuard device that records who owns the remote pool's subnets (no root, no clock).

The race this guards against: a reconcile of the main loop, planned while the path was still
probing (subnets on the relay peer), applied after the path thread's take-over write and gave
the subnets back to the relay until the path thread's own apply, so packets were lost on a
loaded machine. The path thread now holds the agent's reconcile lock across the move."""

from __future__ import annotations

import threading
from pathlib import Path

from test_paths import KEY_B, KEY_C, _fleet

from raven.agent import Agent
from raven.agent_step import Inputs
from raven.dataplane.dataplane import ApplyResult
from raven.dataplane.wireguard.model import LivePeer
from raven.settings import AgentSettings

SUBNET_B = "10.244.20.0/24"  # gw-b's pod subnet: on the relay (gw-cloud, KEY_C) until direct
WAIT = 30.0  # a guard against a hang, never reached when the code is right


class Device:
    """Who holds SUBNET_B after each write, in the order the writes reached the device."""

    def __init__(self, progressed: threading.Event) -> None:
        self.owner: str | None = None
        self.log: list[tuple[str, str | None]] = []
        self.live: dict[str, LivePeer] = {}
        self.hold = threading.Event()  # set: the next apply stops until `release`
        self.applying = threading.Event()
        self.release = threading.Event()
        self.progressed = progressed

    def apply(self, state) -> ApplyResult:
        owner = next((p.public_key for p in state.wireguard.peers
                      if SUBNET_B in p.allowed_ips), None)
        if self.hold.is_set():
            self.hold.clear()
            self.applying.set()
            assert self.release.wait(WAIT)
        self.owner = owner
        self.log.append(("apply", owner))
        return ApplyResult(0, ())

    def take_allowed_ips(self, key: str, cidrs: tuple[str, ...], at: float | None = None
                         ) -> None:
        if SUBNET_B in cidrs:
            self.owner = key
        self.log.append(("take", key))
        self.progressed.set()

    def wireguard_peers(self) -> dict[str, LivePeer]:
        return dict(self.live)

    def nudge(self, source: str, targets: list[str]) -> int:
        return len(targets)


class WatchedLock:
    """The agent's reconcile lock, telling when a second thread has to wait for it."""

    def __init__(self, contended: threading.Event) -> None:
        self._lock = threading.RLock()
        self.contended = contended

    def __enter__(self) -> WatchedLock:
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_reconcile_in_flight_at_the_switch_cannot_give_the_subnets_back(tmp_path: Path
                                                                           ) -> None:
    progressed = threading.Event()  # the path thread took over, or waits for the lock
    agent = Agent(AgentSettings(node="a1", state_dir=tmp_path))
    agent.dataplane.close()
    device = Device(progressed)
    agent.dataplane = device  # type: ignore[assignment]
    agent._reconcile_lock = WatchedLock(progressed)  # type: ignore[assignment]
    inputs = Inputs(None, tuple(g.to_k8s() for g in _fleet()), "api")
    assert agent.reconcile(inputs, 1000.0)
    m = agent.paths
    m.tick(10.0, 1000.0)  # probing gw-b
    device.live = {KEY_B: LivePeer(KEY_B, "198.19.0.14:4500", frozenset(), 1, None, 1000.5, 92)}
    m.tick(10.6, 1000.6)  # the handshake: the move is scheduled
    switch = m.paths["gw-b"].switch_at
    assert switch is not None and device.owner == KEY_C

    # The main loop starts a reconcile (paths still probing) and is slow to apply it ...
    device.hold.set()
    loop = threading.Thread(target=agent.reconcile, args=(inputs, 1001.4))
    loop.start()
    assert device.applying.wait(WAIT)
    # ... while the path thread reaches the instant of the move.
    mover = threading.Thread(target=m.tick, args=(switch, 1001.5))
    mover.start()
    assert progressed.wait(WAIT)
    device.release.set()
    loop.join(WAIT)
    mover.join(WAIT)
    assert not loop.is_alive() and not mover.is_alive()

    # The in-flight reconcile applied its plan (relay) BEFORE the take-over; after the
    # take-over the subnets never went back to the relay.
    first_take = device.log.index(("take", KEY_B))
    assert ("apply", KEY_C) in device.log[:first_take]
    assert all(owner == KEY_B for _, owner in device.log[first_take:]), device.log
    assert device.owner == KEY_B and m.paths["gw-b"].mode == "direct"
