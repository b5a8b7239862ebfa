"""Each default is written once, and what repeats it must agree (issue 10, deliverable 2).

- `raven apiserver`'s argparse defaults and help texts are the settings root's API server
  section (`RavenSettings.apiserver`, the class `raven.apiserver.settings` re-exports);
- every flag the shipped manifests pass with a literal value sets what the root defaults to,
  and the lab's copies (API server port, node grace) are the root's;
- the ports the shipped manifests serve health and metrics on (containerPort, probes,
  --metrics-listen) are the settings root's `metrics_port`s;
- every copy of the proxy servers' server-facing port agrees with the settings root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import raven.apiserver.settings
from raven.apiserver.errors import ApiServerError
from raven.cli import build_parser
from raven.lab import cluster, kubelet
from raven.proxy import plan as proxy_plan
from raven.settings import (
    DEFAULTS,
    PROXY_SERVER_PORT,
    AgentSettings,
    ApiServerSettings,
    ControllerSettings,
    ProxySettings,
    help_for,
)

ROOT = Path(__file__).resolve().parents[2]

# `raven apiserver` flag (argparse dest) -> the ApiServerSettings field it sets.
APISERVER_FLAGS = {
    "watch_history": "watch_history", "bookmark_interval": "bookmark_interval",
    "max_request_body_bytes": "max_body_bytes", "max_connections": "max_connections",
    "idle_timeout": "idle_timeout", "kubelet_timeout": "kubelet_timeout",
    "raven_proxy_port": "raven_proxy_port",
}


def test_the_api_server_section_is_part_of_the_root() -> None:
    assert raven.apiserver.settings.ApiServerSettings is ApiServerSettings
    assert isinstance(DEFAULTS.apiserver, ApiServerSettings)
    assert DEFAULTS.apiserver == ApiServerSettings()


def test_apiserver_flags_default_to_the_roots_api_server_section() -> None:
    args = build_parser().parse_args(["apiserver", "--data-dir", "/nonexistent"])
    root = DEFAULTS.apiserver
    for dest, name in APISERVER_FLAGS.items():
        assert getattr(args, dest) == getattr(root, name), dest
    assert args.listen == f"{root.host}:{root.port}"


def _option_help(argv: list[str]) -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
    verb = sub.choices[argv[0]]  # type: ignore[index]
    return {a.dest: a.help or "" for a in verb._actions}


def test_apiserver_help_texts_come_from_the_section() -> None:
    helps = _option_help(["apiserver"])
    for dest, name in APISERVER_FLAGS.items():
        assert helps[dest] == help_for(ApiServerSettings, name), dest


def test_a_bad_api_server_value_names_the_setting_in_the_library_and_the_flag_in_the_cli(
        ) -> None:
    with pytest.raises(ApiServerError, match="watch_history must be at least 1"):
        ApiServerSettings(watch_history=0)
    from raven.commands.apiserver import SETTING_OPTIONS
    assert dict(SETTING_OPTIONS)["watch_history"] == "--watch-history"


def _literal_flags(container: dict[str, Any]) -> list[str]:
    """The container's `--flag=value` args whose value is written out (not $(ENV)); the
    --metrics-listen addresses have no default (their port is checked above)."""
    return [a for a in container.get("args", [])
            if a.startswith("--") and "=" in a and "$(" not in a
            and not a.startswith("--metrics-listen=")]


@pytest.mark.parametrize(("path", "kind", "argv"), [
    (ROOT / "agent" / "daemonset.yaml", "DaemonSet", ["agent", "--node", "n1"]),
    (ROOT / "gateway" / "controller.yaml", "Deployment", ["controller"]),
])
def test_manifest_flags_set_what_the_root_defaults_to(path: Path, kind: str,
                                                      argv: list[str]) -> None:
    flags = _literal_flags(_container(path, kind))
    assert flags, f"{path.name}: no literal flags to compare"
    defaults = vars(build_parser().parse_args(argv))
    differ = {}
    for flag in flags:
        parsed = vars(build_parser().parse_args([*argv, flag]))
        changed = {k: v for k, v in parsed.items() if v != defaults[k]}
        if changed:
            differ[flag] = (changed, {k: defaults[k] for k in changed})
    assert differ == {}, (f"{path.name} passes values that are not the settings root's "
                          f"defaults (raven/settings.py): {differ}; change one of the two")


def test_the_labs_copies_agree_with_the_root() -> None:
    assert DEFAULTS.apiserver.port == cluster.APISERVER_PORT
    assert DEFAULTS.lab.node_grace == kubelet.DEFAULT_GRACE


def _container(path: Path, kind: str) -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _served_ports(container: dict[str, Any]) -> dict[str, int]:
    """Where the manifest says the daemon serves /healthz and /metrics."""
    ports = {f"containerPort {p['name']}": p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            ports[probe] = container[probe]["httpGet"]["port"]
    for arg in container.get("args", []):
        if arg.startswith("--metrics-listen="):
            ports[arg] = int(arg.rpartition(":")[2])
    return ports


@pytest.mark.parametrize(("path", "kind", "port"), [
    (ROOT / "agent" / "daemonset.yaml", "DaemonSet", AgentSettings().metrics_port),
    (ROOT / "gateway" / "controller.yaml", "Deployment", ControllerSettings().metrics_port),
])
def test_manifests_serve_health_and_metrics_on_the_settings_port(path: Path, kind: str,
                                                                 port: int) -> None:
    served = _served_ports(_container(path, kind))
    assert sum(k.startswith("--metrics-listen=") for k in served) >= 1, served
    assert any(k.endswith("Probe") for k in served), served
    wrong = {where: p for where, p in served.items() if p != port}
    assert wrong == {}, (f"{path.name} serves on {wrong}, the settings root says {port} "
                         "(raven/settings.py); change one of the two")


def test_the_metrics_listen_help_names_the_settings_port() -> None:
    assert f":{AgentSettings().metrics_port}" in help_for(AgentSettings, "metrics_listen")
    assert f":{ControllerSettings().metrics_port}" in help_for(ControllerSettings,
                                                                "metrics_listen")


def test_every_copy_of_the_proxy_server_port_agrees_with_the_root() -> None:
    copies = {
        "ProxySettings.server_port": ProxySettings().server_port,
        "ControllerSettings.proxy_server_port": ControllerSettings().proxy_server_port,
        "ApiServerSettings.raven_proxy_port": DEFAULTS.apiserver.raven_proxy_port,
        "raven.proxy.plan.SERVER_PORT": proxy_plan.SERVER_PORT,
        "raven agent --proxy-server-port": build_parser().parse_args(
            ["agent", "--node", "n1"]).proxy_server_port,
    }
    assert {k: v for k, v in copies.items() if v != PROXY_SERVER_PORT} == {}


@pytest.mark.parametrize("argv", [["status"], ["diagnose"], ["agent", "cleanup"],
                                  ["agent", "--node", "n1"]])
def test_every_state_dir_flag_defaults_to_the_agents(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).state_dir == AgentSettings().state_dir
