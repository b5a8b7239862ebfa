"""Arguments and entry point of the agent's run mode (`raven agent --node ... --state-dir ...`).

Kept apart from `raven/commands/agent.py` (which also owns `raven agent cleanup`) so the verb
module only wires the two together.

Rules kept: every default and help text comes from `raven.settings.AgentSettings` (no number is
written here); every problem with the flags or the state directory is reported at once, with
the flag and the fix, as a CommandError (exit code 2 without a traceback) before anything
touches the kernel or the API.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

from raven.errors import CommandError
from raven.failover import ProbeSettings, probe_problems
from raven.settings import (
    DEFAULT_STATE_DIR,
    WIREGUARD_BACKENDS,
    AgentSettings,
    OverlaySettings,
    ProxySettings,
    default_of,
    help_for,
    listen_problems,
    overlay_problems,
    overlay_warnings,
    proxy_problems,
)

A = AgentSettings


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", default=os.environ.get("NODE_NAME"),
                   help=help_for(A, "node") + " (default: $NODE_NAME, set by the DaemonSet)")
    p.add_argument("--kubeconfig", type=Path, default=None,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--state-dir", type=Path, default=default_of(A, "state_dir"),
                   help=help_for(A, "state_dir"))
    p.add_argument("--netns", default=default_of(A, "netns"), help=help_for(A, "netns"))
    p.add_argument("--tunnel-netns", default=default_of(A, "tunnel_netns"), metavar="NAME",
                   help=help_for(A, "tunnel_netns"))
    p.add_argument("--wireguard", dest="wireguard_backend",
                   default=default_of(A, "wireguard_backend"),
                   choices=list(WIREGUARD_BACKENDS), help=help_for(A, "wireguard_backend"))
    p.add_argument("--wireguard-go", default=default_of(A, "wireguard_go"),
                   help=help_for(A, "wireguard_go"))
    p.add_argument("--underlay-mtu", type=int, default=default_of(OverlaySettings, "underlay_mtu"),
                   help=help_for(OverlaySettings, "underlay_mtu") + "; at least "
                   f"{OverlaySettings().min_underlay_mtu}")
    p.add_argument("--resync", type=float, default=default_of(A, "resync_period"),
                   help=help_for(A, "resync_period"))
    p.add_argument("--heartbeat-period", type=float, default=default_of(A, "heartbeat_period"),
                   help=help_for(A, "heartbeat_period"))
    p.add_argument("--probe-interval", type=float, default=default_of(ProbeSettings, "interval"),
                   help=help_for(ProbeSettings, "interval"))
    p.add_argument("--metrics-listen", action="append", default=None, metavar="HOST:PORT",
                   help=help_for(A, "metrics_listen"))
    P = ProxySettings
    p.add_argument("--proxy", dest="proxy_enabled", action=argparse.BooleanOptionalAction,
                   default=default_of(P, "enabled"), help=help_for(P, "enabled"))
    p.add_argument("--proxy-server-port", type=int, default=default_of(P, "server_port"),
                   help=help_for(P, "server_port"))
    p.add_argument("--proxy-ca-file", type=Path, default=None, help=help_for(P, "ca_file"))
    p.add_argument("--proxy-ca-key-file", type=Path, default=None,
                   help=help_for(P, "ca_key_file"))
    p.add_argument("--proxy-cert-lifetime", type=float, default=default_of(P, "cert_lifetime"),
                   help=help_for(P, "cert_lifetime"))
    p.add_argument("--proxy-keepalive", type=float, default=default_of(P, "keepalive"),
                   help=help_for(P, "keepalive"))
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def state_dir_problem(path: Path) -> str | None:
    """Why the agent cannot keep its key, cache and status in `path`, or None."""
    fix = f"pass --state-dir with a writable directory (default {DEFAULT_STATE_DIR})"
    if path.exists() and not path.is_dir():
        return f"--state-dir {path}: is a file, not a directory; {fix}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"--state-dir {path}: not writable ({exc.strerror or exc}); {fix}"
    return None


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """The agent's settings, or a CommandError naming every bad flag."""
    from raven.settings import KubeSettings

    problems = []
    if not args.node:
        problems.append("no node name: pass --node NAME or set NODE_NAME")
    if not args.resync > 0:
        problems.append(f"--resync {args.resync:g}: must be a positive number of seconds")
    if not args.heartbeat_period > 0:
        problems.append(f"--heartbeat-period {args.heartbeat_period:g}: must be a positive "
                        "number of seconds")
    probe = replace(ProbeSettings(), interval=args.probe_interval)
    problems += probe_problems(probe)
    overlay = replace(OverlaySettings(), underlay_mtu=args.underlay_mtu,
                      tunnel_namespace=bool(args.tunnel_netns))
    problems += overlay_problems(overlay)
    listen = tuple(args.metrics_listen or ())
    problems += listen_problems("--metrics-listen", listen)
    proxy = ProxySettings(
        enabled=args.proxy_enabled, server_port=args.proxy_server_port,
        ca_file=args.proxy_ca_file, ca_key_file=args.proxy_ca_key_file,
        cert_lifetime=args.proxy_cert_lifetime, keepalive=args.proxy_keepalive)
    problems += proxy_problems(proxy)
    for flag, path in (("--proxy-ca-file", proxy.ca_file),
                       ("--proxy-ca-key-file", proxy.ca_key_file)):
        if path is not None and not path.is_file():
            problems.append(f"{flag} {path}: no such file")
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        problems.append(f"--kubeconfig {args.kubeconfig}: no such file")
    if not problems:  # only touch the disk once the flags are right
        problem = state_dir_problem(args.state_dir)
        if problem:
            problems.append(problem)
    if problems:
        raise CommandError("agent: " + "; ".join(problems))
    for warning in overlay_warnings(overlay):
        logging.getLogger("raven.agent").warning("%s", warning)
    return AgentSettings(
        node=args.node,
        state_dir=args.state_dir,
        kube=KubeSettings(kubeconfig=args.kubeconfig, context=args.context,
                          user_agent=f"raven-agent/{args.node}"),
        netns=args.netns,
        tunnel_netns=args.tunnel_netns or None,
        wireguard_backend=args.wireguard_backend,
        wireguard_go=args.wireguard_go,
        overlay=overlay,
        resync_period=args.resync,
        heartbeat_period=args.heartbeat_period,
        metrics_listen=listen,
        probe=probe,
        proxy=proxy,
    )


