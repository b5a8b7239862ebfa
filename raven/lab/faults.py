"""Fault injection on a running overlay lab: restarts, power cuts, reboots, lost control plane.

Verbs (each also a `raven lab` subcommand):
- agent_restart: SIGTERM the node's agent (the data plane stays, by design), start a new one and
  wait until it applied its plan (or report why it did not);
- node_down: power cut. Every process of the node (agent, wireguard-go) is SIGKILLed, its port
  on the pool bridge goes down and the kubelet stand-in stops posting its status (NotReady
  after the grace). The kernel state of the node stays, as RAM would if it came straight back;
- on a node of kind vm (raven.lab.vm) node_down kills qemu (a power cut) and node_up boots a
  fresh guest, with or without reboot=True; its state directory is kept;
- node_up: port up, a fresh agent with the same state directory. With reboot=True the node's
  kernel state is wiped first, as after a power cycle: every link but lo, eth0 and the pod
  veths, every route, rule, neighbour and nftables table, /run/wireguard and /run/raven; then
  the lab's own wiring (underlay address, routes, pod routes) is put back;
- disconnect / reconnect: the pool loses the control plane only: an nftables table on the pool
  router drops traffic to and from the control-plane address (inet family for routed traffic,
  bridge family when the control plane sits on the pool's own bridge); pod traffic is untouched;
- gateway_fail: node_down of the pool's active gateway (read from the Gateway status);
- control_plane_stop / control_plane_start: stop or start the API server and the controller;
- blackhole / unblackhole: the node stays up and its agent heartbeats, but its overlay traffic
  (VXLAN UDP and WireGuard UDP, both directions) is dropped on its port of the pool bridge:
  "Ready but not forwarding";
- loss: random loss (`numgen random`, no netem here) of every packet through the node's port of
  the pool bridge, both directions; 0 removes it;
- delay: a real one-way delay of MS in each direction on the node's uplink, so every round trip
  through it takes 2 x MS longer; 0 removes it. This kernel has no netem, no nft `queue` and no
  tc classifiers, so the delay is a userspace stage (raven.lab.delayline) on the pool router:
  the node's port leaves the bridge, the stage holds every frame between it and a new veth pair
  (`<port>-dl` / `<port>-db`) whose bridge end takes the port's place. The detached port answers
  no ARP and carries no IPv6, so nothing bypasses the stage. blackhole and loss match either
  port, so faults combine. Setting or removing it converges from any partial state (an
  interrupted verb is repaired by running it again); `lab down` removes it with the router.
Rules kept:
- faults touch only the lab's namespaces and files; processes are found by netns inode and
  supervisor records, never by name;
- markers under <run dir>/faults/ record what is broken, so the kubelet stand-in and `status`
  see the same truth, and verbs are idempotent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time

from raven import constants
from raven.errors import CommandError
from raven.lab import build, cluster, guard, kubelets, runtime, vm
from raven.lab import netns as nsutil
from raven.lab.kubelet import disconnected_marker, down_marker
from raven.lab.plan import LabPlan, NodePlan, PoolPlan
from raven.lab.topology import CONTROL_PLANE, ROUTER_PREFIX

FAULT_TABLE = "raven_lab_fault"


def _node(plan: LabPlan, name: str) -> tuple[PoolPlan, NodePlan]:
    for pool, node in plan.nodes():
        if node.name == name:
            return pool, node
    raise CommandError(f"lab {plan.name!r} has no node {name!r}; nodes: "
                       f"{', '.join(n.name for _, n in plan.nodes())}")


def _touch(path: os.PathLike) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "a").close()


def _took_effect(lab: str, what: str) -> None:
    """Stamp the wall time at which a fault took effect (the port went down, the rule set was
    loaded), right after the kernel call: the verb's own start-up and its clean-up after that
    instant (killing processes, loading the plan) must not count as failover time. Read back
    by `last_effect`; the CLI prints it."""
    path = runtime.run_dir(lab) / "faults" / "effects"
    os.makedirs(path.parent, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.time():.3f} {what}\n")


def last_effect(lab: str) -> float | None:
    """The wall time the latest fault took effect (`_took_effect`), None when none did."""
    try:
        lines = (runtime.run_dir(lab) / "faults" / "effects").read_text().splitlines()
    except FileNotFoundError:
        return None
    return float(lines[-1].split()[0]) if lines else None


# --- agents ---------------------------------------------------------------------------------

def agent_restart(lab: str, node: str, ready_timeout: float | None = None) -> float:
    """Stop the node's agent with SIGTERM and start a new one, then wait until the new agent
    applied its plan. Returns the seconds the node was without an agent; CommandError with the
    agent's log when the new one exits or does not become ready."""
    plan = runtime.load_plan(lab)
    _, plan_node = _node(plan, node)
    if ready_timeout is None:  # a fresh agent in a VM guest imports for a long time under TCG
        ready_timeout = vm.AGENT_READY_TIMEOUT if plan_node.is_vm else 30.0
    cluster.require_overlay(lab)
    if down_marker(lab, node).exists():
        raise CommandError(f"lab {lab!r}: node {node!r} is down; `raven lab node-up {lab} {node}`")
    started = time.monotonic()
    cluster.stop_agent(lab, node)
    before = cluster.agent_status_stamp(lab, node)
    cluster.start_agent(lab, node)
    away = time.monotonic() - started
    cluster.wait_agent_ready(lab, node, before, timeout=ready_timeout)
    return away


