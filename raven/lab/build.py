"""`lab up`: turn a LabPlan into namespaces, links, addresses, routes, NAT and host holders.

Rules kept:
- state.json (with the full plan) is written before the first namespace is created, so a crash
  or SIGKILL at any later point still leaves `raven lab down` everything it needs.
- On any failure `up` removes what it made (teardown.down) before reporting the error.
- Phases run in order; inside a phase the namespaces are configured in parallel, each with one
  `ip -n NS -batch -`:
    1 namespaces (+ start the host holders)   2 pool routers (bridge, WAN link, node ports, NAT)
    3 internet, nodes, control plane (addresses, routes, pod veths)   4 pods (+ holders ready)
    5 readiness probe: every pool router pings its nodes (and the control plane).
- NAT: `none` routes public addresses; `cone` masquerades (port-preserving, endpoint-independent
  mapping); `symmetric` masquerades `fully-random` (a new public port per destination).
  NAT routers also drop unsolicited new connections from the WAN.
- IPv6 is never translated (no NAT66): an IPv6 LAN is routed by the internet and a NAT'd pool's
  router is a stateful IPv6 firewall (RFC 6092: unsolicited inbound dropped), which keeps the
  pool just as undialable as its IPv4 NAT does, as IPv6 edge sites are in practice.
- IPv6 addresses are added `nodad` (no Duplicate Address Detection wait: the plan guarantees
  they are unique), so they work the moment they exist.
- The lab never creates anything in the root network namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raven.errors import CommandError
from raven.lab import netns as nsutil
from raven.lab import runtime, teardown
from raven.lab.plan import (
    INTERNET_PROBES,
    INTERNET_PROBES6,
    PREFIX6,
    LabPlan,
    NodePlan,
    PodPlan,
    PoolPlan,
    plan_lab,
    plan_to_json,
)
from raven.lab.topology import Topology, lab_name_problem, load_topology

Progress = Callable[[str], None]
ROUTER_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
NO_DAD_SYSCTLS = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
PARALLEL = 8


def _quiet(_: str) -> None:
    pass


def up_file(path: str | Path, name: str | None = None, progress: Progress = _quiet) -> LabPlan:
    """Validate `path` and build it as lab `name` (default: the file's `name`)."""
    topology = load_topology(path)
    return up(topology, name or default_lab_name(topology, path), progress, source=str(path))


def default_lab_name(topology: Topology, path: str | Path) -> str | None:
    """The file's `name` field, else the file name without .yaml when that is a valid name."""
    if topology.name:
        return topology.name
    stem = Path(path).stem
    return stem if lab_name_problem(stem) is None else None


class LabExists(CommandError):
    """The lab name is taken: `up` made nothing and must not remove the existing lab."""


def up(topology: Topology, name: str | None = None, progress: Progress = _quiet,
       source: str = "") -> LabPlan:
    lab = name or (default_lab_name(topology, source) if source else topology.name)
    if lab is None:
        raise CommandError("the topology has no 'name' (and its file name is not a valid lab "
                           "name); give one with --name NAME")
    why = lab_name_problem(lab)
    if why:
        raise CommandError(why)
    if runtime.run_dir(lab).exists() or any(n.startswith(lab + ".") for n in nsutil.list_netns()):
        raise LabExists(f"lab {lab!r} already exists; remove it with `raven lab down {lab}` "
                        "or choose another --name")
    plan = plan_lab(topology, lab, source=source)
    started = time.monotonic()
    try:
        runtime.run_dir(lab).mkdir(parents=True)
    except FileExistsError:
        raise LabExists(f"lab {lab!r} already exists (being created right now?)") from None
    try:
        runtime.write_json_atomic(runtime.run_dir(lab) / "state.json",
                                  {"phase": "building", "plan": plan_to_json(plan)})
        _build(plan, progress)
        runtime.write_json_atomic(runtime.run_dir(lab) / "state.json",
                                  {"phase": "ready", "plan": plan_to_json(plan),
                                   "buildSeconds": round(time.monotonic() - started, 3)})
        progress(f"lab {lab} ready in {time.monotonic() - started:.2f}s")
    except BaseException as exc:
        with contextlib.suppress(Exception):  # a closed pipe must not skip the teardown
            progress(f"failed: {exc}; removing what was made")
        teardown.down(lab)
        if isinstance(exc, CommandError):
            raise
        if isinstance(exc, Exception):
            raise CommandError(f"lab {lab!r}: build failed: {exc}") from exc
        raise
    return plan


def _uses_ipv6(plan: LabPlan) -> bool:
    return plan.has_v6_underlay or any(
        ":" in address for _, _, pod in plan.pods() for address in pod.addresses())


def _build(plan: LabPlan, progress: Progress) -> None:
    names = plan.netns_names()
    n_nodes = len(plan.nodes())
    progress(f"creating {len(names)} namespaces ({len(plan.pools)} pools, {n_nodes} nodes, "
             f"{len(plan.pods())} pods)")
    nsutil.ip_batch(f"netns add {n}" for n in names)
    if _uses_ipv6(plan):
        # No Duplicate Address Detection in the lab: the plan's addresses are unique, and the
        # kernel's own link-local addresses would stay tentative for about a second after each
        # link comes up, so the first IPv6 packets between pods routed via them were lost. Set
        # before any link exists: links created in or moved into a namespace take its defaults.
        _parallel(lambda n: nsutil.sysctl(n, *NO_DAD_SYSCTLS), names)
    # Holders only need their namespace: start them now, they settle while links are built.
    holders = {t: runtime.start_holder(plan.name, t, plan.targets()[t]) for t in plan.hosts()}

    progress("pool routers: bridges, WAN links, node ports, NAT")
    links: list[Callable[[], None]] = [
        lambda pool=pool: nsutil.ip_batch(_router_lines(plan, pool), pool.netns)
        for pool in plan.pools
    ]
    links += [lambda pool=pool: _router_netfilter(plan, pool) for pool in plan.pools]
    links.append(lambda: _internet_sysctls(plan))
    cp = plan.control_plane
    if cp.pool is None:  # no public pool: the control plane hangs off the internet router
        links.append(lambda: nsutil.ip_batch(
            [f"link add cp type veth peer name eth0 netns {cp.netns}"], plan.internet_netns))
    _parallel(lambda job: job(), links)

    progress("internet, nodes, control plane")
    jobs: list[Callable[[], None]] = [
        lambda: nsutil.ip_batch(_internet_lines(plan), plan.internet_netns),
        lambda: nsutil.ip_batch(_control_plane_lines(plan), plan.control_plane.netns),
    ]
    for pool in plan.pools:
        for node in pool.nodes:
            jobs.append(lambda pool=pool, node=node: nsutil.ip_batch(
                _node_lines(plan, pool, node), node.netns))
    _parallel(lambda job: job(), jobs)

    progress("pods")
    _parallel(lambda item: nsutil.ip_batch(_pod_lines(plan, item[1], item[2]), item[2].netns),
              plan.pods())
    for target, proc in holders.items():
        runtime.wait_holder(plan.name, target, proc)

    progress("checking the underlay answers")
    _probe_pools(plan)


def _parallel(fn: Callable, items: list | tuple) -> None:
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    try:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()
    finally:
        # On a failure or a signal, jobs not yet started are dropped, so teardown does not race
        # with namespaces still being configured.
        pool.shutdown(wait=True, cancel_futures=True)


def _marker(plan: LabPlan) -> str:
    return f"link set lo up alias {nsutil.LAB_MARKER}{plan.name}"


def _v4(address: str) -> bool:
    return bool(address) and ":" not in address


def _host(address: str) -> str:
    """`address/32` or `address/128`."""
    return f"{address}/{128 if ':' in address else 32}"


def _default(via: str, dev: str) -> str:
    return f"route add {'::/0' if ':' in via else 'default'} via {via} dev {dev}"


def _router_lines(plan: LabPlan, pool: PoolPlan) -> list[str]:
    mtu = pool.mtu
    lines = [
        _marker(plan),
        f"link add br0 mtu {mtu} type bridge",
        f"link add wan mtu {mtu} type veth peer name {pool.internet_port} mtu {mtu} "
        f"netns {plan.internet_netns}",
    ]
    if pool.has_v4:
        lines += [f"address add {pool.router_lan_ip}/24 dev br0",
                  f"address add {pool.wan_ip}/30 dev wan"]
    if pool.has_v6:
        lines += [f"address add {pool.router_lan_ip6}/{PREFIX6} dev br0 nodad",
                  f"address add {pool.wan_ip6}/{PREFIX6} dev wan nodad"]
    lines += ["link set wan up", "link set br0 up"]
    if pool.has_v4:
        lines.append(_default(pool.internet_wan_ip, "wan"))
    if pool.has_v6:
        lines.append(_default(pool.internet_wan_ip6, "wan"))
    for node in pool.nodes:
        lines += [
            f"link add {node.router_port} mtu {mtu} type veth peer name eth0 mtu {mtu} "
            f"netns {node.netns}",
            f"link set {node.router_port} master br0 up",
        ]
    if plan.control_plane.pool == pool.name:
        lines += [
            f"link add cp mtu {mtu} type veth peer name eth0 mtu {mtu} "
            f"netns {plan.control_plane.netns}",
            "link set cp master br0 up",
        ]
    return lines


def _internet_lines(plan: LabPlan) -> list[str]:
    lines = [_marker(plan)]
    lines += [f"address add {probe}/32 dev lo" for probe in INTERNET_PROBES]
    if plan.has_v6_underlay:
        lines += [f"address add {probe}/128 dev lo" for probe in INTERNET_PROBES6]
    for pool in plan.pools:
        if pool.has_v4:
            lines.append(f"address add {pool.internet_wan_ip}/30 dev {pool.internet_port}")
        if pool.has_v6:
            lines.append(f"address add {pool.internet_wan_ip6}/{PREFIX6} dev "
                         f"{pool.internet_port} nodad")
        lines.append(f"link set {pool.internet_port} up")
        if pool.public and pool.has_v4:  # NAT'd LANs are private: the internet has no route
            lines.append(f"route add {pool.lan} via {pool.wan_ip} dev {pool.internet_port}")
        if pool.has_v6:  # IPv6 is never translated: every IPv6 LAN is routed (see the docstring)
            lines.append(f"route add {pool.lan6} via {pool.wan_ip6} dev {pool.internet_port}")
    cp = plan.control_plane
    if cp.pool is None:
        if _v4(cp.gateway):
            lines.append(f"address add {cp.gateway}/30 dev cp")
        if cp.gateway6:
            lines.append(f"address add {cp.gateway6}/{PREFIX6} dev cp nodad")
        lines.append("link set cp up")
    return lines


def _control_plane_lines(plan: LabPlan) -> list[str]:
    cp = plan.control_plane
    lines = [_marker(plan)]
    if _v4(cp.ip):
        lines.append(f"address add {cp.ip}/{cp.prefixlen} dev eth0")
    if cp.ip6:
        lines.append(f"address add {cp.ip6}/{PREFIX6} dev eth0 nodad")
    lines.append("link set eth0 up")
    if _v4(cp.ip):
        lines.append(_default(cp.gateway, "eth0"))
    if cp.ip6:
        lines.append(_default(cp.gateway6, "eth0"))
    return lines


def link_local(node: NodePlan) -> str:
    """A fixed link-local address of a node's eth0, the next hop of IPv6 pod routes in a pool
    without an IPv6 underlay (Linux routes IPv4 via IPv6 next hops, not the other way round):
    fe80:: + the node's 32-bit IPv4 address, unique on the pool's segment."""
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("fe80::"))
                                     | int(ipaddress.IPv4Address(node.underlay_ip))))


