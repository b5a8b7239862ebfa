"""The agent's thin runner of `raven.publisher` schedules (`raven.schedule_runner.run_schedule`),
driven through real threads and events with the decisions left to the pure schedule: no root,
no sleeps.

Each test ends the loop from inside the attempt or `active` callbacks (setting stop, then the
wake event), so a loop that makes one attempt too many or too few is seen by the count, and a
loop that never returns is caught by the join guard."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from raven import publisher
from raven.agent import Agent
from raven.schedule_runner import run_schedule
from raven.settings import AgentSettings, BackoffSettings

FAST = BackoffSettings(initial=0.001, maximum=0.002)  # retries in ms: the test is quick
GUARD = 30.0  # a guard against a hang, never reached when the code is right


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    agent = Agent(AgentSettings(node="n1", state_dir=tmp_path))
    agent.dataplane.close()
    return agent


def run(stop: threading.Event, wake: threading.Event,
        schedule: publisher.Schedule, attempt: Callable[[], bool],
        active: Callable[[], bool] = lambda: True) -> None:
    loop = threading.Thread(target=run_schedule,
                            args=(stop, wake, schedule, attempt, active), daemon=True)
    loop.start()
    loop.join(GUARD)
    assert not loop.is_alive(), "the publish loop did not stop"


def test_a_failed_write_is_retried_until_it_succeeds_then_waits() -> None:
    stop, wake = threading.Event(), threading.Event()
    outcomes = [False, False, False, True]
    done: list[bool] = []

    def attempt() -> bool:
        done.append(outcomes.pop(0))
        if not outcomes:  # the success: nothing is due after it (no period) but a stop
            stop.set()
            wake.set()
        return done[-1]

    run(stop, wake, publisher.Schedule(None, FAST), attempt)
    assert done == [False, False, False, True]


def test_a_change_is_written_at_once_and_only_once() -> None:
    stop, wake = threading.Event(), threading.Event()
    writes = 0

    def attempt() -> bool:
        nonlocal writes
        writes += 1
        if writes == 1:
            wake.set()  # something new arrived while the first write ran
        else:
            stop.set()
            wake.set()
        return True

    run(stop, wake, publisher.Schedule(None, FAST), attempt)
    assert writes == 2  # the first at start, the second for the change


def test_nothing_is_written_while_inactive() -> None:
    stop, wake = threading.Event(), threading.Event()
    looks = 0
    writes: list[bool] = []

    def active() -> bool:
        nonlocal looks
        looks += 1
        if looks == 1:
            wake.set()  # an event (e.g. the candidacy changed, still not a candidate)
        else:
            stop.set()
            wake.set()
        return False

    run(stop, wake, publisher.Schedule(5.0, FAST), lambda: writes.append(True) or True,
        active)
    assert looks == 2 and writes == []


def test_an_attempt_that_raises_is_a_failure_retried_not_the_end_of_the_thread() -> None:
    stop, wake = threading.Event(), threading.Event()
    done: list[str] = []

    def attempt() -> bool:
        if not done:
            done.append("raised")
            raise RuntimeError("a bug in one write")
        done.append("written")
        stop.set()
        wake.set()
        return True

    run(stop, wake, publisher.Schedule(None, FAST), attempt)
    assert done == ["raised", "written"]


def test_a_key_with_no_node_to_go_on_is_published_when_the_node_arrives(
        agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lab starts agents before the kubelet registers their Nodes: the first attempt finds
    # no Node; the key must go out at the first look after the Node is listed, not one
    # backoff step (0.8-1.6 s) later.
    from raven.agent_step import AgentState, Inputs, Observation
    from raven.node_annotations import Write

    node = {"metadata": {"name": "n1"}}
    attempts: list[bool] = []

    def ensure(want: dict, what: str, *args: object, **kwargs: object) -> Write:
        attempts.append(seen.live.node is not None)
        return Write.WRITTEN if seen.live.node is not None else Write.NO_NODE

    monkeypatch.setattr(agent.annotations, "ensure", ensure)
    monkeypatch.setattr(agent, "reconcile", lambda inputs, wall: True)
    monkeypatch.setattr(agent, "refresh_peer_metrics", lambda wall: None)
    seen = Observation(live=Inputs(None, (), "api"))
    state, _ = agent.turn(AgentState(), seen)
    assert attempts == [False]
    state, _ = agent.turn(state, seen)  # still no Node: no attempt
    assert attempts == [False] and state.publish.failures == 0
    seen = Observation(live=Inputs(node, (), "api"), woke=True)
    state, _ = agent.turn(state, seen)  # the event opens a burst window (coalesce) ...
    assert attempts == [False]
    state, _ = agent.turn(replace(state, burst_until=0.0), seen)  # ... which has closed
    assert attempts == [False, True]
