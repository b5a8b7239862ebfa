"""raven.relay_choice.decide: the controller's relay flag over many reconciles.

Each round feeds back what the previous round stored (the flag on the chosen Gateway), as the
controller's informer does; the relay in force is read with the agents' own planner rule
(raven.topology.relay_candidates), not from `decide`'s answer.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, NodeInfo
from raven.relay_choice import RelaySettings, RelayState, decide
from raven.topology import relay_candidates

S = RelaySettings(margin=0.2, min_gain_ms=2.0, hold=30.0)


def _gateway(name: str, node: str, ip: str, key: str, nat: bool, subnet: str,
             created: str) -> Gateway:
    ep = Endpoint(node_name=node, type="tunnel", port=4500, under_nat=nat,
                  public_ip="" if nat else ip, config=FrozenMap({"public-key": key}))
    return Gateway(name=name, spec=GatewaySpec(endpoints=(ep,)),
                   status=GatewayStatus(nodes=(NodeInfo(node, ip, (subnet,)),),
                                        active_endpoints=(ep,)),
                   metadata=FrozenMap({"name": name, "creationTimestamp": created}))


def _fleet() -> list[Gateway]:
    return [
        _gateway("gw-cloud-a", "ca", "198.18.1.10", "A" * 43 + "=", False, "10.244.0.0/24",
                 "2026-01-01T00:00:00Z"),
        _gateway("gw-cloud-b", "cb", "198.18.2.10", "B" * 43 + "=", False, "10.244.1.0/24",
                 "2026-01-01T00:00:00Z"),
        _gateway("gw-sym-a", "sa", "198.18.3.10", "C" * 43 + "=", True, "10.244.10.0/24",
                 "2026-01-01T00:00:00Z"),
        _gateway("gw-sym-b", "sb", "198.18.4.10", "D" * 43 + "=", True, "10.244.20.0/24",
                 "2026-01-01T00:00:00Z"),
    ]


def _store(fleet: list[Gateway], flag: str | None) -> list[Gateway]:
    """What the controller writes: `relay: true` on the flagged Gateway only."""
    out = []
    for gw in fleet:
        extra = {k: v for k, v in gw.status.extra.items() if k != "relay"}
        if gw.name == flag:
            extra["relay"] = True
        out.append(replace(gw, status=replace(gw.status, extra=FrozenMap(extra))))
    return out


def _in_force(fleet: list[Gateway]) -> str | None:
    return relay_candidates(fleet)[1]


def _rtts(a: float, b: float) -> dict[str, dict[str, float]]:
    return {"gw-sym-a": {"gw-cloud-a": a, "gw-cloud-b": b},
            "gw-sym-b": {"gw-cloud-a": a, "gw-cloud-b": b}}


def _run(fleet: list[Gateway], state: RelayState, rtts: dict, start: float, end: float,
         step: float = 5.0) -> tuple[list[Gateway], RelayState, list[str | None]]:
    """Reconcile every `step` seconds from `start` to `end`, storing each round's flag; the
    relay in force after every round."""
    seen = []
    now = start
    while now <= end:
        decided = decide(fleet, rtts, state, now, S)
        state = decided.state
        fleet = _store(fleet, decided.flag)
        assert decided.relay == _in_force(fleet)  # what it says is what the agents plan
        seen.append(_in_force(fleet))
        now += step
    return fleet, state, seen


def test_a_slow_relay_is_replaced_after_the_hold_and_the_choice_sticks() -> None:
    fleet = _fleet()
    assert _in_force(fleet) == "gw-cloud-a"  # oldest, then by name
    fleet, state, seen = _run(fleet, RelayState(), _rtts(200.0, 0.1), 0.0, 25.0)
    assert set(seen) == {"gw-cloud-a"}  # held: better, but not yet for 30 s
    fleet, state, seen = _run(fleet, state, _rtts(200.0, 0.1), 30.0, 300.0)
    assert seen[0] == "gw-cloud-b"
    # The bug this guards: the flag it wrote made gw-cloud-b "the default", the next round
    # removed the flag, and the relay went back to gw-cloud-a every other reconcile.
    assert set(seen) == {"gw-cloud-b"}
    assert [g.name for g in fleet if g.status.extra.get("relay") is True] == ["gw-cloud-b"]
    # The delay goes away: both equal, no gain, the relay stays where it is.
    fleet, state, seen = _run(fleet, state, _rtts(0.1, 0.1), 305.0, 600.0)
    assert set(seen) == {"gw-cloud-b"}
    # Back only when the old one is better by the margin and 2 ms, for the hold.
    fleet, state, seen = _run(fleet, state, _rtts(0.1, 50.0), 605.0, 700.0)
    assert seen[:6] == ["gw-cloud-b"] * 6 and seen[-1] == "gw-cloud-a"
    assert not any(g.status.extra.get("relay") for g in fleet)  # the age rule needs no flag


def test_an_unrelated_change_does_not_move_the_relay() -> None:
    fleet, state, _ = _run(_fleet(), RelayState(), _rtts(200.0, 0.1), 0.0, 60.0)
    assert _in_force(fleet) == "gw-cloud-b"
    newer = _gateway("gw-cloud-c", "cc", "198.18.5.10", "E" * 43 + "=", False, "10.244.2.0/24",
                     "2026-02-01T00:00:00Z")  # unmeasured: never takes over
    relabelled = replace(fleet[2], metadata=FrozenMap({**fleet[2].metadata,
                                                       "labels": {"site": "x"}}))
    changed = [fleet[0], fleet[1], relabelled, fleet[3], newer]
    changed, state, seen = _run(changed, state, _rtts(200.0, 0.1), 65.0, 300.0)
    assert set(seen) == {"gw-cloud-b"}
    # Measurements missing (an agent restarting): the relay stays.
    changed, state, seen = _run(changed, state, {}, 305.0, 400.0)
    assert set(seen) == {"gw-cloud-b"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 400.0), st.floats(0.0, 400.0)), min_size=1,
                max_size=40))
def test_the_flag_never_undoes_itself(samples: list[tuple[float, float]]) -> None:
    """Whatever the RTTs, the relay in force moves only after the same challenger was better
    for the hold, and never at two consecutive reconciles."""
    fleet, state, now = _fleet(), RelayState(), 0.0
    previous = _in_force(fleet)
    last_move = -1e9
    for a, b in samples:
        decided = decide(fleet, _rtts(a, b), state, now, S)
        fleet = _store(fleet, decided.flag)
        relay = _in_force(fleet)
        assert relay == decided.relay
        if relay != previous:
            assert decided.moved and now - last_move >= S.hold
            assert state.challenger == relay and now - state.since >= S.hold
            last_move = now
        else:
            assert not decided.moved
        state, previous = decided.state, relay
        now += 5.0
