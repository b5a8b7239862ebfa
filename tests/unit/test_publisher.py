"""The one publish-with-backoff schedule (raven.publisher) that every periodic API write of the
daemons uses: the agent's key, pool-gateway annotation and heartbeat, the controller's resync.

A small driver plays the runner: it polls at each deadline, makes the attempt with an outcome
from a script, reports it, and records when attempts happened. Each rule is checked on the
times of those attempts, and each test fails against a deliberately broken schedule."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest

from raven import publisher
from raven.publisher import PublishState, Schedule
from raven.settings import BackoffSettings

B = BackoffSettings(initial=0.2, maximum=10.0, factor=2.0, jitter=0.5)
PERIODIC = Schedule(30.0, B)


def run(schedule: Schedule, outcomes: list[bool], asks: tuple[float, ...] = (),
        until: float = 1000.0, state: PublishState | None = None) -> list[float]:
    """Times of the attempts: each takes its outcome from `outcomes` in turn (then succeeds);
    `asks` are the times something new arrives. Jitter 1.0: the full delay."""
    state = state or PublishState()
    pending, script, attempts, now = sorted(asks), list(outcomes), [], 0.0
    while now <= until:
        while pending and pending[0] <= now:
            state = publisher.ask(state, pending.pop(0))
        go, deadline = publisher.poll(state, now)
        if go:
            attempts.append(now)
            state = publisher.result(state, script.pop(0) if script else True, now, schedule, 1.0)
            continue
        nxt = [t for t in (deadline, *(pending[:1])) if t is not None]
        if not nxt:
            break
        now = min(nxt)
    return attempts


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_first_attempt_is_at_once_then_every_period() -> None:
    assert run(PERIODIC, [], until=100.0) == [0.0, 30.0, 60.0, 90.0]


def test_only_when_asked_without_a_period() -> None:
    assert run(Schedule(None, B), [], asks=(5.0, 7.5)) == [0.0, 5.0, 7.5]


def test_failures_back_off_exponentially_up_to_the_maximum_and_a_success_resets() -> None:
    times = run(PERIODIC, [False] * 8 + [True, False], until=100.0)
    assert len(times) >= 11
    assert gaps(times)[:9] == pytest.approx([0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0, 30.0])
    assert gaps(times)[9] == pytest.approx(0.4)  # the next failure starts from the bottom


def test_skip_starts_the_backoff_later_and_cap_bounds_it() -> None:
    assert gaps(run(Schedule(30.0, B, skip=2), [False] * 3, until=20.0))[:3] == pytest.approx(
        [1.6, 3.2, 6.4])
    assert gaps(run(Schedule(5.0, B, cap=5.0), [False] * 6, until=30.0))[:6] == pytest.approx(
        [0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_jitter_shortens_the_delay_within_its_fraction() -> None:
    low = publisher.result(PublishState(), False, 0.0, PERIODIC, 0.0)
    high = publisher.result(PublishState(), False, 0.0, PERIODIC, 0.999)
    assert low.due == pytest.approx(0.2) and 0.2 < (high.due or 0.0) < 0.4


def test_asking_makes_an_attempt_due_at_once_but_never_cuts_a_backoff_short() -> None:
    # idle after a success: something new is written at once
    assert run(PERIODIC, [], asks=(12.0,), until=50.0) == [0.0, 12.0, 42.0]
    # failing: changes that arrive during the backoff wait for the retry, which writes them
    times = run(PERIODIC, [False, False, False], asks=(0.5, 0.6, 0.7), until=3.0)
    assert times == pytest.approx([0.0, 0.4, 1.2, 2.8])
    # an ask never postpones an attempt that is already due
    assert publisher.ask(PublishState(due=3.0), 5.0).due == 3.0


def test_inactive_means_no_attempt_and_no_deadline() -> None:
    assert publisher.poll(PublishState(due=0.0), 10.0, active=False) == (False, None)
    assert publisher.poll(PublishState(due=0.0), 10.0, active=True) == (True, 0.0)
    assert publisher.poll(PublishState(due=None), 10.0) == (False, None)


# -- each test above fails against a deliberately broken schedule ----------------------------------

_real: dict[str, Callable] = {"ask": publisher.ask, "poll": publisher.poll,
                              "result": publisher.result}
BROKEN = {
    "no period": ("result", lambda state, ok, now, s, jitter: _real["result"](
        state, ok, now, replace(s, period=None), jitter)),
    "no growth": ("result", lambda state, ok, now, s, jitter: _real["result"](
        replace(state, failures=0), ok, now, s, jitter)),
    "no reset": ("result", lambda state, ok, now, s, jitter: replace(
        _real["result"](state, ok, now, s, jitter), failures=state.failures + (0 if ok else 1))),
    "skip ignored": ("result", lambda state, ok, now, s, jitter: _real["result"](
        state, ok, now, replace(s, skip=0), jitter)),
    "jitter ignored": ("result", lambda state, ok, now, s, jitter: _real["result"](
        state, ok, now, s, 1.0)),
    "asks ignored": ("ask", lambda state, now: state),
    "asks cut the backoff": ("ask", lambda state, now: replace(state, due=now)),
    "always active": ("poll", lambda state, now, active=True: _real["poll"](state, now, True)),
}
CATCHES = [
    ("no period", test_first_attempt_is_at_once_then_every_period),
    ("no growth", test_failures_back_off_exponentially_up_to_the_maximum_and_a_success_resets),
    ("no reset", test_failures_back_off_exponentially_up_to_the_maximum_and_a_success_resets),
    ("skip ignored", test_skip_starts_the_backoff_later_and_cap_bounds_it),
    ("no growth", test_skip_starts_the_backoff_later_and_cap_bounds_it),
    ("jitter ignored", test_jitter_shortens_the_delay_within_its_fraction),
    ("asks ignored", test_only_when_asked_without_a_period),
    ("asks ignored", test_asking_makes_an_attempt_due_at_once_but_never_cuts_a_backoff_short),
    ("asks cut the backoff",
     test_asking_makes_an_attempt_due_at_once_but_never_cuts_a_backoff_short),
    ("always active", test_inactive_means_no_attempt_and_no_deadline),
]


@pytest.mark.parametrize(("broken", "test"), CATCHES,
                         ids=[f"{b}-{t.__name__.removeprefix('test_')}" for b, t in CATCHES])
def test_each_rule_fails_against_a_broken_schedule(broken: str, test: Callable[[], None],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    name, fake = BROKEN[broken]
    monkeypatch.setattr(publisher, name, fake)
    with pytest.raises(AssertionError):
        test()


def test_nothing_to_write_to_is_no_failure_and_waits_for_the_ask() -> None:
    # An attempt that found no object (our Node not created yet) neither backs off nor polls:
    # the object's arrival asks, and the attempt is made at that instant.
    state = publisher.absent(PublishState(due=0.0))
    assert publisher.poll(state, 3.0) == (False, None)
    state = publisher.ask(state, 3.7)
    assert publisher.poll(state, 3.7) == (True, 3.7)
    assert state.failures == 0


def test_absent_after_failures_keeps_the_backoff_of_a_failing_api_server() -> None:
    failing = publisher.result(PublishState(), False, 0.0, PERIODIC, 1.0)
    state = publisher.absent(failing)
    assert state.failures == 1
    assert publisher.ask(state, 0.1).due is None  # ask never cuts a backoff short
