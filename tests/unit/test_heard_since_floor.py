"""`gateway_status.heard_since_floor`: a new leader does not hold renewals it could not see
against ACTIVE gateways, and never makes an inactive candidate look alive."""

from __future__ import annotations

from raven.gateway_status import heard_since_floor

GATEWAYS = [{"metadata": {"name": "gw-a"},
             "status": {"activeEndpoints": [{"nodeName": "a-1", "type": "tunnel"}]}},
            {"metadata": {"name": "gw-b"}, "status": {}}]


def test_only_active_endpoints_are_floored() -> None:
    beats = {"a-1": 100.0, "a-2": 100.0, "b-1": 50.0, "c-1": 900.0}
    floored = heard_since_floor(beats, GATEWAYS, since=500.0)
    assert floored == {"a-1": 500.0, "a-2": 100.0, "b-1": 50.0, "c-1": 900.0}


def test_without_a_takeover_nothing_changes() -> None:
    beats = {"a-1": 100.0}
    assert heard_since_floor(beats, GATEWAYS, since=None) == beats


def test_a_newer_renewal_is_kept_and_a_node_without_lease_gets_none() -> None:
    floored = heard_since_floor({"a-1": 700.0}, GATEWAYS, since=500.0)
    assert floored == {"a-1": 700.0}
