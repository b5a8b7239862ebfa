"""The agent's and the controller's pure steps: timing rules without root, threads or sleeps.

Each test drives `step` with an explicit monotonic `now` and feeds back outcomes the way the
runners do, so burst coalescing, backoff, the start from the offline cache, the heartbeat and
leader loss are checked exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raven import agent_step, controller_step, publisher
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


def test_publish_failure_is_retried_sooner_than_the_resync_and_success_resets() -> None:
    state, actions = run_ok(AgentState(), Observation(live(GW_A)), 0.0)
    assert PublishKey() in actions and state.publish.due == S.resync_period
    delays, now = [], S.resync_period
    for _ in range(4):
        decided = agent_step.step(state, Observation(live(GW_A)), now, S)
        assert PublishKey() in decided.actions
        state = agent_step.published(decided.state, False, now, S, 1.0)
        assert agent_step.step(state, Observation(live(GW_A)), now, S).deadline <= (
            state.publish.due)
        assert PublishKey() not in agent_step.step(
            state, Observation(live(GW_A)), state.publish.due - 0.01, S).actions
        delays.append(state.publish.due - now)
        now = state.publish.due
    # the key's first retry waits 8x the initial backoff, then doubles up to the maximum
    assert delays == pytest.approx([1.6, 3.2, 6.4, 10.0])
    state = agent_step.published(state, True, now, S, 1.0)
    assert state.publish == publisher.PublishState(now + S.resync_period, 0)


def test_heartbeat_renews_each_period_while_a_candidate_and_backs_off_capped() -> None:
    hb = agent_step.heartbeat_schedule(S)
    beat = publisher.PublishState()
    assert publisher.poll(beat, 0.0, active=False) == (False, None)  # not a candidate: wait
    beat = publisher.ask(beat, 3.0)  # became a candidate (an event): renew at once
    assert publisher.poll(beat, 3.0, active=True)[0]
    beat = publisher.result(beat, True, 3.0, hb, 0.5)
    assert publisher.poll(beat, 7.99, active=True) == (False, 8.0)  # every period
    assert publisher.poll(beat, 8.0, active=True)[0]
    now, delays = 8.0, []
    for _ in range(6):
        beat = publisher.result(beat, False, now, hb, 1.0)
        delays.append((beat.due or 0.0) - now)
        now = beat.due or 0.0
    assert delays == pytest.approx([0.4, 0.8, 1.6, 3.2, 5.0, 5.0])  # never slower than the period
    beat = publisher.result(beat, True, now, hb, 1.0)
    assert beat == publisher.PublishState(now + S.heartbeat_period, 0)


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
                state = controller_step.reconciled(state, True, now, C, 0.5)
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


def test_an_event_in_the_turn_of_a_lease_renewal_is_not_lost() -> None:
    synced = controller_step.Observation(synced=True)
    state, _ = drive(ControllerState(), synced, 0.0)
    state = replace(state, resync=publisher.PublishState(9.0, 0))  # no resync due before 9 s
    # the event arrives exactly when the renewal is due: the step renews first, then the
    # burst it opened is reconciled once its window closes (not at the next resync)
    state, done = drive(state, controller_step.Observation(woke=True, synced=True), 5.0)
    assert done == [Action.TRY_LEAD]
    _, done = drive(state, synced, 5.1)
    assert done == [Action.RECONCILE]


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


def drive_failing(state: ControllerState, now: float) -> ControllerState:
    """Steps at `now` with the lease renewed and every reconcile failing."""
    seen = controller_step.Observation(synced=True)
    for _ in range(10):
        decided = controller_step.step(state, seen, now, C)
        if not decided.actions:
            return decided.state
        state = decided.state
        for action in decided.actions:
            if action is Action.TRY_LEAD:
                state = controller_step.after_election(state, True, now, C)
            else:
                state = controller_step.reconciled(state, False, now, C, 1.0)
    raise AssertionError("step never settles")


def test_a_failed_reconcile_backs_off_never_past_the_resync_and_success_resets() -> None:
    synced = controller_step.Observation(synced=True)
    state, _ = drive(ControllerState(), synced, 0.0)
    state = controller_step.reconciled(state, False, 0.0, C, 1.0)
    delays, now = [], 0.0
    for _ in range(6):
        delays.append((state.resync.due or 0.0) - now)
        assert controller_step.step(state, synced, now, C).deadline <= (state.resync.due or 0.0)
        now = state.resync.due or 0.0
        state = drive_failing(state, now)
    assert delays == pytest.approx([0.4, 0.8, 1.6, 3.2, 5.0, 5.0])  # capped at the resync
    assert state.resync.failures == 7
    # events still reconcile at the end of their burst while it backs off
    state, done = drive(state, controller_step.Observation(woke=True, synced=True), now + 0.01)
    state, done = drive(state, synced, now + 0.1)
    assert done == [Action.RECONCILE]
    assert state.resync == publisher.PublishState(now + 0.1 + C.resync_period, 0)


# -- each timing test above can fail: it does against a deliberately broken step ---------------

_real = {
    "agent_step": agent_step.step, "applied": agent_step.applied,
    "controller_step": controller_step.step, "result": publisher.result, "poll": publisher.poll,
}


def _ignores_leadership(state: ControllerState, seen: controller_step.Observation, now: float,
                        s: ControllerSettings) -> controller_step.Step:
    decided = _real["controller_step"](replace(state, leader=True), seen, now, s)
    return replace(decided, state=replace(decided.state, leader=state.leader))


# Broken variants keep the real signatures (the tests pass some arguments by keyword).
BROKEN = {
    "no coalescing": (agent_step, "step", lambda state, seen, now, s: _real["agent_step"](
        state, seen, now, replace(s, coalesce=0.0))),
    "controller: no coalescing": (controller_step, "step", lambda state, seen, now, s: _real[
        "controller_step"](state, seen, now, replace(s, coalesce=0.0))),
    "apply: no growth": (agent_step, "applied", lambda state, inputs, ok, now, s, jitter: _real[
        "applied"](replace(state, failures=0), inputs, ok, now, s, jitter)),
    "apply: no reset": (agent_step, "applied", lambda state, inputs, ok, now, s, jitter: replace(
        _real["applied"](state, inputs, ok, now, s, jitter), failures=state.failures)),
    "cache ignored": (agent_step, "step", lambda state, seen, now, s: _real["agent_step"](
        state, replace(seen, cached=None), now, s)),
    "publisher: no growth": (publisher, "result", lambda state, ok, now, s, jitter: _real[
        "result"](replace(state, failures=0), ok, now, s, jitter)),
    "publisher: no reset": (publisher, "result", lambda state, ok, now, s, jitter: replace(
        _real["result"](state, ok, now, s, jitter),
        failures=state.failures + (0 if ok else 1))),
    "publisher: no cap": (publisher, "result", lambda state, ok, now, s, jitter: _real["result"](
        state, ok, now, replace(s, cap=None), jitter)),
    "heartbeat while not a candidate": (publisher, "poll", lambda state, now, active=True: _real[
        "poll"](state, now, True)),
    "controller: leadership ignored": (controller_step, "step", _ignores_leadership),
    "controller: an election eats the event": (
        controller_step, "step", lambda state, seen, now, s: _real["controller_step"](
            state, replace(seen, woke=seen.woke and now < state.next_election), now, s)),
}
CATCHES = [
    ("no coalescing", test_a_burst_of_events_becomes_one_apply_after_the_window),
    ("no coalescing", test_drift_forces_an_apply_of_unchanged_inputs),
    ("controller: no coalescing", test_controller_coalesces_a_burst_into_one_reconcile),
    ("apply: no growth", test_failed_apply_backs_off_exponentially_and_success_resets),
    ("apply: no reset", test_failed_apply_backs_off_exponentially_and_success_resets),
    ("cache ignored", test_start_from_the_offline_cache_then_keep_reapplying_it_while_offline),
    ("publisher: no growth",
     test_publish_failure_is_retried_sooner_than_the_resync_and_success_resets),
    ("publisher: no reset",
     test_publish_failure_is_retried_sooner_than_the_resync_and_success_resets),
    ("publisher: no growth",
     test_heartbeat_renews_each_period_while_a_candidate_and_backs_off_capped),
    ("publisher: no cap", test_heartbeat_renews_each_period_while_a_candidate_and_backs_off_capped),
    ("publisher: no reset",
     test_heartbeat_renews_each_period_while_a_candidate_and_backs_off_capped),
    ("heartbeat while not a candidate",
     test_heartbeat_renews_each_period_while_a_candidate_and_backs_off_capped),
    ("publisher: no growth",
     test_a_failed_reconcile_backs_off_never_past_the_resync_and_success_resets),
    ("publisher: no cap",
     test_a_failed_reconcile_backs_off_never_past_the_resync_and_success_resets),
    ("publisher: no reset",
     test_a_failed_reconcile_backs_off_never_past_the_resync_and_success_resets),
    ("controller: leadership ignored", test_leader_loss_drops_pending_work),
    ("controller: an election eats the event",
     test_an_event_in_the_turn_of_a_lease_renewal_is_not_lost),
    ("controller: leadership ignored", test_a_standby_never_reconciles_and_retries_the_lease),
]


@pytest.mark.parametrize(("broken", "test"), CATCHES,
                         ids=[f"{b}-{t.__name__.removeprefix('test_')}" for b, t in CATCHES])
def test_each_timing_test_fails_against_a_broken_step(broken: str, test: object,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    module, name, fake = BROKEN[broken]
    monkeypatch.setattr(module, name, fake)
    with pytest.raises(AssertionError):
        test()  # type: ignore[operator]
