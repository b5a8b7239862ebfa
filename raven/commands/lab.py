"""`raven lab ...`: build, inspect, use, break and remove network-namespace labs (docs/lab.md).

Thin: parse arguments, call raven.lab, print. This is the one module of the lab's command line.
The verbs are a table (`VERBS`, at the end: name, help, arguments, function), in the order
`raven lab --help` lists them; `register` only turns it into argparse sub-parsers.
Rules kept:
- Problems the operator can fix (invalid topology, unknown lab or target) are CommandErrors:
  one message, no traceback, non-zero exit.
- `up` and `demo` either finish or leave nothing: a failure, a closed output pipe or SIGINT /
  SIGTERM / SIGHUP removes the lab they were building (raven.lab.guard), then exits non-zero
  (128 + signal for a signal, 141 for a closed pipe). A lab that already existed is never removed.
- A topology argument is a file or the name of a bundled topology (`three-pools`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from raven.errors import CommandError, ValidationError
from raven.settings import LabSettings

if TYPE_CHECKING:
    from raven.lab.topology import Topology

TOPOLOGY_HELP = "topology YAML file, or the name of a bundled topology (e.g. three-pools)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lab", help="network-namespace labs of node pools (docs/lab.md)")
    lab = parser.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    for verb in VERBS:
        verb.add_to(lab)


@dataclass(frozen=True)
class Arg:
    """One argument of a verb: argparse.add_argument(*flags, **options)."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Verb:
    """One `raven lab VERB`: its help, arguments and the function that runs it."""

    name: str
    help: str
    func: Callable[[argparse.Namespace], int]
    args: tuple[Arg, ...] = ()
    printing: bool = False  # only prints: a closed pipe ends it quietly (_printing)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def add_to(self, verbs: argparse._SubParsersAction) -> None:
        parser = verbs.add_parser(self.name, help=self.help)
        for a in self.args:
            parser.add_argument(*a.flags, **a.options)
        parser.set_defaults(func=_printing(self.func) if self.printing else self.func,
                            **self.defaults)


