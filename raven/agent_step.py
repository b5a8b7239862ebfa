"""The agent's decisions as a pure step: (state, observation, now) -> (state, actions, deadline).

The runner (`raven.agent.Agent.run`) owns the threads, the informers, the kernel and a
monotonic clock; it observes, calls `step`, carries out the actions in order, reports each
outcome back through `applied` / `published`, and sleeps until the deadline or the next event.

Rules kept:
- `now` is monotonic seconds; nothing here reads a clock, a socket or a file, so every timing
  rule is unit-tested without root or sleeps;
- an event opens a burst window of `coalesce` seconds; events inside it join it, and the burst
  is handled once when the window closes (a burst becomes one reconcile);
- live inputs are applied when they differ from the inputs of the last successful API apply,
  when drift was seen, or when the resync period is over; a failed apply is retried with
  exponential backoff (`BackoffSettings.delay`, jitter drawn by the runner) and leaves the data
  plane as it is; inputs that changed since the failure are tried at once;
- inputs that changed are written to the offline cache (once per change);
- before the informers have listed, the cached inputs (read once at start) are applied, and
  re-applied every resync period while the API stays unreachable;
- a plan from the cache is applied only when every cached object was readable and the plan
  builds something: a damaged cache never tears down the live data plane (`cache_refusal`);
- every periodic API write is scheduled by the one pure publisher (`raven.publisher`), with
  its `Schedule` defined here: the public key (`key_schedule`: at start and every resync
  period, a failure retried with backoff), the pool's gateway (`pool_gateway_schedule`: when it
  changes and every resync period, backing off), the heartbeat (`heartbeat_schedule`: every
  heartbeat period while this node is a gateway candidate, a failure retried with backoff but
  never slower than the period; becoming a candidate is an event, not polled).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from raven import publisher
from raven.desired import NodeState, Role
from raven.model import Node
from raven.settings import AgentSettings

JSON = dict[str, Any]
Key = tuple[JSON | None, tuple[JSON, ...]]

UNSYNCED_POLL = 0.2  # seconds: the first lists may emit no event, look again this soon


@dataclass(frozen=True)
class Inputs:
    node: JSON | None
    gateways: tuple[JSON, ...]
    source: str  # "api" or "cache"

    @property
    def key(self) -> Key:
        return (self.node, self.gateways)


@dataclass(frozen=True)
class Apply:
    inputs: Inputs


@dataclass(frozen=True)
class SaveCache:
    inputs: Inputs


@dataclass(frozen=True)
class PublishKey:
    pass


@dataclass(frozen=True)
class RefreshStats:
    pass


Action = Apply | SaveCache | PublishKey | RefreshStats


@dataclass(frozen=True)
class Observation:
    """What the runner saw since the last step."""

    live: Inputs | None  # None until both informers have listed
    woke: bool = False  # an informer event arrived
    drifted: bool = False  # the kernel monitor saw a foreign change to our objects
    cached: Inputs | None = None  # the offline cache, offered until something was applied


@dataclass(frozen=True)
class AgentState:
    applied: Inputs | None = None  # inputs of the last successful apply (any source)
    applied_key: Key | None = None  # inputs of the last successful apply from the API
    saved_key: Key | None = None  # inputs last written to the offline cache
    failures: int = 0  # consecutive failed applies
    failed_key: Key | None = None  # inputs of the last failed apply: retried after the backoff
    next_resync: float = 0.0
    next_stats: float = 0.0
    publish: publisher.PublishState = field(default_factory=publisher.PublishState)  # key
    burst_until: float | None = None  # end of the open burst window
    drift: bool = False  # drift seen and not yet repaired by an apply
    cache_tried: bool = False  # the offline cache was offered to the planner once


@dataclass(frozen=True)
class Step:
    state: AgentState
    actions: tuple[Action, ...]
    deadline: float  # monotonic: call step again then at the latest


def step(state: AgentState, seen: Observation, now: float, s: AgentSettings) -> Step:
    if seen.drifted:
        state = replace(state, drift=True)
    if seen.woke and state.burst_until is None:
        state = replace(state, burst_until=now + s.coalesce)
    if state.burst_until is not None and now < state.burst_until:
        return Step(state, (), _deadline(state, seen, now))
    state = replace(state, burst_until=None)
    actions: list[Action] = []
    live = seen.live
    if live is not None:
        if live.key != state.saved_key:
            actions.append(SaveCache(live))
        due = live.key != state.applied_key or state.drift or now >= state.next_resync
        backing_off = live.key == state.failed_key and now < state.next_resync
        if due and not backing_off:
            actions.append(Apply(live))
            state = replace(state, drift=False)
        if publisher.poll(state.publish, now)[0]:
            actions.append(PublishKey())
    elif seen.cached is not None and state.applied is None and not state.cache_tried:
        actions.append(Apply(seen.cached))
        state = replace(state, cache_tried=True)
    elif now >= state.next_resync or state.drift:
        state = replace(state, next_resync=now + s.resync_period, drift=False)
        if state.applied is not None:  # offline: keep re-applying the last good plan
            actions.append(Apply(state.applied))
    if now >= state.next_stats or any(isinstance(a, Apply) for a in actions):
        actions.append(RefreshStats())  # peers, counts and drift right after every apply
        state = replace(state, next_stats=now + s.stats_period)
    return Step(state, tuple(actions), _deadline(state, seen, now))


def _deadline(state: AgentState, seen: Observation, now: float) -> float:
    deadline = min(state.next_resync, state.next_stats)
    if state.burst_until is not None:
        deadline = min(deadline, state.burst_until)
    if seen.live is None:  # nothing to publish before the API answers: do not spin on it
        deadline = min(deadline, now + UNSYNCED_POLL)
    elif state.publish.due is not None:
        deadline = min(deadline, state.publish.due)
    return deadline


def applied(state: AgentState, inputs: Inputs, ok: bool, now: float, s: AgentSettings,
            jitter: float) -> AgentState:
    """The outcome of an Apply action. `jitter` is a random draw in [0, 1) for the backoff."""
    if ok:
        return replace(
            state, applied=inputs, failures=0, failed_key=None,
            next_resync=now + s.resync_period,
            applied_key=inputs.key if inputs.source == "api" else state.applied_key)
    failures = state.failures + 1
    return replace(state, failures=failures, failed_key=inputs.key,
                   next_resync=now + s.backoff.delay(failures, lambda: jitter))


def saved(state: AgentState, inputs: Inputs) -> AgentState:
    return replace(state, saved_key=inputs.key)


def published(state: AgentState, ok: bool, now: float, s: AgentSettings,
              jitter: float) -> AgentState:
    """The outcome of a PublishKey action."""
    return replace(state, publish=publisher.result(state.publish, ok, now, key_schedule(s),
                                                   jitter))


def key_schedule(s: AgentSettings) -> publisher.Schedule:
    """The public key: every resync period; the first retry after 8x the initial backoff (a
    fresh Node object is often not listed yet, and the key is needed only by remote pools)."""
    return publisher.Schedule(s.resync_period, s.backoff, skip=2)


def pool_gateway_schedule(s: AgentSettings) -> publisher.Schedule:
    """The pool's gateway as this node decided it: when it changes (`publisher.ask`) and every
    resync period; retried with backoff (its own thread: a blocked write never delays a
    reconcile)."""
    return publisher.Schedule(s.resync_period, s.backoff)


def heartbeat_schedule(s: AgentSettings) -> publisher.Schedule:
    """The heartbeat Lease: every heartbeat period while a gateway candidate; a failure retried
    with backoff, never slower than the period (the controller's timeout counts in periods)."""
    return publisher.Schedule(s.heartbeat_period, s.backoff, cap=s.heartbeat_period)


def cache_refusal(problems: list[str], me: Node | str, plan: NodeState) -> str | None:
    """Why a plan made from the offline cache must not be applied, or None when it may be.

    Applying an empty plan deletes raven0, the rules and the nft table: right when the API says
    so, wrong when a damaged cache says so. So a cached plan is used only when every cached
    object was readable, our own Node was among them, and the plan builds something."""
    if problems:
        return f"{len(problems)} cached object(s) unreadable ({problems[0]})"
    if isinstance(me, str):
        return f"the cache holds no Node {me}"
    if plan.role == Role.ALONE:
        return "the cached inputs put this node in no pool"
    return None