def _needs_link_local(pool: PoolPlan) -> bool:
    return not pool.has_v6 and any(":" in c for n in pool.nodes for c in n.cidrs())


def _next_hop(pool: PoolPlan, node: NodePlan, cidr: str) -> str:
    """`via ...` towards `node` for a pod network: same family when the underlay has it."""
    if ":" in cidr:
        return f"via {node.underlay_ip6}" if pool.has_v6 else f"via {link_local(node)}"
    return f"via {node.underlay_ip}" if pool.has_v4 else f"via inet6 {node.underlay_ip6}"


def node_wiring(pool: PoolPlan, node: NodePlan) -> list[str]:
    """The lab's own addresses and routes of a node once its links exist (`ip -batch` lines):
    underlay addresses, default routes, the CNI stand-in's routes to the other nodes' pod
    networks and to its own pods. raven.lab.faults replays it after a simulated reboot."""
    lines = []
    if pool.has_v4:
        lines.append(f"address add {node.underlay_ip}/24 dev eth0")
    if pool.has_v6:
        lines.append(f"address add {node.underlay_ip6}/{PREFIX6} dev eth0 nodad")
    if _needs_link_local(pool):
        lines.append(f"address add {link_local(node)}/64 dev eth0 nodad")
    if pool.has_v4:
        lines.append(_default(pool.router_lan_ip, "eth0"))
    if pool.has_v6:
        lines.append(_default(pool.router_lan_ip6, "eth0"))
    for other in pool.nodes:
        if other.name != node.name:
            lines += [f"route add {cidr} {_next_hop(pool, other, cidr)} dev eth0"
                      for cidr in other.cidrs()]
    for pod in node.pods:
        lines += [f"route add {_host(ip)} dev {pod.node_ifname}" for ip in pod.addresses()]
    return lines


