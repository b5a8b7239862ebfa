"""The overlay's `raven lab` subcommands: full `up` and `demo`, kubeconfig, and the fault verbs.

`register_overlay(lab_subparsers)` is called by raven/commands/lab.py after it registered the
bare-lab verbs: it makes `up` and `demo` bring up the whole system by default (`--network-only`
keeps the bare lab) and adds kubeconfig, agent-restart, node-down, node-up, disconnect,
reconnect, gateway-fail, control-plane-stop and control-plane-start.
Thin: parse, call raven.lab.cluster / raven.lab.faults, print.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from raven.errors import CommandError, ValidationError


def _progress(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise CommandError("the lab needs root (network namespaces); run it as root")


def _invalid(exc: ValidationError) -> CommandError:
    lines = "\n".join(f"  - {p}" for p in exc.problems)
    return CommandError(f"invalid topology ({len(exc.problems)} problems); nothing was "
                        f"created:\n{lines}", exit_code=2)


def register_overlay(lab: argparse._SubParsersAction) -> None:
    up = lab.choices["up"]
    network_up = up.get_default("func")
    up.add_argument("--network-only", action="store_true",
                    help="only the network (namespaces, NAT, pods): no API server, controller "
                    "or agents")
    up.add_argument("--no-wait", action="store_true",
                    help="start everything but do not wait until all pod pairs answer")
    up.set_defaults(func=lambda args: cmd_up(args, network_up))

    demo = lab.choices["demo"]
    network_demo = demo.get_default("func")
    demo.add_argument("--network-only", action="store_true",
                      help="the bare lab demo (no overlay: only in-pool pairs answer)")
    demo.set_defaults(func=lambda args: cmd_demo(args, network_demo))

    p = lab.add_parser("kubeconfig", help="print the path of a lab's admin kubeconfig")
    p.add_argument("name")
    p.set_defaults(func=cmd_kubeconfig)

    p = lab.add_parser("agent-restart", help="restart a node's agent (SIGTERM, start again)")
    p.add_argument("name")
    p.add_argument("node")
    p.set_defaults(func=cmd_agent_restart)

    p = lab.add_parser("node-down", help="power a node off: kill its processes, cut its port")
    p.add_argument("name")
    p.add_argument("node")
    p.set_defaults(func=cmd_node_down)

    p = lab.add_parser("node-up", help="power a node on again and start its agent")
    p.add_argument("name")
    p.add_argument("node")
    p.add_argument("--reboot", action="store_true",
                   help="wipe the node's links, routes, rules and nftables first (power cycle)")
    p.set_defaults(func=cmd_node_up)

    p = lab.add_parser("disconnect", help="cut a pool off the control plane (pod traffic flows)")
    p.add_argument("name")
    p.add_argument("pool", help="pool or Gateway name")
    p.set_defaults(func=cmd_disconnect)

    p = lab.add_parser("reconnect", help="undo disconnect")
    p.add_argument("name")
    p.add_argument("pool", help="pool or Gateway name")
    p.set_defaults(func=cmd_reconnect)

    p = lab.add_parser("gateway-fail", help="power off the pool's active gateway node")
    p.add_argument("name")
    p.add_argument("pool", help="pool or Gateway name")
    p.set_defaults(func=cmd_gateway_fail)

    p = lab.add_parser("control-plane-stop", help="stop the API server and the controller")
    p.add_argument("name")
    p.set_defaults(func=cmd_cp_stop)

    p = lab.add_parser("control-plane-start", help="start the API server and the controller")
    p.add_argument("name")
    p.set_defaults(func=cmd_cp_start)

    p = lab.add_parser("gateways", help="show Gateways: members and elected active endpoints")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the Gateway objects as JSON")
    p.set_defaults(func=cmd_gateways)


def cmd_up(args: argparse.Namespace, network_up: Callable[[argparse.Namespace], int]) -> int:
    if args.network_only:
        return network_up(args)
    from raven.lab import build, cluster, teardown
    from raven.lab.topology import load_topology

    try:
        topology = load_topology(args.file)
    except ValidationError as exc:
        raise _invalid(exc) from None
    _need_root()
    plan = build.up(topology, args.name, progress=_progress, source=args.file)
    try:
        cluster.up(plan, progress=_progress, wait=not args.no_wait)
    except BaseException as exc:
        _progress(f"failed: {exc}; removing lab {plan.name}")
        teardown.down(plan.name)
        raise
    print(plan.name)
    return 0


def cmd_demo(args: argparse.Namespace, network_demo: Callable[[argparse.Namespace], int]) -> int:
    if args.network_only:
        return network_demo(args)
    from raven.lab.overlay_demo import run_overlay_demo

    _need_root()
    try:
        return run_overlay_demo(args.topology, keep=args.keep, name=args.name)
    except ValidationError as exc:
        raise _invalid(exc) from None


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    from raven.lab import cluster, runtime

    runtime.load_plan(args.name)
    path = cluster.kubeconfig_path(args.name)
    if not path.exists():
        raise CommandError(f"lab {args.name!r} has no API server (built with --network-only?)")
    print(path)
    return 0


def cmd_agent_restart(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    seconds = faults.agent_restart(args.name, args.node)
    print(f"agent on {args.node} restarted ({seconds:.2f}s without agent)")
    return 0


def cmd_node_down(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.node_down(args.name, args.node)
    print(f"node {args.node} is down")
    return 0


def cmd_node_up(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.node_up(args.name, args.node, reboot=args.reboot)
    print(f"node {args.node} is up" + (" (rebooted)" if args.reboot else ""))
    return 0


def cmd_disconnect(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.disconnect(args.name, args.pool)
    print(f"pool {args.pool} is cut off the control plane")
    return 0


def cmd_reconnect(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.reconnect(args.name, args.pool)
    print(f"pool {args.pool} reaches the control plane again")
    return 0


def cmd_gateway_fail(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    node = faults.gateway_fail(args.name, args.pool)
    print(f"active gateway {node} of pool {args.pool} is down")
    return 0


def cmd_cp_stop(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.control_plane_stop(args.name)
    print("control plane stopped")
    return 0


def cmd_cp_start(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.control_plane_start(args.name)
    print("control plane started")
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    from raven.lab import cluster

    _need_root()
    if args.json:
        print(json.dumps(cluster.gateways(args.name), indent=1))
    else:
        print(cluster.format_gateways(args.name))
    return 0
