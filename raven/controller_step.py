"""The gateway controller's decisions as a pure step: (state, observation, now) -> (state,
actions, deadline).

The runner (`raven.controller.GatewayController.run`) owns the informers, the Lease, the API
writes and a monotonic clock; it calls `step`, carries out the one action it returns, reports
the outcome (`elected`, `reconciled`) and sleeps until the deadline or the next event.

Rules kept:
- `now` is monotonic seconds; nothing here reads a clock or the API;
- the leader renews every `renew_period`, a standby tries every `retry_period`; election comes
  first, so no reconcile is ever decided on stale leadership;
- only the leader reconciles, and only with synced informers; gaining leadership reconciles at
  once, losing it drops any pending work;
- an event opens a burst window of `coalesce` seconds and the burst is one reconcile; without
  events the leader reconciles every `resync_period` (heartbeats go stale without events);
- a Lease event wakes the loop only when it can change an election (`heartbeat_wakes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

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
    next_resync: float = 0.0
    burst_until: float | None = None


@dataclass(frozen=True)
class Step:
    state: ControllerState
    actions: tuple[Action, ...]
    deadline: float  # monotonic: call step again then at the latest


def step(state: ControllerState, seen: Observation, now: float, s: ControllerSettings) -> Step:
    if now >= state.next_election:
        return Step(state, (Action.TRY_LEAD,), now)
    if not state.leader:
        return Step(replace(state, burst_until=None), (), state.next_election)
    if seen.woke and state.burst_until is None:
        state = replace(state, burst_until=now + s.coalesce)
    burst_open = state.burst_until is not None and now < state.burst_until
    due = (state.burst_until is not None and not burst_open) or now >= state.next_resync
    if due and seen.synced:
        return Step(replace(state, burst_until=None), (Action.RECONCILE,), now)
    deadline = min(state.next_election, state.next_resync)
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
                   next_resync=now if gained else state.next_resync,
                   burst_until=state.burst_until if leader else None)


def reconciled(state: ControllerState, now: float, s: ControllerSettings) -> ControllerState:
    return replace(state, next_resync=now + s.resync_period)


def heartbeat_wakes(previous: float | None, current: float | None, timeout: float) -> bool:
    """Whether a Lease event with renewTime `current` (None: deleted or unreadable), after
    `previous` seen for the same agent, can change an election: a heartbeat that appears,
    disappears or comes back after a gap longer than the timeout. A routine renewal of a fresh
    heartbeat changes nothing; going stale without events is caught by the resync period."""
    if current is None or previous is None:
        return True
    return current - previous > timeout