def _node_lines(plan: LabPlan, pool: PoolPlan, node: NodePlan) -> list[str]:
    lines = [_marker(plan)]
    for pod in node.pods:
        lines.append(f"link add {pod.node_ifname} type veth peer name eth0 netns {pod.netns}")
        lines += [f"address add {_host(gw)} dev {pod.node_ifname}" + (" nodad" if ":" in gw
                                                                       else "")
                  for gw in node.gateways()]
        lines.append(f"link set {pod.node_ifname} up")
    wiring = node_wiring(pool, node)
    addresses = [line for line in wiring if line.startswith("address ")]
    return [*lines, *addresses, "link set eth0 up",
            *(line for line in wiring if not line.startswith("address "))]


def _pod_lines(plan: LabPlan, node: NodePlan, pod: PodPlan) -> list[str]:
    pairs = list(zip(pod.addresses(), node.gateways(), strict=True))
    lines = [_marker(plan)]
    lines += [f"address add {_host(ip)} dev eth0" + (" nodad" if ":" in ip else "")
              for ip, _ in pairs]
    lines.append("link set eth0 up")
    for _, gateway in pairs:
        lines += [f"route add {_host(gateway)} dev eth0 scope link", _default(gateway, "eth0")]
    return lines


def nat_ruleset(pool: PoolPlan) -> str:
    """nftables ruleset of a pool router (empty for a public pool)."""
    if pool.public:
        return ""
    flags = " fully-random" if pool.nat == "symmetric" else ""
    return f"""
table ip raven_lab_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip saddr {pool.lan} masquerade{flags}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
}}
"""


