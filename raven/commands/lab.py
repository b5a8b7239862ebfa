"""`raven lab ...`: build, inspect, use and remove network-namespace labs (see docs/lab.md).

Thin: parse arguments, call raven.lab, print. Problems the operator can fix (invalid topology,
unknown lab or target) are CommandErrors: one message, no traceback, non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from raven.errors import CommandError, ValidationError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lab", help="network-namespace labs of node pools (docs/lab.md)")
    lab = parser.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = lab.add_parser("up", help="build a lab from a topology file")
    p.add_argument("file", help="topology YAML file")
    p.add_argument("--name", help="lab name (default: the file's `name`)")
    p.set_defaults(func=cmd_up)

    p = lab.add_parser("down", help="remove a lab: namespaces, links, processes, files")
    p.add_argument("name", nargs="?", help="lab name")
    p.add_argument("--all", action="store_true", help="remove every lab, also half-built ones")
    p.set_defaults(func=cmd_down)

    p = lab.add_parser("status", help="show a lab")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = lab.add_parser("list", help="list labs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = lab.add_parser("logs", help="print the logs of the processes of a target")
    p.add_argument("name")
    p.add_argument("target", help="node, pod, control-plane, internet or router-<pool>")
    p.add_argument("--process", help="only this supervised process")
    p.set_defaults(func=cmd_logs)

    p = lab.add_parser("exec", help="run a command in a node (netns + mount ns) or pod")
    p.add_argument("name")
    p.add_argument("target", help="node, pod, control-plane, internet or router-<pool>")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(func=cmd_exec)

    p = lab.add_parser("ping", help="ping every pod from every other pod, in parallel")
    p.add_argument("name")
    p.add_argument("--scope", choices=("all", "pool"), default="all",
                   help="all pairs (default) or only pairs inside the same pool")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ping)

    p = lab.add_parser("demo", help="build the default lab, show it, ping, tear it down")
    p.add_argument("--topology", help="topology file (default: test-topologies/three-pools.yaml)")
    p.add_argument("--name", help="lab name (default: the topology's name)")
    p.add_argument("--keep", action="store_true", help="keep the lab running afterwards")
    p.set_defaults(func=cmd_demo)

    from raven.lab.overlay_cli import register_overlay  # the overlay verbs (issue 7)

    register_overlay(lab)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise CommandError("the lab needs root (network namespaces); run it as root")


def _progress(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def _invalid(exc: ValidationError) -> CommandError:
    lines = "\n".join(f"  - {p}" for p in exc.problems)
    return CommandError(f"invalid topology ({len(exc.problems)} problems); nothing was "
                        f"created:\n{lines}", exit_code=2)


def cmd_up(args: argparse.Namespace) -> int:
    from raven.lab import build
    from raven.lab.topology import load_topology

    try:
        topology = load_topology(args.file)
    except ValidationError as exc:
        raise _invalid(exc) from None
    _need_root()
    name = args.name or build.default_lab_name(topology, args.file)
    plan = build.up(topology, name, progress=_progress, source=args.file)
    print(plan.name)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from raven.lab import teardown
    from raven.lab.topology import lab_name_problem

    _need_root()
    if args.all == bool(args.name):
        raise CommandError("give a lab NAME or --all")
    if args.all:
        labs = teardown.down_all()
        print(f"removed {len(labs)} labs" + (f": {', '.join(labs)}" if labs else ""))
        return 0
    why = lab_name_problem(args.name)
    if why:
        raise CommandError(why)
    removed = teardown.down(args.name)
    print(f"lab {args.name}: removed {len(removed)} namespaces")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from raven.lab import runtime, status

    plan = runtime.load_plan(args.name)
    if args.json:
        print(json.dumps(status.status_json(plan), indent=1))
    else:
        print(status.format_status(plan))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from raven.lab import runtime, teardown

    labs = teardown.discover_labs() if os.geteuid() == 0 else runtime.list_labs()
    rows = []
    for lab in labs:
        state = runtime.read_state(lab) or {}
        plan = state.get("plan", {})
        pools = plan.get("pools", [])
        rows.append({"name": lab, "phase": state.get("phase", "broken (no state)"),
                     "pools": len(pools), "nodes": sum(len(p["nodes"]) for p in pools),
                     "source": plan.get("source", "")})
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print("no labs")
    else:
        for r in rows:
            print(f"{r['name']:<26} {r['phase']:<10} pools {r['pools']:<3} nodes {r['nodes']:<4} "
                  f"{r['source']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from raven.lab import runtime

    plan = runtime.load_plan(args.name)
    if args.target not in plan.targets():
        raise CommandError(f"lab {args.name!r} has no target {args.target!r}; targets: "
                           f"{', '.join(sorted(plan.targets()))}")
    folder = runtime.run_dir(args.name) / "logs"
    pattern = f"{args.target}.{args.process or '*'}.log"
    files = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not files:
        print(f"no logs for {args.target}" + (f"/{args.process}" if args.process else ""),
              file=sys.stderr)
        return 1
    for path in files:
        if len(files) > 1:
            print(f"==> {path.name} <==")
        sys.stdout.write(path.read_text(errors="replace"))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from raven.lab import runtime

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CommandError("give the command after --, e.g. raven lab exec LAB NODE -- ip addr")
    _need_root()
    argv = runtime.exec_argv(args.name, args.target) + cmd
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}") from None
    return 127  # not reached


def cmd_ping(args: argparse.Namespace) -> int:
    from raven.lab import runtime
    from raven.lab.ping import format_matrix, ping_all

    _need_root()
    plan = runtime.load_plan(args.name)
    report = ping_all(plan, scope=args.scope)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for p in report.pairs:
            rtt = f"{p.rtt_ms:.3f} ms" if p.rtt_ms is not None else "-"
            print(f"{'ok  ' if p.ok else 'FAIL'} {p.src:<20} -> {p.dst:<20} {rtt}")
        print(format_matrix(report, [p.name for p in plan.pools]))
        answered = sum(p.ok for p in report.pairs)
        print(f"{answered}/{len(report.pairs)} pairs answered")
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from raven.lab.demo import run_demo

    _need_root()
    try:
        return run_demo(args.topology, keep=args.keep, name=args.name)
    except ValidationError as exc:
        raise _invalid(exc) from None
