"""The settings root, the daemons' flags and their validation, the offline cache's schema check
and the health endpoints' listen rules (no root, no API server)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from raven.cli import build_parser, main
from raven.errors import DataplaneError as RavenDataplaneError
from raven.errors import RavenError
from raven.health import HealthServer
from raven.kube.cache import CachedInputs, InputCache
from raven.settings import (
    DEFAULT_STATE_DIR,
    DEFAULTS,
    WIREGUARD_BACKENDS,
    AgentSettings,
    ControllerSettings,
    DataplaneSettings,
    LeaderSettings,
    OverlaySettings,
    is_loopback,
    listen_problems,
    overlay_problems,
    overlay_warnings,
)
from raven.topology import PlanOptions

ROOT = Path(__file__).resolve().parents[2]


def test_the_root_composes_every_section_and_plan_options_is_the_overlay_section() -> None:
    assert {f.name for f in fields(DEFAULTS)} == {"overlay", "agent", "dataplane", "controller",
                                                  "lab", "apiserver"}
    assert PlanOptions is OverlaySettings
    assert DEFAULTS.agent.overlay == DEFAULTS.overlay == DEFAULTS.dataplane.overlay
    # The packages use the root's sections themselves, not copies of them.
    from raven.apiserver.errors import ApiServerError
    from raven.apiserver.settings import ApiServerSettings
    from raven.dataplane import DataplaneError, DataplaneSettings
    from raven.lab.cluster import ClusterSettings
    from raven.lab.kubelet import DEFAULT_GRACE

    assert DataplaneSettings is type(DEFAULTS.dataplane)
    assert ClusterSettings is type(DEFAULTS.lab)
    assert DataplaneError is RavenDataplaneError
    assert ApiServerSettings is type(DEFAULTS.apiserver)
    assert issubclass(ApiServerError, RavenError)
    assert DEFAULTS.lab.node_grace == DEFAULT_GRACE
    # The agent makes its data plane's section from its own: the same defaults.
    a, d = DEFAULTS.agent, DEFAULTS.dataplane
    assert (a.netns, a.state_dir, a.wireguard_backend, a.wireguard_go) == (
        d.netns, d.state_dir, d.wireguard_backend, d.wireguard_go)
    assert (DEFAULTS.lab.heartbeat_period, DEFAULTS.lab.agent_resync,
            DEFAULTS.lab.controller_resync, DEFAULTS.lab.heartbeat_timeout) == (
        a.heartbeat_period, a.resync_period, DEFAULTS.controller.resync_period,
        DEFAULTS.controller.election.heartbeat_timeout)


def test_the_wireguard_backend_choices_and_state_dir_default_are_written_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raven.agent_command import state_dir_problem

    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "--node", "n1", "--wireguard", "fast"])
    err = capsys.readouterr().err
    assert all(repr(b) in err for b in WIREGUARD_BACKENDS), err  # argparse lists the choices
    for backend in WIREGUARD_BACKENDS:
        assert build_parser().parse_args(
            ["agent", "--wireguard", backend]).wireguard_backend == backend
    (tmp_path / "file").write_text("")
    problem = state_dir_problem(tmp_path / "file")
    assert problem is not None and f"(default {DEFAULT_STATE_DIR})" in problem
    with pytest.raises(RavenDataplaneError, match="use one of auto, kernel, userspace"):
        DataplaneSettings(wireguard_backend="fast")


def test_cli_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    parser = build_parser()
    agent = parser.parse_args(["agent", "--node", "n1"])
    a = AgentSettings()
    assert (agent.state_dir, agent.resync, agent.heartbeat_period, agent.underlay_mtu,
            agent.wireguard_backend, agent.wireguard_go, agent.netns) == (
        a.state_dir, a.resync_period, a.heartbeat_period, a.overlay.underlay_mtu,
        a.wireguard_backend, a.wireguard_go, a.netns)
    controller = parser.parse_args(["controller"])
    c, leader = ControllerSettings(), LeaderSettings()
    assert (controller.lease_duration, controller.renew_period, controller.retry_period,
            controller.resync, controller.heartbeat_timeout) == (
        leader.lease_duration, leader.renew_period, leader.retry_period, c.resync_period,
        c.election.heartbeat_timeout)


def test_help_text_shows_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {AgentSettings().resync_period:g})" in text
    assert "(default /var/lib/raven)" in text


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--underlay-mtu", "10"], "--underlay-mtu 10: out of range; use 656 to 65535"),
    (["--underlay-mtu", "70000"], "--underlay-mtu 70000: out of range"),
    (["--metrics-listen", "0.0.0.0:10265"], "wildcard"),
    (["--metrics-listen", "[::]:10265"], "wildcard"),
    (["--metrics-listen", "localhost"], "not HOST:PORT"),
    (["--metrics-listen", "127.0.0.1:99999"], "port 0-65535"),
    (["--metrics-listen", "node-ip:10265"], "not an IP address"),
    (["--resync", "0"], "--resync 0: must be a positive"),
    (["--heartbeat-period", "-1"], "--heartbeat-period -1: must be a positive"),
])
def test_bad_agent_flags_are_named_with_the_fix(
        flags: list[str], expected: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["agent", "--node", "n1", "--state-dir", str(tmp_path / "s"), *flags],
                     capsys)
    assert code != 0
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "s").exists()  # nothing touched before the flags are right


def test_a_state_dir_that_is_a_file_or_unwritable_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "state"
    file.write_text("not a directory")
    code, err = _run(["agent", "--node", "n1", "--state-dir", str(file)], capsys)
    assert code != 0 and f"--state-dir {file}: is a file" in err and "Traceback" not in err
    code, err = _run(["agent", "--node", "n1", "--state-dir", str(file / "below")], capsys)
    assert code != 0 and "not writable" in err and "--state-dir" in err
    assert file.read_text() == "not a directory"  # loses nothing


def test_every_problem_is_reported_at_once(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["agent", "--state-dir", str(tmp_path), "--underlay-mtu", "10",
                      "--metrics-listen", "0.0.0.0:1"], capsys)
    assert code != 0
    for part in ("no node name", "--underlay-mtu 10", "wildcard"):
        assert part in err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--metrics-listen", "0.0.0.0:10266"], "wildcard"),
    (["--renew-period", "20"], "--renew-period must be shorter than --lease-duration"),
    (["--retry-period", "0"], "--retry-period 0: must be a positive"),
    (["--heartbeat-timeout", "-3"], "--heartbeat-timeout -3"),
])
def test_bad_controller_flags_are_named(flags: list[str], expected: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["controller", *flags], capsys)
    assert code != 0 and expected in err and "Traceback" not in err


def test_the_real_command_exits_non_zero_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "raven.cli", "agent", "--node", "n1", "--state-dir",
         str(tmp_path), "--underlay-mtu", "10"], capture_output=True, text=True, cwd=ROOT,
        timeout=120)
    assert result.returncode != 0
    assert "--underlay-mtu 10" in result.stderr and "Traceback" not in result.stderr


def test_mtu_bounds_keep_a_minimal_ipv4_packet_and_warn_below_ipv6() -> None:
    low = OverlaySettings(underlay_mtu=OverlaySettings().min_underlay_mtu)
    assert overlay_problems(low) == []
    assert low.tunnel_mtu == 576
    assert "IPv6" in overlay_warnings(low)[0]
    assert overlay_warnings(OverlaySettings(underlay_mtu=1360)) == []
    assert overlay_problems(OverlaySettings(underlay_mtu=655))


def test_listen_rules() -> None:
    assert listen_problems("--x", ("127.0.0.1:1", "[::1]:2", "192.0.2.7:10265")) == []
    assert is_loopback("127.0.0.1:10265") and is_loopback("[::1]:1")
    assert not is_loopback("192.0.2.7:10265")


def test_status_is_served_on_loopback_and_health_everywhere() -> None:
    server = HealthServer("127.0.0.1:0", CollectorRegistry(), lambda: (True, "ok"),
                          lambda: (True, "ok"), lambda: {"node": "n1"}).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/status", timeout=5) as reply:
            assert json.load(reply) == {"node": "n1"}
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
            assert reply.status == 200
    finally:
        server.stop()
    with pytest.raises(ValueError, match="wildcard"):
        HealthServer("0.0.0.0:0", CollectorRegistry(), lambda: (True, ""), lambda: (True, ""))


# -- offline cache -----------------------------------------------------------------------------

GOOD = {"format": 1, "savedAt": 5.0, "node": {"metadata": {"name": "n1"}},
        "gateways": [{"metadata": {"name": "gw-a"}}]}


@pytest.mark.parametrize(("content", "problem"), [
    ("{torn", "not JSON"),
    ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
    (json.dumps([1, 2]), "not an object"),
    (json.dumps({**GOOD, "format": 7}), "format is 7"),
    (json.dumps({**GOOD, "savedAt": "yesterday"}), "savedAt"),
    (json.dumps({**GOOD, "savedAt": True}), "savedAt"),
    (json.dumps({**GOOD, "gateways": ["a", 5]}), "gateways[0] is str"),
    (json.dumps({**GOOD, "gateways": {"a": 1}}), "gateways is dict"),
    (json.dumps({**GOOD, "gateways": [{"metadata": {"name": 5}}]}), "metadata.name"),
    (json.dumps({**GOOD, "node": "n1"}), "node is str"),
])
def test_a_damaged_cache_is_ignored_with_one_line_naming_the_file_and_the_fix(
        tmp_path: Path, content: str, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = InputCache(tmp_path / "inputs.json")
    cache.path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="raven.kube.cache"):
        assert cache.load() is None
    (record,) = caplog.records
    message = record.getMessage()
    assert str(cache.path) in message and problem in message
    assert "delete the file" in message
    assert cache.path.read_text() == content  # evidence kept for the operator


def test_a_binary_cache_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = InputCache(tmp_path / "inputs.json")
    cache.path.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING, logger="raven.kube.cache"):
        assert cache.load() is None
    assert len(caplog.records) == 1 and str(cache.path) in caplog.records[0].getMessage()


def test_a_good_cache_round_trips(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "inputs.json")
    inputs = CachedInputs(5.0, GOOD["node"], tuple(GOOD["gateways"]))
    cache.save(inputs)
    assert cache.load() == inputs
    assert InputCache(tmp_path / "missing.json").load() is None
