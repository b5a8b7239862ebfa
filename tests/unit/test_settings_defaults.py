"""Each default is written once, and what repeats it must agree (issue 10, deliverable 2).

- `raven apiserver`'s argparse defaults are ApiServerSettings' own;
- the ports the shipped manifests serve health and metrics on (containerPort, probes,
  --metrics-listen) are the settings root's `metrics_port`s;
- every copy of the proxy servers' server-facing port agrees with the settings root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from raven.apiserver.settings import ApiServerSettings
from raven.cli import build_parser
from raven.proxy import plan as proxy_plan
from raven.settings import (
    PROXY_SERVER_PORT,
    AgentSettings,
    ControllerSettings,
    ProxySettings,
    default_of,
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


def test_apiserver_flags_default_to_the_api_server_settings() -> None:
    args = build_parser().parse_args(["apiserver", "--data-dir", "/nonexistent"])
    for dest, name in APISERVER_FLAGS.items():
        assert getattr(args, dest) == default_of(ApiServerSettings, name), dest
    assert args.listen == (f"{default_of(ApiServerSettings, 'host')}:"
                           f"{default_of(ApiServerSettings, 'port')}")


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
        "ApiServerSettings.raven_proxy_port": default_of(ApiServerSettings, "raven_proxy_port"),
        "raven.proxy.plan.SERVER_PORT": proxy_plan.SERVER_PORT,
        "raven agent --proxy-server-port": build_parser().parse_args(
            ["agent", "--node", "n1"]).proxy_server_port,
    }
    assert {k: v for k, v in copies.items() if v != PROXY_SERVER_PORT} == {}


@pytest.mark.parametrize("argv", [["status"], ["diagnose"], ["agent", "cleanup"],
                                  ["agent", "--node", "n1"]])
def test_every_state_dir_flag_defaults_to_the_agents(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).state_dir == AgentSettings().state_dir
