"""The agent's and the controller's pure steps: timing rules without root, threads or sleeps.

Each test drives `step` with an explicit monotonic `now` and feeds back outcomes the way the
runners do, so burst coalescing, backoff, the start from the offline cache, the heartbeat and
leader loss are checked exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raven import agent_step, controller_step
from raven.agent_step import (
    AgentState,
    Apply,
    Inputs,
    Observation,
    PublishKey,
    RefreshStats,
    SaveCache,
)
from raven.controller_step import Action, ControllerState
from raven.desired import NodeState, Role
from raven.kube.backoff import BackoffSettings
from raven.model import Node
from raven.settings import AgentSettings, ControllerSettings, LeaderSettings

S = AgentSettings(node="n1", resync_period=30.0, coalesce=0.05, stats_period=10.0,
                  heartbeat_period=5.0, backoff=BackoffSettings(initial=0.2, maximum=10.0))
NODE = {"metadata": {"name": "n1"}}
GW_A = {"metadata": {"name": "gw-a"}}
GW_B = {"metadata": {"name": "gw-b"}}


def live(*gateways: dict) -> Inputs:
    return Inputs(NODE, tuple(gateways), "api")


def kinds(actions: tuple[object, ...]) -> list[str]:
    return [type(a).__name__ for a in actions]


def run_ok(state: AgentState, seen: Observation, now: float) -> tuple[AgentState, list[object]]:
    """One step with every action succeeding, as the runner reports it."""
    decided = agent_step.step(state, seen, now, S)
    state = decided.state
    for action in decided.actions:
        if isinstance(action, Apply):
            state = agent_step.applied(state, action.inputs, True, now, S, 0.5)
        elif isinstance(action, SaveCache):
            state = agent_step.saved(state, action.inputs)
        elif isinstance(action, PublishKey):
            state = agent_step.published(state, True, now, S, 0.5)
    return state, list(decided.actions)


# -- agent -------------------------------------------------------------------------------------

def test_first_live_inputs_are_cached_applied_published_and_observed() -> None:
    state, actions = run_ok(AgentState(), Observation(live(GW_A)), 100.0)
    assert kinds(actions) == ["SaveCache", "Apply", "PublishKey", "RefreshStats"]
    decided = agent_step.step(state, Observation(live(GW_A)), 100.0, S)
    assert decided.actions == ()  # nothing changed: nothing to do
    assert decided.deadline == 110.0  # the next stats refresh comes before the resync


def test_a_burst_of_events_becomes_one_apply_after_the_window() -> None:
    state, _ = run_ok(AgentState(), Observation(live(GW_A)), 100.0)
    inputs = live(GW_A, GW_B)
    applies = 0
    for i in range(20):  # 20 events 1 ms apart, all inside the 50 ms window
        decided = agent_step.step(state, Observation(inputs, woke=True), 101.0 + i / 1000, S)
        state = decided.state
        applies += sum(isinstance(a, Apply) for a in decided.actions)
        assert decided.deadline == 101.05
    assert applies == 0
    state, actions = run_ok(state, Observation(inputs), 101.05)
    assert kinds(actions).count("Apply") == 1
    assert actions[kinds(actions).index("Apply")] == Apply(inputs)
    _, again = run_ok(state, Observation(inputs, woke=True), 101.2)  # a new window opens
    assert again == []


def test_failed_apply_backs_off_exponentially_and_success_resets() -> None:
    state = AgentState()
    delays = []
    now = 0.0
    for _ in range(8):
        decided = agent_step.step(state, Observation(live(GW_A)), now, S)
        (apply,) = [a for a in decided.actions if isinstance(a, Apply)]
        state = agent_step.applied(decided.state, apply.inputs, False, now, S, jitter=1.0)
        delays.append(state.next_resync - now)
        assert agent_step.step(state, Observation(live(GW_A)), now, S).deadline <= (
            state.next_resync)
        assert not any(isinstance(a, Apply) for a in agent_step.step(
            state, Observation(live(GW_A)), state.next_resync - 0.01, S).actions)
        now = state.next_resync
    assert delays == pytest.approx([0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])  # full delay
    state = agent_step.applied(state, Inputs(NODE, (GW_A,), "api"), True, now, S, 0.0)
    assert state.failures == 0 and state.next_resync == now + S.resync_period


def test_inputs_that_changed_after_a_failure_are_tried_at_once() -> None:
    decided = agent_step.step(AgentState(), Observation(live(GW_A)), 0.0, S)
    state = agent_step.applied(decided.state, live(GW_A), False, 0.0, S, 1.0)
    decided = agent_step.step(state, Observation(live(GW_A, GW_B)), 0.01, S)
    assert Apply(live(GW_A, GW_B)) in decided.actions


def test_backoff_jitter_comes_from_the_runner() -> None:
    low = agent_step.applied(AgentState(), live(), False, 0.0, S, jitter=0.0)
    high = agent_step.applied(AgentState(), live(), False, 0.0, S, jitter=0.999)
    assert 0 < low.next_resync < high.next_resync <= 0.4


def test_start_from_the_offline_cache_then_keep_reapplying_it_while_offline() -> None:
    cached = Inputs(NODE, (GW_A,), "cache")
    state, actions = run_ok(AgentState(), Observation(None, cached=cached), 0.0)
    assert actions[0] == Apply(cached)
    assert state.applied == cached and state.applied_key is None
    # Offered again on the next turns (the runner passes it until something was applied),
    # the cache is not applied twice; only the resync period re-applies it.
    decided = agent_step.step(state, Observation(None, cached=None), 1.0, S)
    assert not any(isinstance(a, Apply) for a in decided.actions)
    assert decided.deadline == 1.0 + agent_step.UNSYNCED_POLL  # look for the first list soon
    _, later = run_ok(state, Observation(None), 30.0)
    assert Apply(cached) in later
    # The API answers with the same objects: applied once more, now as confirmed by the API.
    state, actions = run_ok(state, Observation(live(GW_A)), 31.0)
    assert Apply(live(GW_A)) in actions and SaveCache(live(GW_A)) in actions


def test_a_refused_cache_is_not_offered_again() -> None:
    cached = Inputs(NODE, (GW_A,), "cache")
    decided = agent_step.step(AgentState(), Observation(None, cached=cached), 0.0, S)
    state = agent_step.applied(decided.state, cached, False, 0.0, S, 0.5)
    decided = agent_step.step(state, Observation(None, cached=cached), 0.1, S)
    assert not any(isinstance(a, Apply) for a in decided.actions)


def test_drift_forces_an_apply_of_unchanged_inputs() -> None:
    state, _ = run_ok(AgentState(), Observation(live(GW_A)), 0.0)
    state, actions = run_ok(state, Observation(live(GW_A), woke=True, drifted=True), 1.0)
    assert actions == []  # inside the burst window
    state, actions = run_ok(state, Observation(live(GW_A)), 1.05)
    assert Apply(live(GW_A)) in actions and RefreshStats() in actions
    _, actions = run_ok(state, Observation(live(GW_A)), 1.1)
    assert actions == []  # repaired once, not forever


def test_publish_failure_is_retried_sooner_than_the_resync() -> None:
    state, _ = run_ok(AgentState(), Observation(live(GW_A)), 0.0)
    state = agent_step.published(state, False, 0.0, S, 1.0)
    assert 0 < state.next_publish <= S.backoff.maximum < S.resync_period


def test_heartbeat_renews_each_period_and_retries_failures_with_backoff() -> None:
    beat = agent_step.HeartbeatState()
    beat, delay = agent_step.heartbeat_result(beat, True, S, 0.5)
    assert delay == S.heartbeat_period
    delays = []
    for _ in range(6):
        beat, delay = agent_step.heartbeat_result(beat, False, S, 1.0)
        delays.append(delay)
    assert delays == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]  # never slower than the period
    assert agent_step.heartbeat_result(beat, True, S, 0.5) == (agent_step.HeartbeatState(), 5.0)
    assert agent_step.heartbeat_poll(S) <= agent_step.CANDIDATE_POLL


def _node(name: str) -> Node:
    return Node.from_k8s({"metadata": {"name": name}, "status": {"addresses": [
        {"type": "InternalIP", "address": "192.0.2.1"}]}})


def test_a_cached_plan_that_would_tear_down_the_data_plane_is_refused() -> None:
    member = NodeState(node="n1", role=Role.MEMBER, pool="gw-a", vxlan=None)
    alone = NodeState(node="n1", role=Role.ALONE, pool=None, vxlan=None)
    assert agent_step.cache_refusal([], _node("n1"), member) is None
    assert "unreadable" in (agent_step.cache_refusal(["Gateway x: bad"], _node("n1"), member)
                            or "")
    assert "no Node n1" in (agent_step.cache_refusal([], "n1", member) or "")
    assert "no pool" in (agent_step.cache_refusal([], _node("n1"), alone) or "")


# -- controller --------------------------------------------------------------------------------

C = ControllerSettings(leader=LeaderSettings(lease_duration=15, renew_period=5.0,
                                             retry_period=2.0), resync_period=5.0, coalesce=0.05)


def drive(state: ControllerState, seen: controller_step.Observation, now: float,
          lead: bool = True) -> tuple[ControllerState, list[Action]]:
    """Steps until nothing is due at `now`; TRY_LEAD returns `lead`."""
    done: list[Action] = []
    for _ in range(10):
        decided = controller_step.step(state, seen, now, C)
        if not decided.actions:
            return decided.state, done
        state = decided.state
        for action in decided.actions:
            done.append(action)
            if action is Action.TRY_LEAD:
                state = controller_step.after_election(state, lead, now, C)
            else:
                state = controller_step.reconciled(state, now, C)
        seen = replace(seen, woke=False)
    raise AssertionError("step never settles")


def test_gaining_leadership_reconciles_at_once_then_every_resync() -> None:
    synced = controller_step.Observation(synced=True)
    state, done = drive(ControllerState(), synced, 0.0)
    assert done == [Action.TRY_LEAD, Action.RECONCILE]
    state, done = drive(state, synced, 4.9)
    assert done == []
    state, done = drive(state, synced, 5.0)
    assert done == [Action.TRY_LEAD, Action.RECONCILE]  # renewal first, then the resync


def test_controller_coalesces_a_burst_into_one_reconcile() -> None:
    state, _ = drive(ControllerState(), controller_step.Observation(synced=True), 0.0)
    reconciles = 0
    for i in range(10):
        state, done = drive(state, controller_step.Observation(woke=True, synced=True),
                            1.0 + i / 1000)
        reconciles += done.count(Action.RECONCILE)
    assert reconciles == 0
    state, done = drive(state, controller_step.Observation(synced=True), 1.05)
    assert done == [Action.RECONCILE]


def test_a_standby_never_reconciles_and_retries_the_lease() -> None:
    state, done = drive(ControllerState(), controller_step.Observation(woke=True, synced=True),
                        0.0, lead=False)
    assert done == [Action.TRY_LEAD]
    decided = controller_step.step(state, controller_step.Observation(woke=True, synced=True),
                                   1.0, C)
    assert decided.actions == () and decided.deadline == 2.0  # retry period


def test_leader_loss_drops_pending_work() -> None:
    state, _ = drive(ControllerState(), controller_step.Observation(synced=True), 0.0)
    state, _ = drive(state, controller_step.Observation(woke=True, synced=True), 4.99)
    assert state.burst_until is not None
    state, done = drive(state, controller_step.Observation(synced=True), 5.0, lead=False)
    assert done == [Action.TRY_LEAD]  # lost at the renewal: the open burst is not reconciled
    assert not state.leader and state.burst_until is None
    _, done = drive(state, controller_step.Observation(woke=True, synced=True), 6.0, lead=False)
    assert Action.RECONCILE not in done


def test_an_unsynced_leader_waits_for_its_lists() -> None:
    state, done = drive(ControllerState(), controller_step.Observation(synced=False), 0.0)
    assert done == [Action.TRY_LEAD]
    decided = controller_step.step(state, controller_step.Observation(synced=False), 0.1, C)
    assert decided.actions == () and decided.deadline <= 0.1 + controller_step.UNSYNCED_POLL
    _, done = drive(state, controller_step.Observation(synced=True), 0.2)
    assert done == [Action.RECONCILE]


def test_only_heartbeats_that_can_change_an_election_wake_the_controller() -> None:
    wakes = controller_step.heartbeat_wakes
    assert wakes(None, 100.0, 15.0)  # a new heartbeat
    assert wakes(100.0, None, 15.0)  # deleted
    assert not wakes(100.0, 105.0, 15.0)  # routine renewal
    assert wakes(100.0, 200.0, 15.0)  # back after being stale
