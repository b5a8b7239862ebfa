"""Arguments and entry point of the agent's run mode (`raven agent --node ... --state-dir ...`).

Kept apart from `raven/commands/agent.py` (which also owns `raven agent cleanup`) so the verb
module only wires the two together.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from raven.errors import CommandError


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", default=os.environ.get("NODE_NAME"),
                   help="this node's name (default: $NODE_NAME, set by the DaemonSet)")
    p.add_argument("--kubeconfig", type=Path, default=None,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/raven"),
                   help="keys, input cache and status (default /var/lib/raven)")
    p.add_argument("--netns", default=None,
                   help="program this named network namespace instead of our own (labs)")
    p.add_argument("--wireguard", dest="wireguard_backend", default="auto",
                   choices=["auto", "kernel", "userspace"], help="WireGuard backend")
    p.add_argument("--wireguard-go", default="wireguard-go", help="wireguard-go binary")
    p.add_argument("--underlay-mtu", type=int, default=None, help="underlay MTU (default 1500)")
    p.add_argument("--resync", type=float, default=30.0,
                   help="seconds between full re-applies without events (default 30)")
    p.add_argument("--heartbeat-period", type=float, default=5.0,
                   help="seconds between heartbeat Lease renewals (default 5)")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve /healthz /readyz /metrics /status here")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run_agent(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from raven.agent import Agent, AgentSettings
    from raven.health import run_until_signalled
    from raven.kube.errors import KubeError
    from raven.kube.settings import KubeSettings
    from raven.topology import PlanOptions

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.node:
        raise CommandError("no node name: pass --node NAME or set NODE_NAME")
    if args.resync <= 0 or args.heartbeat_period <= 0:
        raise CommandError("--resync and --heartbeat-period must be positive")
    plan = PlanOptions()
    if args.underlay_mtu is not None:
        plan = replace(plan, underlay_mtu=args.underlay_mtu)
    settings = AgentSettings(
        node=args.node,
        state_dir=args.state_dir,
        kube=KubeSettings(kubeconfig=args.kubeconfig, context=args.context,
                          user_agent=f"raven-agent/{args.node}"),
        netns=args.netns,
        wireguard_backend=args.wireguard_backend,
        wireguard_go=args.wireguard_go,
        plan=plan,
        resync_period=args.resync,
        heartbeat_period=args.heartbeat_period,
        metrics_listen=args.metrics_listen,
    )
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        raise CommandError(f"--kubeconfig {args.kubeconfig}: no such file")
    agent = Agent(settings)
    logging.getLogger("raven.agent").info("agent %s starting", args.node)
    try:
        run_until_signalled(agent.run, agent.health_server, args.metrics_listen)
    except KubeError as exc:  # e.g. an unreadable kubeconfig, found at connect()
        raise CommandError(f"agent {args.node}: {exc}") from exc
    return 0
