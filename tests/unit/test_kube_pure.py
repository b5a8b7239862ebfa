"""Pure parts of raven.kube and the agent: backoff, retries, error mapping, time formats, inputs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from raven.agent import Inputs, gateway_candidate, parse_inputs
from raven.kube.backoff import BackoffSettings, retry
from raven.kube.errors import (
    AlreadyExists,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unavailable,
    from_api_exception,
)
from raven.timefmt import parse_time, to_micro_time, to_time


@given(st.integers(0, 50), st.floats(0, 1))
def test_backoff_grows_to_the_cap_within_its_jitter(attempt: int, r: float) -> None:
    s = BackoffSettings(initial=0.2, maximum=10.0, factor=2.0, jitter=0.5)
    base = min(10.0, 0.2 * 2 ** attempt)
    assert base * 0.5 - 1e-9 <= s.delay(attempt, lambda: r) <= base + 1e-9


def test_retry_retries_only_retryable_errors() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("down")
        return "ok"

    fast = BackoffSettings(initial=0.001, maximum=0.002)
    assert retry(flaky, fast) == "ok" and len(calls) == 3
    calls.clear()

    def missing() -> str:
        calls.append(1)
        raise NotFound("nope", 404)

    with pytest.raises(NotFound):
        retry(missing, fast)
    assert len(calls) == 1


def _api(status: int, reason: str = "", message: str = "m") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "reason": reason, "message": message})
    return exc


@pytest.mark.parametrize(("status", "reason", "kind"), [
    (404, "NotFound", NotFound), (409, "AlreadyExists", AlreadyExists),
    (409, "Conflict", Conflict), (410, "Expired", Expired), (422, "Invalid", Invalid),
    (403, "Forbidden", Forbidden), (401, "Unauthorized", Forbidden),
    (500, "InternalError", Unavailable), (503, "ServiceUnavailable", Unavailable),
    (429, "TooManyRequests", Unavailable),
])
def test_api_status_maps_to_a_typed_error(status: int, reason: str, kind: type) -> None:
    error = from_api_exception(_api(status, reason, "Gateway gw: spec.x: bad"))
    assert type(error) is kind
    assert "Gateway gw: spec.x: bad" in str(error) and error.status == status


def test_other_4xx_is_not_retryable() -> None:
    error = from_api_exception(_api(400, "BadRequest"))
    assert type(error) is KubeError and not error.retryable


@given(st.floats(0, 4_000_000_000))
def test_micro_time_round_trip(unix: float) -> None:
    assert parse_time(to_micro_time(unix)) == pytest.approx(unix, abs=1e-5)
    assert parse_time(to_time(unix)) == pytest.approx(int(unix), abs=1)


def test_parse_time_of_junk_is_none() -> None:
    assert parse_time(None) is None and parse_time("") is None and parse_time("soon") is None


def _gw(name: str, endpoints: object) -> dict:
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": name}, "spec": {"endpoints": endpoints}}


def test_inputs_skip_unreadable_objects_and_name_them() -> None:
    inputs = Inputs(node={"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
                    gateways=(_gw("gw-b", [{"nodeName": "n1", "type": "tunnel"}]),
                              _gw("gw-bad", "not-a-list"),
                              _gw("gw-a", [{"nodeName": "n2", "type": "proxy"}])),
                    source="api")
    gateways, me, problems = parse_inputs(inputs, "n1")
    assert [g.name for g in gateways] == ["gw-a", "gw-b"]
    assert not isinstance(me, str) and me.name == "n1"
    assert len(problems) == 1 and "gw-bad" in problems[0]
    assert gateway_candidate("n1", gateways)
    # a proxy endpoint is elected on the agent's heartbeat too (docs/proxy.md)
    assert gateway_candidate("n2", gateways)
    assert not gateway_candidate("n3", gateways)