# --- power ----------------------------------------------------------------------------------

def _kill_node_processes(lab: str, node: NodePlan) -> int:
    """SIGKILL every process in the node's netns except its mount-namespace holder."""
    inode = nsutil.netns_inode(node.netns)
    if inode is None:
        return 0
    holder = runtime.process_pid(lab, node.name, runtime.HOLDER)
    pids = [p for p in nsutil.pids_in({inode}) if p != holder] + _strays(lab, holder)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        for _ in range(200):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if runtime.proc_start_time(pid) is None:
                break
            time.sleep(0.01)
    runtime.stop_process(lab, node.name, cluster.AGENT, timeout=0.5)  # drop the stale record
    return len(pids)


def _strays(lab: str, holder: int | None) -> list[int]:
    """Processes of the node's mount namespace in a network namespace the lab does not name:
    its agent's tunnel namespace (docs/tunnel-namespace.md), where a probe responder runs."""
    mount = nsutil.ns_inode(holder, "mnt") if holder is not None else None
    if mount is None:
        return []
    known = {i for i in map(nsutil.netns_inode, runtime.load_plan(lab).netns_names())
             if i is not None}
    return [p for p in nsutil.pids_in({mount}, "mnt")
            if p != holder and nsutil.ns_inode(p) not in known]


def _port(pool: PoolPlan, node: NodePlan, state: str) -> None:
    nsutil.ip_batch([f"link set {node.router_port} {state}"], pool.netns)


def node_down(lab: str, node: str) -> None:
    plan = runtime.load_plan(lab)
    pool, n = _node(plan, node)
    _touch(down_marker(lab, node))
    _port(pool, n, "down")
    _took_effect(lab, f"node-down {node}")
    _kill_node_processes(lab, n)


def node_up(lab: str, node: str, reboot: bool = False) -> None:
    plan = runtime.load_plan(lab)
    pool, n = _node(plan, node)
    if n.is_vm:
        # A VM node is powered off by killing its qemu: it comes back by booting (a fresh
        # kernel, its state directory kept), also when asked to reboot while it runs.
        if reboot:
            _kill_node_processes(lab, n)
        _port(pool, n, "up")
        if not runtime.process_running(lab, node, vm.VM):
            vm.boot(lab, node)
    else:
        if reboot:
            _kill_node_processes(lab, n)
            wipe_node(plan, pool, n)
        _port(pool, n, "up")
    down_marker(lab, node).unlink(missing_ok=True)
    if cluster.has_overlay(lab) and not runtime.process_running(lab, node, cluster.AGENT):
        cluster.start_agent(lab, node)
    kubelets.ensure_running(lab, node)


def _lab_wiring(pool: PoolPlan, node: NodePlan) -> list[str]:
    """The lab's own configuration of a node (what raven.lab.build gives it), both families."""
    return build.node_wiring(pool, node)


