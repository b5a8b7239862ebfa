"""`raven controller`: run the gateway controller (leader-elected; run two for availability)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from raven.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("controller", help="run the gateway controller (elects active gateways)")
    p.add_argument("--kubeconfig", type=Path, default=None,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--identity", default=None,
                   help="leader-election identity (default: hostname-pid; the pod name in k8s)")
    p.add_argument("--lease-duration", type=int, default=15,
                   help="seconds a leader lease is honoured without renewal (default 15)")
    p.add_argument("--renew-period", type=float, default=5.0,
                   help="seconds between leader lease renewals (default 5)")
    p.add_argument("--retry-period", type=float, default=2.0,
                   help="seconds between takeover attempts by a standby (default 2)")
    p.add_argument("--heartbeat-timeout", type=float, default=None,
                   help="seconds after which an agent heartbeat is stale (default: election's)")
    p.add_argument("--resync", type=float, default=5.0,
                   help="seconds between full re-elections without events (default 5)")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve /healthz /readyz /metrics /status here")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from raven.controller import ControllerSettings, GatewayController
    from raven.election import ElectionOptions
    from raven.health import run_until_signalled
    from raven.kube.client import KubeSettings
    from raven.kube.errors import KubeError
    from raven.kube.lease import LeaderSettings

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.renew_period >= args.lease_duration:
        raise CommandError("--renew-period must be shorter than --lease-duration")
    election = ElectionOptions()
    if args.heartbeat_timeout is not None:
        election = replace(election, heartbeat_timeout=args.heartbeat_timeout)
    settings = ControllerSettings(
        kube=KubeSettings(kubeconfig=args.kubeconfig, context=args.context,
                          user_agent="raven-controller"),
        leader=LeaderSettings(lease_duration=args.lease_duration, renew_period=args.renew_period,
                              retry_period=args.retry_period),
        election=election,
        resync_period=args.resync,
        metrics_listen=args.metrics_listen,
    )
    if args.identity:
        settings = replace(settings, identity=args.identity)
    try:
        controller = GatewayController(settings)
    except KubeError as exc:
        raise CommandError(str(exc)) from exc
    logging.getLogger("raven.controller").info(
        "controller %s starting against %s", settings.identity, controller.kube.host)
    run_until_signalled(controller.run, controller.health_server, args.metrics_listen)
    return 0