def _printing(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """For verbs that only print: a closed pipe (`| head`) ends them quietly with exit 141."""

    def run(args: argparse.Namespace) -> int:
        from raven.lab import guard

        saved = sys.stdout
        guarded = guard.GuardedStream(saved)
        sys.stdout = guarded  # type: ignore[assignment]
        try:
            code = func(args)
            guarded.flush()
            return code
        finally:
            sys.stdout = saved

    return run


def _need_root() -> None:
    if os.geteuid() != 0:
        raise CommandError("the lab needs root (network namespaces); run it as root")


def _progress_to(stream: TextIO) -> Callable[[str], None]:
    def progress(message: str) -> None:
        print(f"[lab] {message}", file=stream, flush=True)

    return progress


def _invalid(exc: ValidationError) -> CommandError:
    lines = "\n".join(f"  - {p}" for p in exc.problems)
    return CommandError(f"invalid topology ({len(exc.problems)} problems); nothing was "
                        f"created:\n{lines}", exit_code=2)


def _load(arg: str) -> tuple[Topology, str]:
    from raven.lab.topology import find_topology, load_topology

    try:
        path = find_topology(arg)
        return load_topology(path), str(path)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _lab_is_new(lab: str | None) -> bool:
    """True when `lab` is a valid name of a lab that does not exist yet (ours to remove if
    `up` fails); a taken or invalid name is never torn down."""
    from raven.lab import netns as nsutil
    from raven.lab import runtime
    from raven.lab.topology import lab_name_problem

    if lab is None or lab_name_problem(lab) is not None:
        return False
    return not runtime.run_dir(lab).exists() and \
        not any(n.startswith(lab + ".") for n in nsutil.list_netns())


def cmd_up(args: argparse.Namespace) -> int:
    from raven.lab import build, guard, teardown

    topology, source = _load(args.file)
    _need_root()
    lab = args.name or build.default_lab_name(topology, source)
    ours = _lab_is_new(lab)
    out, err = guard.guarded_stdio()
    progress = _progress_to(err)
    try:
        with guard.stop_on_signals():
            try:
                plan = build.up(topology, lab, progress=progress, source=source)
                if not args.network_only:
                    from raven.lab import cluster  # imports the Kubernetes client: only here

                    settings = cluster.ClusterSettings(tunnel_namespace=args.tunnel_namespace)
                    cluster.up(plan, progress=progress, wait=not args.no_wait,
                               settings=settings)
                print(plan.name, file=out, flush=True)
            except BaseException as exc:
                if ours and not isinstance(exc, build.LabExists):
                    with contextlib.suppress(Exception):  # a closed pipe must not skip it
                        progress(f"failed: {exc}; removing lab {lab}")
                    teardown.down(str(lab))
                raise
    except guard.Interrupted as exc:
        with contextlib.suppress(Exception):
            progress(f"{exc}: lab {lab} removed")
        return exc.exit_code
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from raven.lab import build, cluster
    from raven.lab.plan import plan_lab, plan_to_json

    topology, source = _load(args.file)
    lab = args.name or build.default_lab_name(topology, source)
    if lab is None:
        raise CommandError("the topology has no 'name'; give one with --name NAME")
    plan = plan_lab(topology, lab, source=source)
    if not args.manifests:
        print(json.dumps(plan_to_json(plan), indent=1))
        return 0
    import yaml

    sys.stdout.write(cluster.gateway_crd().rstrip("\n") + "\n")
    for gateway in cluster.gateway_objects(plan):
        sys.stdout.write("---\n" + yaml.safe_dump(gateway, sort_keys=False))
    return 0


def cmd_vagrantfile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raven.lab import build, vagrant
    from raven.lab.plan import plan_lab

    topology, source = _load(args.file)
    lab = args.name or build.default_lab_name(topology, source)
    if lab is None:
        raise CommandError("the topology has no 'name'; give one with --name NAME")
    project = Path(args.project) if args.project else vagrant.default_project()
    if project is None or not (project / "pyproject.toml").is_file():
        where = (f"{project} is not a source tree of raven (no pyproject.toml)" if args.project
                 else f"raven runs from {project or 'a zip archive'}, not from a source tree "
                 "(installed from a wheel?)")
        raise CommandError(f"{where}; the machines install raven from its source tree: give "
                           "one with --project DIR")
    text = vagrant.vagrantfile(plan_lab(topology, lab, source=source), project.resolve(),
                               box=args.box or vagrant.DEFAULT_BOX)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text)
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.out}: {len(plan_lab(topology, lab).nodes())} nodes, "
          f"{len(topology.pools)} routers, 1 control plane (vagrant up --provider libvirt)")
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
        dual = any(p.family == "ipv6" for p in report.pairs)  # IPv4-only labs: as before
        for p in report.pairs:
            rtt = f"{p.rtt_ms:.3f} ms" if p.rtt_ms is not None else "-"
            family = f"{p.family:<5} " if dual else ""
            print(f"{'ok  ' if p.ok else 'FAIL'} {p.src:<20} -> {p.dst:<20} {family}{rtt}")
        print(format_matrix(report, [p.name for p in plan.pools]))
        answered = sum(p.ok for p in report.pairs)
        print(f"{answered}/{len(report.pairs)} pairs answered")
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from raven.lab import guard

    _need_root()
    out, _ = guard.guarded_stdio()
    try:
        with guard.stop_on_signals():
            if args.network_only:
                from raven.lab.demo import run_demo

                return run_demo(args.topology, keep=args.keep, name=args.name, out=out)
            from raven.lab.overlay_demo import run_overlay_demo

            return run_overlay_demo(args.topology, keep=args.keep, name=args.name, out=out)
    except ValidationError as exc:
        raise _invalid(exc) from None
    except guard.Interrupted as exc:
        return exc.exit_code


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
    seconds = faults.agent_restart(args.name, args.node, ready_timeout=args.timeout)
    print(f"agent on {args.node} restarted and ready ({seconds:.2f}s without agent)")
    return 0


def _effect_stamp(lab: str) -> str:
    """When the fault just made took effect: a fault verb also loads the plan before and kills
    processes after, so time a failover from this instant, not from the command's start."""
    from datetime import UTC, datetime

    from raven.lab import faults

    at = faults.last_effect(lab)
    if at is None:
        return ""
    clock = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]
    return f" (in effect at {clock} UTC, epoch {at:.3f})"


