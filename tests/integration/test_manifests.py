"""The deployment manifests apply cleanly to the embedded API server with kubectl, and say what
the operator guide promises (host network, capabilities, probes, least-privilege RBAC), and the
commands they run are accepted by our own CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kube_support import ROOT, kubectl

from raven.apiserver.server import RunningApiServer
from raven.cli import build_parser
from raven.commands import controller as controller_command
from raven.settings import (
    AgentSettings,
    ControllerSettings,
    LeaderSettings,
    listen_problems,
)

AGENT = [ROOT / "agent" / "rbac.yaml", ROOT / "agent" / "daemonset.yaml"]
GATEWAY = [ROOT / "gateway" / "crd.yaml", ROOT / "gateway" / "rbac.yaml",
           ROOT / "gateway" / "controller.yaml"]


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def get(server: RunningApiServer, *args: str) -> dict[str, Any]:
    return json.loads(kubectl(server.kubeconfig, "get", *args, "-o", "json").stdout)


def test_every_manifest_applies_cleanly_and_twice(server: RunningApiServer) -> None:
    for path in GATEWAY + AGENT:
        first = kubectl(server.kubeconfig, "apply", "-f", str(path))
        assert "created" in first.stdout, first.stdout
        again = kubectl(server.kubeconfig, "apply", "-f", str(path))  # idempotent
        assert "created" not in again.stdout and not again.stderr.strip(), again.stdout
    for path in GATEWAY + AGENT:
        for doc in docs(path):
            meta = doc["metadata"]
            ns = ["-n", meta["namespace"]] if meta.get("namespace") else []
            kind = doc["kind"].lower() + "." + doc["apiVersion"].split("/")[0] if "/" in doc[
                "apiVersion"] else doc["kind"].lower()
            stored = get(server, kind, meta["name"], *ns)
            assert stored["metadata"]["name"] == meta["name"]


def test_daemonset_runs_the_agent_as_the_guide_says(server: RunningApiServer) -> None:
    for path in AGENT:
        kubectl(server.kubeconfig, "apply", "-f", str(path))
    ds = get(server, "daemonset", "-n", "kube-system", "raven-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == "raven-agent"
    (c,) = pod["containers"]
    # The tunnel namespace (the agent's default, docs/tunnel-namespace.md) needs a privileged
    # container and the host's /var/run/netns shared both ways, so it outlives the container.
    assert AgentSettings().tunnel_netns and "--tunnel-netns=" not in c["args"]
    assert c["securityContext"]["privileged"] is True
    netns = next(v for v in pod["volumes"] if v["name"] == "netns")
    assert netns["hostPath"]["path"] == "/var/run/netns"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "netns")
    assert (mount["mountPath"], mount["mountPropagation"]) == ("/var/run/netns", "Bidirectional")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == "/var/lib/raven"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "state")
    assert mount["mountPath"] == "/var/lib/raven"
    assert "--state-dir=/var/lib/raven" in c["args"]
    port = c["ports"][0]["containerPort"]
    assert port == AgentSettings().metrics_port
    # Loopback (probes, /status) and the node's InternalIP (Prometheus), never a wildcard.
    listens = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--metrics-listen=")]
    assert listens == [f"127.0.0.1:{port}", f"$(NODE_IP):{port}"]
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port,
                                              "host": "127.0.0.1"}
    assert c["readinessProbe"]["httpGet"]["host"] == "127.0.0.1"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == port


def test_controller_deployment_has_two_leader_elected_replicas(server: RunningApiServer) -> None:
    for path in GATEWAY:
        kubectl(server.kubeconfig, "apply", "-f", str(path))
    deploy = get(server, "deployment", "-n", "kube-system", "raven-gateway-controller")
    assert deploy["spec"]["replicas"] == 2
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["raven", "controller"]
    assert any(a.startswith("--lease-duration=") for a in c["args"])
    port = ControllerSettings().metrics_port
    assert c["ports"][0]["containerPort"] == port
    listens = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--metrics-listen=")]
    assert listens == [f"127.0.0.1:{port}", f"$(POD_IP):{port}"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == port  # the pod IP: served by the second listener


def _rules(path: Path, kind: str, name: str) -> list[dict[str, Any]]:
    doc = next(d for d in docs(path) if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc["rules"]


def _verbs(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    return {v for r in rules if group in r["apiGroups"] and resource in r["resources"]
            for v in r["verbs"]}


def test_agent_rbac_is_least_privilege() -> None:
    cluster = _rules(ROOT / "agent" / "rbac.yaml", "ClusterRole", "raven-agent")
    assert _verbs(cluster, "raven.openyurt.io", "gateways") == {"get", "list", "watch"}
    assert _verbs(cluster, "raven.openyurt.io", "gateways/status") == set()
    assert _verbs(cluster, "", "nodes") == {"get", "list", "watch", "patch"}
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in cluster)
    role = _rules(ROOT / "agent" / "rbac.yaml", "Role", "raven-agent-heartbeat")
    assert _verbs(role, "coordination.k8s.io", "leases") == {"get", "create", "update"}
    assert _verbs(role, "", "secrets") == {"get"}  # the proxy CA, and only it
    assert all(r.get("resourceNames") == ["raven-proxy-ca"] for r in role
               if "secrets" in r["resources"])


def test_controller_rbac_writes_only_gateway_status() -> None:
    cluster = _rules(ROOT / "gateway" / "rbac.yaml", "ClusterRole", "raven-gateway-controller")
    assert _verbs(cluster, "raven.openyurt.io", "gateways") == {"get", "list", "watch"}
    assert {"update"} <= _verbs(cluster, "raven.openyurt.io", "gateways/status")
    assert _verbs(cluster, "", "nodes") == {"get", "list", "watch"}
    assert "create" in _verbs(cluster, "", "events")
    role = _rules(ROOT / "gateway" / "rbac.yaml", "Role", "raven-gateway-controller")
    for kind in ("services", "endpoints", "configmaps"):  # the proxy's OpenYurt objects
        assert _verbs(role, "", kind) == {"get", "create", "update", "delete"}


def _container(path: Path, kind: str) -> dict[str, Any]:
    doc = next(d for d in docs(path) if d["kind"] == kind)
    return doc["spec"]["template"]["spec"]["containers"][0]


# Flags whose value belongs to the deployment (names and addresses), not to the settings root.
DEPLOYMENT_FLAGS = {"identity", "metrics_listen", "node"}
# Expansions the kubelet does from the pod's env, replaced by values a node could have.
ENV_EXAMPLES = {"$(POD_NAME)": "pod-x", "$(NODE_IP)": "192.0.2.10", "$(POD_IP)": "10.244.0.5"}


def _manifest_argv(c: dict[str, Any]) -> list[str]:
    argv = []
    for arg in c["command"][1:] + c["args"]:
        for var, value in ENV_EXAMPLES.items():
            arg = arg.replace(var, value)
        argv.append(arg)
    return argv


def test_manifest_flags_are_cli_flags_and_agree_with_the_settings_root() -> None:
    parser = build_parser()
    for path, kind, verb in ((ROOT / "gateway" / "controller.yaml", "Deployment", "controller"),
                             (ROOT / "agent" / "daemonset.yaml", "DaemonSet", "agent")):
        c = _container(path, kind)
        argv = _manifest_argv(c)
        defaults = vars(parser.parse_args([verb, "--node", "n"] if verb == "agent" else [verb]))
        given = vars(parser.parse_args(argv))  # exits (SystemExit) on an unknown flag
        set_by_manifest = {k for k in given if given[k] != defaults[k]} - DEPLOYMENT_FLAGS
        assert not set_by_manifest, (
            f"{path.name} sets {sorted(set_by_manifest)} to values other than the settings "
            "root's defaults (raven/settings.py); change one of the two")
        assert any(a.startswith("--") for a in argv), f"{path.name}: no flags found"
    controller = parser.parse_args(_manifest_argv(_container(ROOT / "gateway" /
                                                             "controller.yaml", "Deployment")))
    settings = controller_command.settings_from_args(controller)  # passes its validation
    assert settings.leader == LeaderSettings()
    assert settings.metrics_listen == ("127.0.0.1:10266", "10.244.0.5:10266")
    agent = parser.parse_args(_manifest_argv(_container(ROOT / "agent" / "daemonset.yaml",
                                                        "DaemonSet")))
    assert agent.state_dir == AgentSettings().state_dir
    assert agent.resync == AgentSettings().resync_period
    assert listen_problems("--metrics-listen", tuple(agent.metrics_listen)) == []


def test_manifest_commands_are_accepted_by_our_cli() -> None:
    parser = build_parser()
    for path, kind in ((ROOT / "gateway" / "controller.yaml", "Deployment"),
                       (ROOT / "agent" / "daemonset.yaml", "DaemonSet")):
        c = _container(path, kind)
        assert c["command"][0] == "raven"
        args = parser.parse_args(_manifest_argv(c))  # exits (SystemExit) on an unknown flag
        assert callable(args.func)
