"""The relay hold (raven.relay_choice) is a duration: the controller's runner times it on the
monotonic clock, as the leader elector times takeovers, and keeps wall time for what it writes
to the API (conditions, Events). Checked at the call site: the runner's RECONCILE action, with
the two clocks made to disagree by an hour (a wall clock stepped by NTP)."""

from __future__ import annotations

from typing import Any

import pytest

from raven import controller as controller_module
from raven import relay_choice
from raven.controller import GatewayController
from raven.controller_step import Action, ControllerState
from raven.settings import ControllerSettings

WALL, MONO = 1_700_000_000.0, 4242.0


class NoKube:
    """Nothing here may reach an API server: the informers are never started."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the test controller called the API ({name})")


def test_the_relay_hold_runs_on_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    c = GatewayController(ControllerSettings(identity="test"), kube=NoKube())  # type: ignore[arg-type]
    for informer in (c.gateways, c.nodes, c.leases):
        monkeypatch.setattr(informer, "items", list)
    monkeypatch.setattr(c, "sync_proxy_objects", lambda gateways, nodes: None)
    clocks: list[float] = []
    real = relay_choice.decide

    def decide(gateways: Any, rtts: Any, state: Any, now: float, *rest: Any) -> Any:
        clocks.append(now)
        return real(gateways, rtts, state, now, *rest)

    monkeypatch.setattr(controller_module.relay_choice, "decide", decide)
    monkeypatch.setattr(controller_module.time, "time", lambda: WALL)
    monkeypatch.setattr(controller_module.time, "monotonic", lambda: MONO)
    c._act(Action.RECONCILE, ControllerState(leader=True))
    assert clocks == [MONO]
    # A caller that gives only API time (tests, tools) gets the monotonic clock read for it.
    c.reconcile(WALL + 3600)
    assert clocks == [MONO, MONO]