def cmd_node_down(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    faults.node_down(args.name, args.node)
    print(f"node {args.node} is down{_effect_stamp(args.name)}")
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
    print(f"pool {args.pool} is cut off the control plane{_effect_stamp(args.name)}")
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
    node = faults.gateway_fail(args.name, args.pool, args.index)
    print(f"active gateway {node} of pool {args.pool} is down{_effect_stamp(args.name)}")
    return 0


def cmd_nat_rebind(args: argparse.Namespace) -> int:
    from raven.lab import nat

    _need_root()
    generation = nat.rebind(args.name, args.pool)
    print(f"pool {args.pool}: NAT mappings forgotten (generation {generation})")
    return 0


def cmd_uplink_fault(args: argparse.Namespace) -> int:
    from raven.lab import faults

    _need_root()
    if args.verb == "blackhole":
        faults.blackhole(args.name, args.node)
        print(f"node {args.node}: overlay traffic dropped on its uplink (it stays up)"
              f"{_effect_stamp(args.name)}")
    elif args.verb == "unblackhole":
        faults.unblackhole(args.name, args.node)
        print(f"node {args.node}: overlay traffic passes again")
    else:
        faults.loss(args.name, args.node, args.percent)
        print(f"node {args.node}: {args.percent:g}% random loss on its uplink"
              if args.percent else f"node {args.node}: no loss on its uplink")
    return 0


def cmd_delay(args: argparse.Namespace) -> int:
    from raven.lab import faults, guard

    _need_root()
    try:
        with guard.stop_on_signals():  # the switch of the port finishes before a signal lands
            faults.delay(args.name, args.node, args.ms)
    except guard.Interrupted as exc:
        return exc.exit_code
    print(f"node {args.node}: {args.ms:g} ms delay each way on its uplink (round trips "
          f"+{2 * args.ms:g} ms)" if args.ms else f"node {args.node}: no delay on its uplink")
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


# ---------------------------------------------------------------------------------- the verbs
# In the order `raven lab --help` lists them. Arguments many verbs share:
NODE = arg("node")
POOL = arg("pool", help="pool or Gateway name")
TARGET = arg("target", help="node, pod, control-plane, internet or router-<pool>")
TOPOLOGY = arg("file", help=TOPOLOGY_HELP)
LAB_NAME = arg("--name", help="lab name (default: the file's `name`)")
JSON = arg("--json", action="store_true", help="print JSON")

BUILD_VERBS = (
    Verb("up", "build a lab from a topology and start the overlay on it", cmd_up, (
        TOPOLOGY, LAB_NAME,
        arg("--network-only", action="store_true",
            help="only the network (namespaces, NAT, pods): no API server, controller or agents"),
        arg("--no-wait", action="store_true",
            help="start everything but do not wait until all pod pairs answer"),
        arg("--tunnel-namespace", action=argparse.BooleanOptionalAction,
            default=LabSettings().tunnel_namespace,
            help="the agents keep an active gateway's raven0 and raven-wg0 in a namespace of "
            "their own, LAB.NODE-tun, and need no policy rule (docs/tunnel-namespace.md; the "
            "shipped agent's default); --no-tunnel-namespace keeps them in the node's"),
    )),
    Verb("plan", "print a topology's lab plan without building it", cmd_plan, (
        TOPOLOGY, LAB_NAME,
        arg("--manifests", action="store_true",
            help="print the Kubernetes objects the lab applies (Gateway CRD, Gateways) as YAML "
            "instead"),
    ), printing=True),
    Verb("vagrantfile", "write a Vagrantfile (libvirt provider) that builds the topology as real "
         "VMs", cmd_vagrantfile, (
             TOPOLOGY,
             arg("out", metavar="FILE", help="where to write the Vagrantfile ('-': stdout)"),
             LAB_NAME,
             arg("--box", default=None, help="Vagrant box (default debian/bookworm64; the "
                 "RAVEN_BOX environment variable overrides it at `vagrant up`)"),
             arg("--project", help="source tree the machines install (default: this checkout)"),
         )),
    Verb("down", "remove a lab: namespaces, links, processes, files", cmd_down, (
        arg("name", nargs="?", help="lab name"),
        arg("--all", action="store_true", help="remove every lab, also half-built ones"),
    )),
)

INSPECT_VERBS = (
    Verb("status", "show a lab", cmd_status, (arg("name"), JSON), printing=True),
    Verb("list", "list labs", cmd_list, (JSON,), printing=True),
    Verb("logs", "print the logs of the processes of a target", cmd_logs, (
        arg("name"), TARGET, arg("--process", help="only this supervised process"),
    ), printing=True),
    Verb("exec", "run a command in a node (netns + mount ns) or pod", cmd_exec, (
        arg("name"), TARGET,
        arg("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]"),
    )),
    Verb("ping", "ping every pod from every other pod, in parallel", cmd_ping, (
        arg("name"),
        arg("--scope", choices=("all", "pool"), default="all",
            help="all pairs (default) or only pairs inside the same pool"),
        JSON,
    ), printing=True),
    Verb("demo", "build the default lab with the overlay, show it, ping, tear it down",
         cmd_demo, (
             arg("--topology", help="topology file or bundled name (default: three-pools)"),
             arg("--name", help="lab name (default: the topology's name)"),
             arg("--keep", action="store_true", help="keep the lab running afterwards"),
             arg("--network-only", action="store_true",
                 help="the bare lab demo (no overlay: only in-pool pairs answer)"),
         )),
    Verb("kubeconfig", "print the path of a lab's admin kubeconfig", cmd_kubeconfig,
         (arg("name"),)),
)

FAULT_VERBS = (
    Verb("agent-restart", "restart a node's agent (SIGTERM, start again) and wait until the new "
         "one applied its plan", cmd_agent_restart, (
             arg("name"), NODE,
             arg("--timeout", type=float, default=None,
                 help="seconds the new agent may take to become ready (default 30; 600 on a "
                 "node of kind vm)"),
         )),
    Verb("node-down", "power a node off: kill its processes, cut its port", cmd_node_down,
         (arg("name"), NODE)),
    Verb("node-up", "power a node on again and start its agent", cmd_node_up, (
        arg("name"), NODE,
        arg("--reboot", action="store_true",
            help="wipe the node's links, routes, rules and nftables first (power cycle)"),
    )),
    Verb("disconnect", "cut a pool off the control plane (pod traffic flows)", cmd_disconnect,
         (arg("name"), POOL)),
    Verb("reconnect", "undo disconnect", cmd_reconnect, (arg("name"), POOL)),
    Verb("gateway-fail", "power off the pool's active gateway node", cmd_gateway_fail,
         (arg("name"), POOL,
          arg("--index", type=int, default=0,
              help="which active gateway of an active-active pool (Replicas >= 2), in the "
                   "order of its Gateway's status.activeEndpoints (default 0, the first)"))),
    Verb("nat-rebind", "the pool's NAT forgets its mappings: conntrack flushed, the next "
         "packets get new public ports", cmd_nat_rebind, (arg("name"), POOL)),
    # Data-path faults on a node's uplink: the node stays up and its agent heartbeats.
    Verb("blackhole", "drop a node's overlay traffic (VXLAN and WireGuard UDP) on its uplink; it "
         "stays up and heartbeats", cmd_uplink_fault, (arg("name"), NODE),
         defaults={"verb": "blackhole"}),
    Verb("unblackhole", "undo blackhole", cmd_uplink_fault, (arg("name"), NODE),
         defaults={"verb": "unblackhole"}),
    Verb("loss", "random loss on a node's uplink, both directions", cmd_uplink_fault, (
        arg("name"), NODE,
        arg("percent", type=float, help="percent of packets dropped (0 removes the loss)"),
    ), defaults={"verb": "loss"}),
    Verb("delay", "one-way delay on a node's uplink, each direction (a userspace stage on the "
         "pool router; no netem here)", cmd_delay, (
             arg("name"), NODE,
             arg("ms", type=float, help="milliseconds added each way (0 removes the delay)"),
         )),
    Verb("control-plane-stop", "stop the API server and the controller", cmd_cp_stop,
         (arg("name"),)),
    Verb("control-plane-start", "start the API server and the controller", cmd_cp_start,
         (arg("name"),)),
)

CLUSTER_VERBS = (
    Verb("gateways", "show Gateways: members and elected active endpoints", cmd_gateways, (
        arg("name"), arg("--json", action="store_true", help="print the Gateway objects as JSON"),
    ), printing=True),
)

VERBS = BUILD_VERBS + INSPECT_VERBS + FAULT_VERBS + CLUSTER_VERBS
