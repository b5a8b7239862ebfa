"""PURE. Which public pool relays between NAT'd pools, by measured RTT, with hysteresis.

Every pair of undialable pools reaches each other through ONE relay (raven.topology.relay_for:
the oldest dialable pool), and both ends must agree on it: a packet that arrives through another
relay than the one the receiver routes through is dropped by WireGuard's allowed-IPs check. So
the choice is made in one place, the controller, from what every NAT'd gateway measured, and
stored in Gateway status (`status.relay: true` on the chosen public Gateway), which every agent
reads. Rules kept:
- the score of a public pool is the mean RTT to it over the NAT'd pools; a pool is scored only
  when EVERY NAT'd pool measured it, so a Gateway added later (unmeasured) never takes over,
  and an unrelated change (a pool's spec, a member) never moves the relay;
- a challenger replaces the current relay only when it is better by `margin` (a fraction) AND
  by `min_gain_ms`, continuously for `hold` seconds: noise and short spikes never move it;
- without measurements the current relay stays; a current relay that is gone (no longer a
  candidate) is replaced at once by the best scored candidate, else by the planner's default;
- the flag (`status.relay`) is set only on a choice that differs from the age rule, and the age
  rule is judged WITHOUT the flag: the relay in force is the flagged pool, else the oldest one
  (`decide`). (Judging the age rule with the flag counted made the flagged pool "the default",
  so the next reconcile removed the flag it had just written and the relay flapped back.)
- `now` is an argument: the controller's MONOTONIC clock (the hold is a duration; only what is
  written to the API carries wall time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from raven.model import FrozenMap, Gateway
from raven.topology import relay_candidates

ANNOTATION_RELAY_RTT = "raven.openyurt.io/relay-rtt"  # {public Gateway: RTT ms}, on NAT'd nodes


@dataclass(frozen=True)
class RelaySettings:
    margin: float = 0.2
    min_gain_ms: float = 2.0
    hold: float = 30.0


@dataclass(frozen=True)
class RelayState:
    challenger: str | None = None
    since: float = 0.0


def scores(rtts: Mapping[str, Mapping[str, float]], candidates: Sequence[str]
           ) -> dict[str, float]:
    """Mean RTT per candidate, over the NAT'd pools; only candidates every NAT'd pool measured."""
    if not rtts:
        return {}
    out = {}
    for c in candidates:
        values = [seen.get(c) for seen in rtts.values()]
        if all(isinstance(v, int | float) and v >= 0 for v in values):
            out[c] = sum(values) / len(values)  # type: ignore[arg-type]
    return out


def choose(current: str | None, rtts: Mapping[str, Mapping[str, float]],
           candidates: Sequence[str], state: RelayState, now: float,
           s: RelaySettings = RelaySettings()) -> tuple[str | None, RelayState, str]:
    """(relay to store, next state, why). `current` is the relay in force (flagged, else the
    planner's default); `rtts` is {NAT'd pool: {public pool: ms}}."""
    score = scores(rtts, candidates)
    if current not in candidates:
        best = min(score, key=lambda c: (score[c], c)) if score else None
        return best, RelayState(), (f"the relay {current} is gone; "
                                    f"{best or 'the default'} takes over")
    if current not in score or not score:
        return current, RelayState(), f"{current} stays: not every NAT'd pool measured it"
    best = min(score, key=lambda c: (score[c], c))
    gain = score[current] - score[best]
    if best == current or gain < s.min_gain_ms or score[best] > score[current] * (1 - s.margin):
        return current, RelayState(), f"{current} stays ({score[current]:.1f} ms)"
    if state.challenger != best:
        return current, RelayState(best, now), (f"{best} ({score[best]:.1f} ms) is better than "
                                                f"{current} ({score[current]:.1f} ms); waiting "
                                                f"{s.hold:g}s")
    if now - state.since < s.hold:
        return current, state, f"{best} better for {now - state.since:.0f}s of {s.hold:g}s"
    return best, RelayState(), (f"{best} ({score[best]:.1f} ms) replaces {current} "
                                f"({score[current]:.1f} ms) after {s.hold:g}s")


def _unflagged(gw: Gateway) -> Gateway:
    if "relay" not in gw.status.extra:
        return gw
    extra = FrozenMap({k: v for k, v in gw.status.extra.items() if k != "relay"})
    return replace(gw, status=replace(gw.status, extra=extra))


@dataclass(frozen=True)
class Decision:
    flag: str | None  # the Gateway to flag `status.relay`; None: the age rule's pool relays
    relay: str | None  # the relay in force after this decision
    moved: bool  # the relay in force changed
    state: RelayState
    why: str


def decide(gateways: Sequence[Gateway], rtts: Mapping[str, Mapping[str, float]],
           state: RelayState, now: float, s: RelaySettings = RelaySettings()) -> Decision:
    """The relay in force is what the agents' planner uses now (raven.topology.relay_for: the
    flagged candidate, else the oldest dialable pool); `choose` decides whether it moves. The
    flag is needed only where the choice differs from the age rule judged WITHOUT any flag."""
    candidates, current = relay_candidates(gateways)
    _, default = relay_candidates([_unflagged(g) for g in gateways])
    chosen, state, why = choose(current, rtts, candidates, state, now, s)
    return Decision(chosen if chosen != default else None, chosen if chosen else default,
                    chosen != current, state, why)
