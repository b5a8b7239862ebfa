"""Pure address and name plan of a lab: Topology + lab name -> every namespace, link and address.

Rules kept:
- Pure: no processes, files or clock. The builder turns this plan into `ip`/`nft` commands and
  the run directory stores it (state.json), so status, exec, ping and down read the same plan.
- Every namespace is named `<lab>.<target>`; targets are node names, pod names, `internet`,
  `control-plane` and `router-<pool>`. Lab names never contain '.', so the prefix `<lab>.` finds
  every namespace of one lab and no other lab's.
- Interface names are short and generated (max 15 characters): each namespace has its own
  names (eth0 in nodes and pods, br0/wan/n<j>/cp in pool routers, w<i>/cp in the internet).
- Underlay addresses only from documentation and benchmark ranges:
  pool i (1-based) LAN 198.18.i.0/24 (router .1, node j .10+j, control plane .254);
  WAN link of pool i 198.19.0.0 + 4i /30 (internet +1, router +2);
  internet probe hosts 203.0.113.1 and 203.0.113.2; control plane on the internet (only when
  no pool is public) 192.0.2.0/30.
- IPv6 underlays (pool `underlay: ipv6 | dual`) in the documentation prefix 2001:db8::/32, with
  the IPv4 plan's numbers written as the hex digits of an IPv6 group (pool 12 -> group `12`):
  pool i LAN 2001:db8:1:i::/64 (router ::1, node j ::10+j, control plane ::254); WAN link of
  pool i 2001:db8:2:i::/64 (internet ::1, router ::2); internet probe hosts 2001:db8:ff::1 and
  ::2; control plane on the internet 2001:db8:3::/64 (internet ::1, control plane ::2).
- "Primary" fields (`lan`, `underlay_ip`, `wan_ip`, ...; the control plane's `ip`) hold the
  IPv4 address unless the pool's underlay is IPv6 only; the `*6` fields hold the IPv6 one ("" when
  none). A pod's `ip` is the address from its node's first pod network, `ips` all of them.
- The control plane gets an IPv6 address only when some pool's underlay is IPv6 only (every
  other node reaches it over IPv4).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from raven.lab.topology import (
    CONTROL_PLANE,
    INTERNET,
    ROUTER_PREFIX,
    Topology,
    pod_names,
)

LAN_BASE = ipaddress.IPv4Address("198.18.0.0")
WAN_BASE = ipaddress.IPv4Address("198.19.0.0")
NODE_HOST_OFFSET = 10
CONTROL_PLANE_HOST = 254
INTERNET_PROBES = ("203.0.113.1", "203.0.113.2")
CONTROL_PLANE_WAN = ("192.0.2.1", "192.0.2.2")  # (internet side, control plane), /30
INTERNET_PROBES6 = ("2001:db8:ff::1", "2001:db8:ff::2")
CONTROL_PLANE_WAN6 = ("2001:db8:3::1", "2001:db8:3::2")  # (internet side, control plane), /64
PREFIX6 = 64  # every IPv6 underlay segment is a /64


def _v6(prefix: str, index: int, host: int) -> str:
    """Address `host` of the /64 `2001:db8:<prefix>:<index>::`, both numbers written with the
    digits they have in the IPv4 plan (readable side by side: 198.18.1.10 ~ 2001:db8:1:1::10)."""
    return str(ipaddress.IPv6Address(f"2001:db8:{prefix}:{index}::{host}"))


def _v6_net(prefix: str, index: int) -> str:
    return str(ipaddress.IPv6Network(f"2001:db8:{prefix}:{index}::/{PREFIX6}"))


@dataclass(frozen=True)
class PodPlan:
    name: str
    netns: str
    ip: str  # the address from the node's first pod network
    node_ifname: str  # the pod's veth on its node
    ips: tuple[str, ...] = ()  # one address per pod network of the node, `ip` first

    def addresses(self) -> tuple[str, ...]:
        return self.ips or (self.ip,)


@dataclass(frozen=True)
class NodePlan:
    name: str
    netns: str
    underlay_ip: str
    pod_cidr: str
    pod_gateway: str  # first address of podCIDR, on the node side of every pod veth
    gateway_candidate: bool
    router_port: str  # the node's port on the pool bridge
    pods: tuple[PodPlan, ...]
    underlay_ip6: str = ""  # the IPv6 underlay address ("" when the pool has none)
    pod_cidrs: tuple[str, ...] = ()  # every pod network, `pod_cidr` first
    pod_gateways: tuple[str, ...] = ()  # the first address of each of them
    kind: str = "netns"  # "vm": a qemu guest; its pods are namespaces inside it (raven.lab.vm)

    def cidrs(self) -> tuple[str, ...]:
        return self.pod_cidrs or (self.pod_cidr,)

    def gateways(self) -> tuple[str, ...]:
        return self.pod_gateways or (self.pod_gateway,)

    def underlay_ips(self) -> tuple[str, ...]:
        """Every underlay address, the primary (the Node's first InternalIP) first."""
        return tuple(dict.fromkeys(a for a in (self.underlay_ip, self.underlay_ip6) if a))

    @property
    def is_vm(self) -> bool:
        return self.kind == "vm"


@dataclass(frozen=True)
class PoolPlan:
    name: str
    gateway: str
    nat: str
    index: int
    netns: str  # the pool router (holds the pool's bridge)
    lan: str  # e.g. 198.18.1.0/24
    router_lan_ip: str
    wan_ip: str  # the router's public address
    internet_wan_ip: str
    internet_port: str  # the router's link name inside the internet namespace
    mtu: int
    nodes: tuple[NodePlan, ...]
    underlay: str = "ipv4"  # ipv4 | ipv6 | dual
    lan6: str = ""  # IPv6 LAN ("" unless the underlay has IPv6)
    router_lan_ip6: str = ""
    wan_ip6: str = ""
    internet_wan_ip6: str = ""
    tunnel_replicas: int = 1  # the Gateway's tunnelConfig.Replicas

    @property
    def public(self) -> bool:
        return self.nat == "none"

    @property
    def has_v4(self) -> bool:
        return self.underlay != "ipv6"

    @property
    def has_v6(self) -> bool:
        return self.underlay != "ipv4"


@dataclass(frozen=True)
class ControlPlanePlan:
    netns: str
    ip: str
    prefixlen: int
    gateway: str
    pool: str | None  # the public pool whose LAN it sits on; None = attached to the internet
    ip6: str = ""  # its IPv6 address, only when some pool's underlay is IPv6 only
    gateway6: str = ""
    # `ip` is IPv4 when the control plane has an IPv4 address, else IPv6 (== ip6).


@dataclass(frozen=True)
class LabPlan:
    name: str
    tunnel: str
    pools: tuple[PoolPlan, ...]
    internet_netns: str
    control_plane: ControlPlanePlan
    source: str = ""

    def netns_names(self) -> list[str]:
        names = [self.internet_netns, self.control_plane.netns]
        for pool in self.pools:
            names.append(pool.netns)
            for node in pool.nodes:
                names.append(node.netns)
                if not node.is_vm:  # a VM node's pods are namespaces of the guest's kernel
                    names.extend(p.netns for p in node.pods)
        return names

    def targets(self) -> dict[str, str]:
        """target name -> namespace name, for every target of the lab."""
        out = {INTERNET: self.internet_netns, CONTROL_PLANE: self.control_plane.netns}
        for pool in self.pools:
            out[ROUTER_PREFIX + pool.name] = pool.netns
            for node in pool.nodes:
                out[node.name] = node.netns
                out.update({p.name: p.netns for p in node.pods})
        return out

    def nodes(self) -> list[tuple[PoolPlan, NodePlan]]:
        return [(pool, node) for pool in self.pools for node in pool.nodes]

    def pods(self) -> list[tuple[PoolPlan, NodePlan, PodPlan]]:
        return [(pool, node, pod) for pool in self.pools for node in pool.nodes
                for pod in node.pods]

    @property
    def has_v6_underlay(self) -> bool:
        return any(p.has_v6 for p in self.pools)

    def hosts(self) -> list[str]:
        """Targets with a persistent private mount namespace: every node and the control plane."""
        return [node.name for _, node in self.nodes()] + [CONTROL_PLANE]


def netns_name(lab: str, target: str) -> str:
    return f"{lab}.{target}"


def plan_lab(topology: Topology, lab: str, source: str = "") -> LabPlan:
    pools: list[PoolPlan] = []
    for i, spec in enumerate(topology.pools, start=1):
        lan = ipaddress.IPv4Network((int(LAN_BASE) + (i << 8), 24))
        wan = int(WAN_BASE) + 4 * i
        has_v4, has_v6 = spec.underlay != "ipv6", spec.underlay != "ipv4"
        nodes = []
        for j, node in enumerate(spec.nodes):
            cidrs = node.cidrs()
            gateways = [c.network_address + 1 for c in cidrs]
            pods = tuple(
                PodPlan(name=pod, netns=netns_name(lab, pod), ip=str(gateways[0] + 1 + k),
                        node_ifname=f"p{k}", ips=tuple(str(g + 1 + k) for g in gateways))
                for k, pod in enumerate(pod_names(node))
            )
            ip6 = _v6("1", i, NODE_HOST_OFFSET + j) if has_v6 else ""
            nodes.append(NodePlan(
                name=node.name, netns=netns_name(lab, node.name),
                underlay_ip=str(lan.network_address + NODE_HOST_OFFSET + j) if has_v4 else ip6,
                pod_cidr=str(cidrs[0]), pod_gateway=str(gateways[0]),
                gateway_candidate=node.gateway_candidate, router_port=f"n{j}", pods=pods,
                underlay_ip6=ip6, pod_cidrs=tuple(map(str, cidrs)),
                pod_gateways=tuple(map(str, gateways)),
                kind=node.kind,
            ))
        v6 = {"lan6": _v6_net("1", i), "router_lan_ip6": _v6("1", i, 1),
              "wan_ip6": _v6("2", i, 2), "internet_wan_ip6": _v6("2", i, 1)} if has_v6 else {
              "lan6": "", "router_lan_ip6": "", "wan_ip6": "", "internet_wan_ip6": ""}
        pools.append(PoolPlan(
            name=spec.name, gateway=spec.gateway, nat=spec.nat, index=i,
            netns=netns_name(lab, ROUTER_PREFIX + spec.name),
            lan=str(lan) if has_v4 else v6["lan6"],
            router_lan_ip=str(lan.network_address + 1) if has_v4 else v6["router_lan_ip6"],
            wan_ip=str(ipaddress.IPv4Address(wan + 2)) if has_v4 else v6["wan_ip6"],
            internet_wan_ip=(str(ipaddress.IPv4Address(wan + 1)) if has_v4
                             else v6["internet_wan_ip6"]),
            internet_port=f"w{i}", mtu=spec.underlay_mtu, nodes=tuple(nodes),
            underlay=spec.underlay, tunnel_replicas=spec.tunnel_replicas, **v6,
        ))
    return LabPlan(name=lab, tunnel=topology.tunnel, pools=tuple(pools),
                   internet_netns=netns_name(lab, INTERNET),
                   control_plane=_control_plane(lab, pools), source=source)


def _control_plane(lab: str, pools: list[PoolPlan]) -> ControlPlanePlan:
    """On the first public pool's LAN, else hanging off the internet. IPv6 only when a pool's
    underlay is IPv6 only: every other node reaches it over IPv4."""
    needs_v6 = any(p.underlay == "ipv6" for p in pools)
    needs_v4 = any(p.has_v4 for p in pools)
    netns = netns_name(lab, CONTROL_PLANE)
    cloud = next((p for p in pools if p.public), None)
    if cloud is not None:
        ip6 = _v6("1", cloud.index, CONTROL_PLANE_HOST) if needs_v6 and cloud.has_v6 else ""
        gateway6 = cloud.router_lan_ip6 if ip6 else ""
        if cloud.has_v4:
            return ControlPlanePlan(
                netns=netns, ip=str(ipaddress.IPv4Network(cloud.lan).network_address
                                    + CONTROL_PLANE_HOST),
                prefixlen=24, gateway=cloud.router_lan_ip, pool=cloud.name, ip6=ip6,
                gateway6=gateway6)
        ip6 = _v6("1", cloud.index, CONTROL_PLANE_HOST)
        return ControlPlanePlan(netns=netns, ip=ip6, prefixlen=PREFIX6,
                                gateway=cloud.router_lan_ip6, pool=cloud.name, ip6=ip6,
                                gateway6=cloud.router_lan_ip6)
    ip6, gateway6 = (CONTROL_PLANE_WAN6[1], CONTROL_PLANE_WAN6[0]) if needs_v6 else ("", "")
    if needs_v4:
        return ControlPlanePlan(netns=netns, ip=CONTROL_PLANE_WAN[1], prefixlen=30,
                                gateway=CONTROL_PLANE_WAN[0], pool=None, ip6=ip6,
                                gateway6=gateway6)
    return ControlPlanePlan(netns=netns, ip=ip6, prefixlen=PREFIX6, gateway=gateway6, pool=None,
                            ip6=ip6, gateway6=gateway6)


def plan_to_json(plan: LabPlan) -> dict:
    """The stored and `status --json` form (names agreed in interfaces.md; add, never rename)."""
    return {
        "name": plan.name,
        "tunnel": plan.tunnel,
        "source": plan.source,
        "internet": {"netns": plan.internet_netns, "probes": list(INTERNET_PROBES),
                     "probes6": list(INTERNET_PROBES6) if plan.has_v6_underlay else []},
        "controlPlane": {"netns": plan.control_plane.netns, "ip": plan.control_plane.ip,
                         "prefixlen": plan.control_plane.prefixlen,
                         "gateway": plan.control_plane.gateway, "pool": plan.control_plane.pool,
                         "ip6": plan.control_plane.ip6, "gateway6": plan.control_plane.gateway6},
        "pools": [
            {
                "name": pool.name, "gateway": pool.gateway, "nat": pool.nat, "index": pool.index,
                "netns": pool.netns, "lan": pool.lan, "routerIP": pool.router_lan_ip,
                "publicIP": pool.wan_ip, "internetIP": pool.internet_wan_ip,
                "internetPort": pool.internet_port, "underlayMTU": pool.mtu,
                "underlay": pool.underlay, "lan6": pool.lan6, "routerIP6": pool.router_lan_ip6,
                "publicIP6": pool.wan_ip6, "internetIP6": pool.internet_wan_ip6,
                "tunnelReplicas": pool.tunnel_replicas,
                "nodes": [
                    {
                        "name": node.name, "netns": node.netns, "underlayIP": node.underlay_ip,
                        "podCIDR": node.pod_cidr, "podGateway": node.pod_gateway,
                        "gatewayCandidate": node.gateway_candidate,
                        "routerPort": node.router_port, "kind": node.kind,
                        "underlayIP6": node.underlay_ip6, "podCIDRs": list(node.cidrs()),
                        "podGateways": list(node.gateways()),
                        "pods": [{"name": p.name, "netns": p.netns, "ip": p.ip,
                                  "ips": list(p.addresses()),
                                  "nodeIfname": p.node_ifname} for p in node.pods],
                    }
                    for node in pool.nodes
                ],
            }
            for pool in plan.pools
        ],
    }


def plan_from_json(data: dict) -> LabPlan:
    cp = data["controlPlane"]
    pools = tuple(
        PoolPlan(
            name=p["name"], gateway=p["gateway"], nat=p["nat"], index=p["index"],
            netns=p["netns"], lan=p["lan"], router_lan_ip=p["routerIP"], wan_ip=p["publicIP"],
            internet_wan_ip=p["internetIP"], internet_port=p["internetPort"],
            mtu=p["underlayMTU"], underlay=p.get("underlay", "ipv4"), lan6=p.get("lan6", ""),
            router_lan_ip6=p.get("routerIP6", ""), wan_ip6=p.get("publicIP6", ""),
            internet_wan_ip6=p.get("internetIP6", ""),
            tunnel_replicas=int(p.get("tunnelReplicas", 1)),
            nodes=tuple(
                NodePlan(
                    name=n["name"], netns=n["netns"], underlay_ip=n["underlayIP"],
                    pod_cidr=n["podCIDR"], pod_gateway=n["podGateway"],
                    gateway_candidate=n["gatewayCandidate"], router_port=n["routerPort"],
                    underlay_ip6=n.get("underlayIP6", ""),
                    pod_cidrs=tuple(n.get("podCIDRs", [n["podCIDR"]])),
                    pod_gateways=tuple(n.get("podGateways", [n["podGateway"]])),
                    pods=tuple(PodPlan(name=q["name"], netns=q["netns"], ip=q["ip"],
                                       node_ifname=q["nodeIfname"],
                                       ips=tuple(q.get("ips", [q["ip"]])))
                               for q in n["pods"]),
                    kind=n.get("kind", "netns"),
                )
                for n in p["nodes"]
            ),
        )
        for p in data["pools"]
    )
    return LabPlan(
        name=data["name"], tunnel=data["tunnel"], pools=pools,
        internet_netns=data["internet"]["netns"],
        control_plane=ControlPlanePlan(netns=cp["netns"], ip=cp["ip"], prefixlen=cp["prefixlen"],
                                       gateway=cp["gateway"], pool=cp["pool"],
                                       ip6=cp.get("ip6", ""), gateway6=cp.get("gateway6", "")),
        source=data.get("source", ""),
    )
