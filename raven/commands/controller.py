"""`raven controller`: run the gateway controller (leader-elected; run two for availability).

Every default and help text comes from `raven.settings` (ControllerSettings, LeaderSettings,
ElectionOptions); bad flags are reported at once, with the flag and the fix, without a
traceback.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from raven.election import ElectionOptions
from raven.errors import CommandError
from raven.settings import (
    ControllerSettings,
    LeaderSettings,
    default_of,
    help_for,
    listen_problems,
)

C, L = ControllerSettings, LeaderSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("controller", help="run the gateway controller (elects active gateways)")
    p.add_argument("--kubeconfig", type=Path, default=None,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--identity", default=default_of(C, "identity"), help=help_for(C, "identity"))
    p.add_argument("--lease-duration", type=int, default=default_of(L, "lease_duration"),
                   help=help_for(L, "lease_duration"))
    p.add_argument("--renew-period", type=float, default=default_of(L, "renew_period"),
                   help=help_for(L, "renew_period"))
    p.add_argument("--retry-period", type=float, default=default_of(L, "retry_period"),
                   help=help_for(L, "retry_period"))
    p.add_argument("--heartbeat-timeout", type=float,
                   default=default_of(ElectionOptions, "heartbeat_timeout"),
                   help="seconds after which an agent heartbeat is stale (default "
                   f"{default_of(ElectionOptions, 'heartbeat_timeout'):g})")
    p.add_argument("--resync", type=float, default=default_of(C, "resync_period"),
                   help=help_for(C, "resync_period"))
    p.add_argument("--metrics-listen", action="append", default=None, metavar="HOST:PORT",
                   help=help_for(C, "metrics_listen"))
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    from raven.settings import KubeSettings

    problems = []
    for flag, value in (("--renew-period", args.renew_period),
                        ("--retry-period", args.retry_period), ("--resync", args.resync),
                        ("--lease-duration", args.lease_duration),
                        ("--heartbeat-timeout", args.heartbeat_timeout)):
        if not value > 0:
            problems.append(f"{flag} {value:g}: must be a positive number of seconds")
    if args.renew_period >= args.lease_duration:
        problems.append("--renew-period must be shorter than --lease-duration")
    listen = tuple(args.metrics_listen or ())
    problems += listen_problems("--metrics-listen", listen)
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        problems.append(f"--kubeconfig {args.kubeconfig}: no such file")
    if problems:
        raise CommandError("controller: " + "; ".join(problems))
    return ControllerSettings(
        kube=KubeSettings(kubeconfig=args.kubeconfig, context=args.context,
                          user_agent="raven-controller"),
        identity=args.identity or "",
        leader=LeaderSettings(lease_duration=args.lease_duration, renew_period=args.renew_period,
                              retry_period=args.retry_period),
        election=ElectionOptions(heartbeat_timeout=args.heartbeat_timeout),
        resync_period=args.resync,
        metrics_listen=listen,
    )


def run(args: argparse.Namespace) -> int:
    from raven.controller import GatewayController
    from raven.health import run_until_signalled
    from raven.kube.errors import KubeError

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    try:
        controller = GatewayController(settings)
    except KubeError as exc:
        raise CommandError(str(exc)) from exc
    logging.getLogger("raven.controller").info(
        "controller %s starting against %s", controller.settings.identity, controller.kube.host)
    run_until_signalled(controller.run, controller.health_server, settings.metrics_listen)
    return 0