def firewall6_ruleset(pool: PoolPlan) -> str:
    """IPv6 of a NAT'd pool with an IPv6 underlay: no translation, a stateful firewall (replies
    and their ICMPv6 errors, e.g. Packet Too Big, come in; new connections do not). Empty for a
    public pool or one without IPv6."""
    if pool.public or not pool.has_v6:
        return ""
    return """
table ip6 raven_lab_fw6 {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
}
"""


def _router_netfilter(plan: LabPlan, pool: PoolPlan) -> None:
    nsutil.sysctl(pool.netns, *ROUTER_SYSCTLS)
    ruleset = nat_ruleset(pool) if pool.has_v4 else ""
    ruleset += firewall6_ruleset(pool)
    if ruleset:
        nsutil.nft_apply(pool.netns, ruleset)


def _internet_sysctls(plan: LabPlan) -> None:
    nsutil.sysctl(plan.internet_netns, *ROUTER_SYSCTLS)


def _probe_pools(plan: LabPlan) -> None:
    """Echo every node of every pool (and the control plane) from its pool router: readiness."""
    probes: dict[str, list[str]] = {}
    for pool in plan.pools:
        probes[pool.netns] = [a for n in pool.nodes for a in n.underlay_ips()]
        if plan.control_plane.pool == pool.name:
            cp = plan.control_plane
            probes[pool.netns] += list(dict.fromkeys(a for a in (cp.ip, cp.ip6) if a))
    replies = nsutil.icmp_probe_many(probes, tries=2, timeout_s=2)
    for pool in plan.pools:
        silent = [a for a, rtt in replies[pool.netns].items() if rtt is None]
        if silent:
            raise CommandError(f"lab {plan.name!r}: pool {pool.name!r}: underlay addresses do "
                               f"not answer: {' '.join(silent)}")