def _with_tunnel_namespace_if_allowed(settings: AgentSettings,
                                      log: logging.Logger) -> AgentSettings:
    """`settings`, or without the tunnel namespace when this process cannot make one (a
    container without the privilege, e.g. a DaemonSet from before it was the default): the
    gateway then keeps its devices in the node's namespace, as it did, instead of failing
    every apply. Refused (CommandError) when an earlier agent on this node made a tunnel
    namespace (its name is recorded in the state directory): its devices hold raven0's VNI and
    the WireGuard port, and without the privilege this agent can neither use nor remove it."""
    from raven.dataplane import tunnel_namespace_problem
    from raven.dataplane.tunnel import RECORD_FILE, recorded_name

    if not settings.tunnel_netns:
        return settings
    problem = tunnel_namespace_problem()
    if problem is None:
        return settings
    recorded = recorded_name(settings.state_dir)
    if recorded is not None:
        raise CommandError(
            f"agent {settings.node}: tunnel namespace {recorded!r}, made by an earlier agent "
            f"on this node, cannot be used or removed: {problem}. Run the agent privileged "
            "with the host's /var/run/netns (agent/daemonset.yaml), or remove the namespace "
            f"on the host (`raven agent cleanup --state-dir {settings.state_dir}` as root, or "
            f"`ip netns delete {recorded}` and delete {settings.state_dir / RECORD_FILE})")
    log.warning("tunnel namespace %r not used, the devices stay in the node's namespace (a "
                "policy rule on an active gateway with members): %s", settings.tunnel_netns,
                problem)
    return replace(settings, tunnel_netns=None,
                   overlay=replace(settings.overlay, tunnel_namespace=False))


def run_agent(args: argparse.Namespace) -> int:
    from raven.agent import Agent
    from raven.dataplane import DataplaneError
    from raven.health import run_until_signalled
    from raven.kube.errors import KubeError

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    log = logging.getLogger("raven.agent")
    log.info("agent %s starting", settings.node)
    settings = _with_tunnel_namespace_if_allowed(settings, log)
    try:
        agent = Agent(settings)
        run_until_signalled(agent.run, agent.health_server, settings.metrics_listen)
    except KubeError as exc:  # e.g. an unreadable kubeconfig, found at connect()
        raise CommandError(f"agent {settings.node}: {exc}") from exc
    except DataplaneError as exc:  # e.g. no WireGuard backend, or a key file we cannot read
        raise CommandError(f"agent {settings.node}: {exc}") from exc
    return 0
