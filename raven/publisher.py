"""One schedule for every periodic write with backoff: state + now -> (attempt?, deadline).

The daemons write the same way in several places: the agent publishes its public key and its
pool's gateway on its Node and renews its heartbeat Lease, the controller reconciles every
Gateway's status. Each is "try now; after a success again in `period`; after a failure sooner,
backing off". This module is that rule, once; the runners (`raven.agent`, `raven.controller`)
read the monotonic clock, draw the jitter, make the attempt and report its outcome.

Rules kept:
- pure: no clock, thread or I/O; `now` is monotonic seconds, `jitter` a draw in [0, 1);
- a new `PublishState()` is due at once;
- after a success the next attempt is due `period` later (`period` None: only when asked);
  the failures are forgotten;
- after failure number n the next attempt is due `backoff.delay(n + skip)` later (exponential,
  up to the backoff maximum), never later than `cap`;
- `ask` (something new to write) makes an attempt due at once, except while backing off: a
  failing API server is not hammered by every change; the retry writes the newest value;
- while inactive (`poll(..., active=False)`, e.g. not a gateway candidate) nothing is attempted
  and there is no deadline: the runner waits for the event that changes it;
- `absent`: an attempt that found nothing to write to (e.g. our Node is not created yet) is no
  failure of the API server: no backoff, nothing due until `ask` (the object's arrival is an
  event: a retry on a timer would come up to a backoff step after it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from raven.settings import BackoffSettings


@dataclass(frozen=True)
class Schedule:
    period: float | None  # seconds from a success to the next attempt; None: only when asked
    backoff: BackoffSettings
    skip: int = 0  # backoff steps skipped: the first retry waits backoff.delay(1 + skip)
    cap: float | None = None  # no retry waits longer than this (e.g. the heartbeat period)


@dataclass(frozen=True)
class PublishState:
    due: float | None = 0.0  # monotonic time of the next attempt; None: none until asked
    failures: int = 0  # consecutive failed attempts


def ask(state: PublishState, now: float) -> PublishState:
    """Something new to write: due at once, unless a retry is already scheduled."""
    if state.failures:
        return state
    return replace(state, due=now if state.due is None else min(state.due, now))


def poll(state: PublishState, now: float, active: bool = True) -> tuple[bool, float | None]:
    """(attempt now?, monotonic deadline of the next look; None: wait for an event)."""
    if not active or state.due is None:
        return False, None
    return now >= state.due, state.due


def result(state: PublishState, ok: bool, now: float, s: Schedule,
           jitter: float) -> PublishState:
    """The outcome of one attempt made at `now`."""
    if ok:
        return PublishState(None if s.period is None else now + s.period, 0)
    failures = state.failures + 1
    delay = s.backoff.delay(failures + s.skip, lambda: jitter)
    if s.cap is not None:
        delay = min(delay, s.cap)
    return PublishState(now + delay, failures)


def absent(state: PublishState) -> PublishState:
    """The attempt found no object to write to: nothing is due until `ask`."""
    return replace(state, due=None)

