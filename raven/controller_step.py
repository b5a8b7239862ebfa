"""The gateway controller's decisions as a pure step: (state, observation, now) -> (state,
actions, deadline).

The runner (`raven.controller.GatewayController.run`) owns the informers, the Lease, the API
writes and a monotonic clock; it calls `step`, carries out the one action it returns, reports
the outcome (`after_election`, `reconciled`) and sleeps until the deadline or the next event.

Rules kept:
- `now` is monotonic seconds; nothing here reads a clock or the API;
- the leader renews every `renew_period`, a standby tries every `retry_period`; election comes
  first, so no reconcile is ever decided on stale leadership;
- only the leader reconciles, and only with synced informers; gaining leadership reconciles at
  once, losing it drops any pending work;
- an event opens a burst window of `coalesce` seconds and the burst is one reconcile; without
  events the leader reconciles every `resync_period` (heartbeats go stale without events);
- a reconcile that failed (it raised, or a status write failed on an API error) is retried
  with backoff (`KubeSettings.backoff`), never later than the resync period; a success resets
  the backoff. The schedule is the one of every periodic write (`raven.publisher`); events
  still reconcile at the end of their burst while it backs off (they come from the API);
- a Lease event wakes the loop only when it can change an election (`heartbeat_wakes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from raven import publisher
from raven.settings import ControllerSettings

UNSYNCED_POLL = 0.2  # seconds: a leader whose informers have not listed looks again this soon


class Action(StrEnum):
    TRY_LEAD = "try-lead"  # acquire or renew the leader Lease
    RECONCILE = "reconcile"  # bring every Gateway's status up to date


@dataclass(frozen=True)
class Observation:
    woke: bool = False  # an informer event (or a write that asks to look again) arrived
    synced: bool = False  # every informer has listed


@dataclass(frozen=True)
class ControllerState:
    leader: bool = False
    next_election: float = 0.0
    # The reconcile without events: due every resync period, sooner (backing off) after a
    # failure; `resync.failures` counts the failed reconciles in a row.
    resync: publisher.PublishState = field(default_factory=publisher.PublishState)
    burst_until: float | None = None


@dataclass(frozen=True)
class Step:
    state: ControllerState
    actions: tuple[Action, ...]
    deadline: float  # monotonic: call step again then at the latest


def step(state: ControllerState, seen: Observation, now: float, s: ControllerSettings) -> Step:
    if seen.woke and state.burst_until is None:  # noted first: an election must not eat it
        state = replace(state, burst_until=now + s.coalesce)
    if now >= state.next_election:
        return Step(state, (Action.TRY_LEAD,), now)
    if not state.leader:
        return Step(replace(state, burst_until=None), (), state.next_election)
    burst_open = state.burst_until is not None and now < state.burst_until
    resync_due, resync_at = publisher.poll(state.resync, now)
    due = (state.burst_until is not None and not burst_open) or resync_due
    if due and seen.synced:
        return Step(replace(state, burst_until=None), (Action.RECONCILE,), now)
    deadline = state.next_election if resync_at is None else min(state.next_election, resync_at)
    if state.burst_until is not None:
        deadline = min(deadline, max(state.burst_until, now))
    if not seen.synced:
        deadline = min(deadline, now + UNSYNCED_POLL)
    return Step(state, (), deadline)


def after_election(state: ControllerState, leader: bool, now: float, s: ControllerSettings
                   ) -> ControllerState:
    """The outcome of TRY_LEAD: a new leader reconciles at once, a lost leader forgets."""
    period = s.leader.renew_period if leader else s.leader.retry_period
    gained = leader and not state.leader
    return replace(state, leader=leader, next_election=now + period,
                   resync=publisher.PublishState(due=now) if gained else state.resync,
                   burst_until=state.burst_until if leader else None)


def reconciled(state: ControllerState, ok: bool, now: float, s: ControllerSettings,
               jitter: float) -> ControllerState:
    """The outcome of RECONCILE; `jitter` is a random draw in [0, 1) for the backoff."""
    return replace(state, resync=publisher.result(state.resync, ok, now, resync_schedule(s),
                                                  jitter))


def resync_schedule(s: ControllerSettings) -> publisher.Schedule:
    return publisher.Schedule(s.resync_period, s.kube.backoff, cap=s.resync_period)


def heartbeat_wakes(previous: float | None, current: float | None, timeout: float) -> bool:
    """Whether a Lease event with renewTime `current` (None: deleted or unreadable), after
    `previous` seen for the same agent, can change an election: a heartbeat that appears,
    disappears or comes back after a gap longer than the timeout. A routine renewal of a fresh
    heartbeat changes nothing; going stale without events is caught by the resync period."""
    if current is None or previous is None:
        return True
    return current - previous > timeout