def wipe_node(plan: LabPlan, pool: PoolPlan, node: NodePlan) -> None:
    """Power-cycle the node's kernel state, keeping only the lab's underlay and pod wiring."""
    # The agent's tunnel namespace (docs/tunnel-namespace.md), named inside the node's mount
    # namespace only, goes with a reboot, and the devices moved into it with it.
    nsutil.delete_netns_inside(runtime.node_exec_argv(plan.name, node.name),
                               cluster.tunnel_netns(plan.name, node.name))
    keep = {"lo", "eth0", *(p.node_ifname for p in node.pods)}
    lines = [f"link del {link['ifname']}" for link in nsutil.ip_json(node.netns, "link", "show")
             if link.get("ifname") not in keep]
    tables = {str(r.get("table", "main")) for r in nsutil.ip_json(node.netns, "route", "show",
                                                            "table", "all")}
    lines += [f"route flush table {t}" for t in sorted(tables - {"local"})]
    lines += ["route flush table main", "address flush dev eth0", "neigh flush all",
              "rule flush", "rule add priority 32766 table main",
              "rule add priority 32767 table default"]
    # `route flush` and `rule flush` act on IPv4 only unless told: the IPv6 half, then the wiring.
    tables6 = {str(r.get("table", "main")) for r in nsutil.ip_json(
        node.netns, "-6", "route", "show", "table", "all")}
    nsutil.ip_batch([*(f"route flush table {t}" for t in sorted(tables6 - {"local"})),
                     "rule flush", "rule add priority 32766 table main"],
                    node.netns, force=True, ipv6=True)
    lines += _lab_wiring(pool, node)
    nsutil.ip_batch(lines, node.netns, force=True)
    nsutil.nft_flush(node.netns)
    nsutil.sysctl(node.netns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for sub in ("wireguard", "raven"):  # tmpfs after a reboot
        folder = runtime.host_dir(plan.name, node.name) / sub
        for entry in folder.iterdir() if folder.is_dir() else ():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    missing = [line for line in _lab_wiring(pool, node) if line.startswith("route add default")]
    if missing and not nsutil.ip_json(node.netns, "route", "show", "default"):
        raise CommandError(f"lab {plan.name!r}: node {node.name!r}: underlay not restored "
                           "after the reboot")


# --- control plane reachability -------------------------------------------------------------

def _disconnect_ruleset(cp_ip: str, cp_ip6: str = "") -> str:
    drops = "".join(f"""
    {"ip6" if ":" in a else "ip"} daddr {a} drop
    {"ip6" if ":" in a else "ip"} saddr {a} drop"""
                    for a in dict.fromkeys(x for x in (cp_ip, cp_ip6) if x))
    chain = f"""
  chain forward {{
    type filter hook forward priority -10; policy accept;{drops}
  }}"""
    return "".join(f"table {family} {FAULT_TABLE} {{{chain}\n}}\n" for family in ("inet", "bridge"))


def disconnect(lab: str, pool_name: str) -> None:
    plan = runtime.load_plan(lab)
    pool = cluster.pool_of(plan, pool_name)
    reconnect_rules(pool)
    nsutil.nft_apply(pool.netns, _disconnect_ruleset(plan.control_plane.ip,
                                                     plan.control_plane.ip6))
    _took_effect(lab, f"disconnect {pool.name}")
    _touch(disconnected_marker(lab, pool.name))


def reconnect_rules(pool: PoolPlan) -> None:
    for family in ("inet", "bridge"):
        nsutil.nft_delete_table(pool.netns, family, FAULT_TABLE)


def reconnect(lab: str, pool_name: str) -> None:
    plan = runtime.load_plan(lab)
    pool = cluster.pool_of(plan, pool_name)
    reconnect_rules(pool)
    disconnected_marker(lab, pool.name).unlink(missing_ok=True)


def gateway_fail(lab: str, pool_name: str, index: int = 0) -> str:
    """Power off the pool's active gateway node (the `index`-th of its active endpoints, for
    active-active pools); returns its name."""
    plan = runtime.load_plan(lab)
    pool = cluster.pool_of(plan, pool_name)
    active = cluster.active_gateways(lab).get(pool.gateway, [])
    if not active:
        raise CommandError(f"lab {lab!r}: pool {pool.name!r} has no active gateway to fail")
    if not 0 <= index < len(active):
        raise CommandError(f"lab {lab!r}: pool {pool.name!r} has {len(active)} active "
                           f"gateway(s) ({', '.join(active)}); --index must be 0 to "
                           f"{len(active) - 1}")
    node_down(lab, active[index])
    return active[index]


def control_plane_stop(lab: str) -> None:
    cluster.require_overlay(lab)
    runtime.stop_process(lab, CONTROL_PLANE, cluster.CONTROLLER)
    runtime.stop_process(lab, CONTROL_PLANE, cluster.APISERVER)


def control_plane_start(lab: str, settle: float = 3.0) -> None:
    """API server first; the controller `settle` seconds later, once agents renewed their
    heartbeats, so its first election sees the candidates alive rather than stale."""
    cluster.require_overlay(lab)
    if not runtime.process_running(lab, CONTROL_PLANE, cluster.APISERVER):
        cluster.start_apiserver(lab)
    if not runtime.process_running(lab, CONTROL_PLANE, cluster.CONTROLLER):
        time.sleep(settle)
        cluster.start_controller(lab)


# --- data path faults on a node's uplink (its port of the pool bridge) ---------------------

def _uplink_table(kind: str, node: NodePlan) -> str:
    # One table per (fault, node), so faults on several nodes come and go independently.
    return f"{FAULT_TABLE}_{kind}_{node.router_port}"


def _uplink_ruleset(table: str, port: str, from_node: list[str], to_node: list[str]) -> str:
    """Bridge-family chains on the pool router that drop what `from_node` matches as it enters
    from the node's port (to another port, or to the router) and what `to_node` matches as it
    leaves through that port. The port is the node's own, or its delay stage's bridge end
    while `delay` is on (both are named, so the faults combine in any order)."""
    ports = f'{{ "{port}", "{_delay_ports(port)[1]}" }}'
    rules = {"forward": [f"iifname {ports} {m} drop" for m in from_node]
             + [f"oifname {ports} {m} drop" for m in to_node],
             "input": [f"iifname {ports} {m} drop" for m in from_node],
             "output": [f"oifname {ports} {m} drop" for m in to_node]}
    chains = "".join(
        f"  chain {hook} {{\n    type filter hook {hook} priority -10; policy accept;\n"
        + "".join(f"    {r}\n" for r in body) + "  }\n"
        for hook, body in rules.items())
    return f"table bridge {table} {{\n{chains}}}\n"


def _set_uplink_fault(lab: str, node: str, kind: str,
                      rules: tuple[list[str], list[str]] | None) -> None:
    plan = runtime.load_plan(lab)
    pool, n = _node(plan, node)
    table = _uplink_table(kind, n)
    nsutil.nft_delete_table(pool.netns, "bridge", table)
    marker = runtime.run_dir(lab) / "faults" / kind / node
    if rules is None:
        marker.unlink(missing_ok=True)
        return
    nsutil.nft_apply(pool.netns, _uplink_ruleset(table, n.router_port, *rules))
    _took_effect(lab, f"{kind} {node}")
    _touch(marker)


def blackhole(lab: str, node: str, vxlan_port: int = constants.VXLAN_PORT,
              wireguard_port: int = constants.WIREGUARD_PORT) -> None:
    """Drop the node's overlay traffic (VXLAN and WireGuard UDP) on its uplink, both ways;
    everything else (its heartbeats to the API server included) still passes."""
    ports = f"{{ {vxlan_port}, {wireguard_port} }}"
    # WireGuard leaves the node from its listen port to any port (a NAT'd peer's mapping).
    _set_uplink_fault(lab, node, "blackhole", (
        [f"udp dport {ports}", f"udp sport {wireguard_port}"], [f"udp dport {ports}"]))


def unblackhole(lab: str, node: str) -> None:
    _set_uplink_fault(lab, node, "blackhole", None)


def loss(lab: str, node: str, percent: float) -> None:
    """Random loss of `percent` % of every packet through the node's uplink, each direction;
    0 removes it."""
    if not 0 <= percent <= 100:
        raise CommandError(f"loss {percent:g}: use a percentage from 0 to 100 (0 removes it)")
    threshold = round(percent * 100)  # numgen draws 0..9999: hundredths of a percent
    # 100 % is every packet (nft refuses `< 10000` for a value that cannot exceed 9999).
    match = "meta length > 0" if threshold >= 10000 else f"numgen random mod 10000 < {threshold}"
    _set_uplink_fault(lab, node, "loss", None if threshold == 0 else ([match], [match]))


# --- delay on a node's uplink (a userspace stage on the pool router: raven.lab.delayline) -----

DELAY_MAX_MS = 10000.0
DELAY_READY_TIMEOUT = 20.0  # the stage imports only the standard library; a loaded machine


def _delay_ports(port: str) -> tuple[str, str]:
    """(the stage's side, the bridge's side) of the veth pair that stands in for `port`."""
    return f"{port}-dl", f"{port}-db"


def _delay_process(node: NodePlan) -> str:
    return f"delay-{node.name}"


def _links(netns: str) -> dict[str, dict]:
    return {str(link.get("ifname")): link for link in nsutil.ip_json(netns, "link", "show")}


def delay(lab: str, node: str, ms: float) -> None:
    """Hold every frame through the node's uplink `ms` milliseconds in each direction (a round
    trip through it takes 2 x ms longer); 0 removes the delay. A new value replaces the stage
    (frames it held are dropped, as a cut would)."""
    if not 0 <= ms <= DELAY_MAX_MS:
        raise CommandError(f"delay {ms:g} ms: use milliseconds from 0 to {DELAY_MAX_MS:g} "
                           "(0 removes it)")
    plan = runtime.load_plan(lab)
    pool, n = _node(plan, node)
    with guard.deferred():  # under `raven lab delay`, a signal waits for a consistent state
        if ms == 0:
            _undelay(plan, pool, n)
        else:
            _delay(plan, pool, n, ms)


def _delay(plan: LabPlan, pool: PoolPlan, node: NodePlan, ms: float) -> None:
    target = ROUTER_PREFIX + pool.name
    line, bridged = _delay_ports(node.router_port)
    runtime.stop_process(plan.name, target, _delay_process(node))
    links = _links(pool.netns)
    if node.router_port not in links:
        raise CommandError(f"lab {plan.name!r}: node {node.name!r} has no port "
                           f"{node.router_port!r} on its pool router; is the lab up?")
    if line not in links or bridged not in links:
        nsutil.ip_batch([f"link del {x}" for x in (line, bridged) if x in links]
                        + [f"link add {line} mtu {pool.mtu} type veth peer name {bridged} "
                           f"mtu {pool.mtu}"], pool.netns)
    # The detached port and the stage's end must not be hosts of the router: no ARP answers
    # (the node would learn the port's MAC and reach the router around the stage), no IPv6.
    nsutil.sysctl(pool.netns, *(f"net.ipv4.conf.{x}.arp_ignore=8"
                                for x in (node.router_port, line)),
                  *(f"net.ipv6.conf.{x}.disable_ipv6=1" for x in (node.router_port, line, bridged)))
    nsutil.ip_batch([f"link set {line} up", f"link set {bridged} up"], pool.netns)
    log = runtime.log_path(plan.name, target, _delay_process(node))
    start = log.stat().st_size if log.exists() else 0
    runtime.start_process(plan.name, target, _delay_process(node),
                          nsutil.delayline_argv(node.router_port, line, ms))
    _wait_ready(plan.name, target, node, log, start)
    lines = []
    if links[node.router_port].get("master") == "br0":
        lines.append(f"link set {node.router_port} nomaster")
    lines.append(f"link set {bridged} master br0")  # (a port that node-down cut stays down)
    nsutil.ip_batch(lines, pool.netns)
    marker = runtime.run_dir(plan.name) / "faults" / "delay" / node.name
    _touch(marker)
    marker.write_text(f"{ms:g}\n")


def _wait_ready(lab: str, target: str, node: NodePlan, log: os.PathLike,
                start: int) -> None:
    """Until the stage printed READY (both sockets bound), so no frame falls between."""
    from raven.lab.delayline import READY

    deadline = time.monotonic() + DELAY_READY_TIMEOUT
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if READY in text:
            return
        if not runtime.process_running(lab, target, _delay_process(node)):
            break
        time.sleep(0.02)
    runtime.stop_process(lab, target, _delay_process(node))
    raise CommandError(f"lab {lab!r}: the delay stage of node {node.name!r} did not start: "
                       f"{text.strip()[-300:] or 'no output'} (log {log}); the uplink is "
                       "unchanged")


def _undelay(plan: LabPlan, pool: PoolPlan, node: NodePlan) -> None:
    """The node's port back on the bridge, the stage and its veth pair gone; from any state."""
    target = ROUTER_PREFIX + pool.name
    line, bridged = _delay_ports(node.router_port)
    links = _links(pool.netns)
    lines = []
    if bridged in links:
        lines.append(f"link set {bridged} nomaster")
    port = links.get(node.router_port)
    if port is not None and port.get("master") != "br0":
        lines.append(f"link set {node.router_port} master br0")
    if lines:
        nsutil.ip_batch(lines, pool.netns)
    runtime.stop_process(plan.name, target, _delay_process(node))
    if line in links or bridged in links:
        nsutil.ip_batch([f"link del {line if line in links else bridged}"], pool.netns)
    if port is not None:  # back to the kernel's defaults, as the lab built the port
        nsutil.sysctl(pool.netns, f"net.ipv4.conf.{node.router_port}.arp_ignore=0",
                      f"net.ipv6.conf.{node.router_port}.disable_ipv6=0")
    (runtime.run_dir(plan.name) / "faults" / "delay" / node.name).unlink(missing_ok=True)


def faults_active(lab: str) -> dict[str, list[str]]:
    """What is broken right now, from the markers."""
    out: dict[str, list[str]] = {}
    for kind in ("down", "disconnected", "blackhole", "loss", "delay"):
        folder = runtime.run_dir(lab) / "faults" / kind
        out[kind] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return out
