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


@dataclass(frozen=True)
class PodPlan:
    name: str
    netns: str
    ip: str
    node_ifname: str  # the pod's veth on its node


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
    kind: str = "netns"  # "vm": a qemu guest; its pods are namespaces inside it (raven.lab.vm)

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

    @property
    def public(self) -> bool:
        return self.nat == "none"


@dataclass(frozen=True)
class ControlPlanePlan:
    netns: str
    ip: str
    prefixlen: int
    gateway: str
    pool: str | None  # the public pool whose LAN it sits on; None = attached to the internet


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
        nodes = []
        for j, node in enumerate(spec.nodes):
            gateway = node.pod_cidr.network_address + 1
            pods = tuple(
                PodPlan(name=pod, netns=netns_name(lab, pod), ip=str(gateway + 1 + k),
                        node_ifname=f"p{k}")
                for k, pod in enumerate(pod_names(node))
            )
            nodes.append(NodePlan(
                name=node.name, netns=netns_name(lab, node.name),
                underlay_ip=str(lan.network_address + NODE_HOST_OFFSET + j),
                pod_cidr=str(node.pod_cidr), pod_gateway=str(gateway),
                gateway_candidate=node.gateway_candidate, router_port=f"n{j}", pods=pods,
                kind=node.kind,
            ))
        pools.append(PoolPlan(
            name=spec.name, gateway=spec.gateway, nat=spec.nat, index=i,
            netns=netns_name(lab, ROUTER_PREFIX + spec.name), lan=str(lan),
            router_lan_ip=str(lan.network_address + 1),
            wan_ip=str(ipaddress.IPv4Address(wan + 2)),
            internet_wan_ip=str(ipaddress.IPv4Address(wan + 1)),
            internet_port=f"w{i}", mtu=spec.underlay_mtu, nodes=tuple(nodes),
        ))
    cloud = next((p for p in pools if p.public), None)
    if cloud is not None:
        cp = ControlPlanePlan(
            netns=netns_name(lab, CONTROL_PLANE),
            ip=str(ipaddress.IPv4Network(cloud.lan).network_address + CONTROL_PLANE_HOST),
            prefixlen=24, gateway=cloud.router_lan_ip, pool=cloud.name,
        )
    else:
        cp = ControlPlanePlan(netns=netns_name(lab, CONTROL_PLANE), ip=CONTROL_PLANE_WAN[1],
                              prefixlen=30, gateway=CONTROL_PLANE_WAN[0], pool=None)
    return LabPlan(name=lab, tunnel=topology.tunnel, pools=tuple(pools),
                   internet_netns=netns_name(lab, INTERNET), control_plane=cp, source=source)


def plan_to_json(plan: LabPlan) -> dict:
    """The stored and `status --json` form (names agreed in interfaces.md; add, never rename)."""
    return {
        "name": plan.name,
        "tunnel": plan.tunnel,
        "source": plan.source,
        "internet": {"netns": plan.internet_netns, "probes": list(INTERNET_PROBES)},
        "controlPlane": {"netns": plan.control_plane.netns, "ip": plan.control_plane.ip,
                         "prefixlen": plan.control_plane.prefixlen,
                         "gateway": plan.control_plane.gateway, "pool": plan.control_plane.pool},
        "pools": [
            {
                "name": pool.name, "gateway": pool.gateway, "nat": pool.nat, "index": pool.index,
                "netns": pool.netns, "lan": pool.lan, "routerIP": pool.router_lan_ip,
                "publicIP": pool.wan_ip, "internetIP": pool.internet_wan_ip,
                "internetPort": pool.internet_port, "underlayMTU": pool.mtu,
                "nodes": [
                    {
                        "name": node.name, "netns": node.netns, "underlayIP": node.underlay_ip,
                        "podCIDR": node.pod_cidr, "podGateway": node.pod_gateway,
                        "gatewayCandidate": node.gateway_candidate,
                        "routerPort": node.router_port, "kind": node.kind,
                        "pods": [{"name": p.name, "netns": p.netns, "ip": p.ip,
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
            mtu=p["underlayMTU"],
            nodes=tuple(
                NodePlan(
                    name=n["name"], netns=n["netns"], underlay_ip=n["underlayIP"],
                    pod_cidr=n["podCIDR"], pod_gateway=n["podGateway"],
                    gateway_candidate=n["gatewayCandidate"], router_port=n["routerPort"],
                    pods=tuple(PodPlan(name=q["name"], netns=q["netns"], ip=q["ip"],
                                       node_ifname=q["nodeIfname"]) for q in n["pods"]),
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
                                       gateway=cp["gateway"], pool=cp["pool"]),
        source=data.get("source", ""),
    )
