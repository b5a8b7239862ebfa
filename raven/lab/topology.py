"""Lab topology files: schema, parsing and validation (pure: no files opened except by `load`).

Rules kept:
- Validation finishes before anything is created, and reports EVERY problem at once, each message
  naming the pool, the node and the field, and what would be valid (ValidationError.problems).
- Unknown keys are errors (a typo must not silently fall back to a default).
- Names are DNS labels so they can become namespace names, file names and Kubernetes names.
- Booleans must be YAML booleans and counts must be integers (no "yes", no "2").
- Files are read with raven.safeyaml (no aliases, bounded depth, NUL reported): any input gives a
  Topology or a ValidationError, never another exception.
- Bundled topologies (package data `raven/lab/topologies/`, the repository's test-topologies/)
  are found through importlib.resources, so they work from an installed wheel; a topology
  argument that is not an existing file may name one (`three-pools` or `three-pools.yaml`).
- Pod networks follow Kubernetes' Node rules (one or two, at most one per family, `podCIDR` ==
  `podCIDRs[0]`); what the lab cannot build is refused too: an IPv6-only underlay beside an
  IPv4-only one (gateways tunnel over one family), IPv6 pods below IPv6's minimum path MTU.
The schema is documented in docs/lab.md; keep both in step.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from raven.constants import DEFAULT_UNDERLAY_MTU
from raven.errors import ValidationError
from raven.safeyaml import YamlError, load_yaml, read_yaml_file
from raven.topology import VTEP6_NETWORK

NAT_KINDS = ("none", "cone", "full-cone", "symmetric")
NODE_KINDS = ("netns", "vm")  # a network namespace (default) or a qemu guest (raven.lab.vm)
UNDERLAY_FAMILIES = ("ipv4", "ipv6", "dual")
TUNNEL_KINDS = ("wireguard", "none")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_LAB_NAME = 24
MAX_NAME = 40
MAX_POOLS = 200
MAX_NODES_PER_POOL = 200
MAX_PODS_PER_NODE = 64
MIN_MTU, MAX_MTU = 1280, 9000
# Targets the lab itself owns; node and pod names must not take them.
INTERNET = "internet"
CONTROL_PLANE = "control-plane"
ROUTER_PREFIX = "router-"
# Address space the lab uses for its underlay; pod CIDRs must stay out of it.
UNDERLAY_RANGES = tuple(
    ipaddress.IPv4Network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")
)
# IPv6 underlays (pools with `underlay: ipv6 | dual`) live in the documentation prefix.
UNDERLAY6_RANGE = ipaddress.IPv6Network("2001:db8::/32")

TOP_KEYS = {"name", "tunnel", "underlayMTU", "pools", "description"}
POOL_KEYS = {"name", "gateway", "nat", "nodes", "pods", "underlayMTU", "underlay",
             "tunnelReplicas"}
NODE_KEYS = {"name", "podCIDR", "podCIDRs", "gatewayCandidate", "pods", "kind"}
# IPv6 pods need the cross-pool path to carry 1280 bytes (IPv6's minimum link MTU); the
# WireGuard tunnel takes 80 bytes of the underlay MTU.
IPV6_MIN_UNDERLAY_MTU = 1280 + 80

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pod_cidr: Network  # the primary pod network: podCIDR, i.e. podCIDRs[0]
    gateway_candidate: bool
    pods: int
    pod_cidrs: tuple[Network, ...] = ()  # every pod network (at most one per family), primary first
    kind: str = "netns"  # netns | vm (raven.lab.vm)

    def cidrs(self) -> tuple[Network, ...]:
        return self.pod_cidrs or (self.pod_cidr,)


@dataclass(frozen=True)
class PoolSpec:
    name: str
    gateway: str
    nat: str
    nodes: tuple[NodeSpec, ...]
    underlay_mtu: int
    underlay: str = "ipv4"  # ipv4 | ipv6 | dual: the address families of the pool's underlay
    tunnel_replicas: int = 1  # the Gateway's tunnelConfig.Replicas (2+: active-active)


@dataclass(frozen=True)
class Topology:
    name: str | None
    tunnel: str
    pools: tuple[PoolSpec, ...]
    description: str = ""


def pod_names(node: NodeSpec) -> list[str]:
    """Pods of a node are named `<node>-pod<k>`, k from 0."""
    return [f"{node.name}-pod{k}" for k in range(node.pods)]


def lab_name_problem(name: object, what: str = "lab name") -> str | None:
    """Why `name` cannot name a lab, or None when it can."""
    if not isinstance(name, str):
        return f"{what}: must be a string, got {_kind(name)}"
    if not DNS_LABEL.match(name) or len(name) > MAX_LAB_NAME:
        return (
            f"{what}: {name!r} is not valid: use lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, at most {MAX_LAB_NAME} characters"
        )
    return None


def bundled_topologies() -> dict[str, Traversable]:
    """Name (file name without .yaml) -> bundled topology file."""
    folder = resources.files("raven.lab").joinpath("topologies")
    if not folder.is_dir():
        return {}
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir()
            if entry.name.endswith(".yaml") and entry.is_file()}


def find_topology(arg: str | Path | Traversable) -> Path | Traversable:
    """An existing file `arg`, else the bundled topology it names; ValidationError otherwise."""
    if not isinstance(arg, str | Path):
        return arg  # a bundled resource already
    path = Path(arg)
    if path.exists():
        return path
    bundled = bundled_topologies()
    name = str(arg).removesuffix(".yaml")
    if name in bundled and "/" not in name:
        return bundled[name]
    raise ValidationError([f"topology file {str(arg)!r}: cannot read it: no such file, and no "
                           f"bundled topology of that name (bundled: "
                           f"{', '.join(sorted(bundled)) or 'none'})"])


def load_topology(path: str | Path | Traversable) -> Topology:
    """Read and validate a topology file (or a bundled one, see find_topology); raise
    ValidationError listing every problem."""
    target = find_topology(path)
    try:
        data = read_yaml_file(target)  # bounded: a topology named /dev/zero must end
    except OSError as exc:
        raise ValidationError([f"topology file {str(target)!r}: cannot read it: "
                               f"{exc.strerror or exc}"]) from None
    except YamlError as exc:
        raise ValidationError([str(exc)]) from None
    return load_topology_text(data, source=str(target))


def load_topology_text(text: str | bytes, source: str = "topology") -> Topology:
    """Parse and validate the text of a topology file; raise ValidationError listing every
    problem (malformed YAML included, with its line)."""
    try:
        data = load_yaml(text, source=f"topology file {source!r}")
    except YamlError as exc:
        raise ValidationError([str(exc)]) from None
    return parse_topology(data, source=source)


def parse_topology(data: object, source: str = "topology") -> Topology:
    """Validate a parsed YAML document; raise ValidationError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ValidationError([f"{source}: the top level must be a mapping with 'pools', "
                               f"got {_kind(data)}"])
    for key in sorted(set(map(str, data)) - TOP_KEYS):
        problems.append(f"{source}: unknown field {key!r} (known: {', '.join(sorted(TOP_KEYS))})")

    name = data.get("name")
    if name is not None:
        why = lab_name_problem(name, "field 'name'")
        if why:
            problems.append(f"{source}: {why}")
            name = None
    tunnel = data.get("tunnel", "wireguard")
    if tunnel not in TUNNEL_KINDS:
        problems.append(f"{source}: field 'tunnel': {tunnel!r} is not one of "
                        f"{', '.join(TUNNEL_KINDS)}")
        tunnel = "wireguard"
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(f"{source}: field 'description': must be a string, "
                        f"got {_kind(description)}")
        description = ""
    default_mtu = _mtu(data.get("underlayMTU", DEFAULT_UNDERLAY_MTU), f"{source}: field "
                       "'underlayMTU'", problems)

    raw_pools = data.get("pools")
    pools: list[PoolSpec] = []
    if raw_pools is None:
        problems.append(f"{source}: field 'pools' is missing: list at least one pool")
        raw_pools = []
    elif not isinstance(raw_pools, list):
        problems.append(f"{source}: field 'pools': must be a list of pools, got {_kind(raw_pools)}")
        raw_pools = []
    elif not raw_pools:
        problems.append(f"{source}: field 'pools' is empty: list at least one pool")
    elif len(raw_pools) > MAX_POOLS:
        problems.append(f"{source}: field 'pools': {len(raw_pools)} pools, at most {MAX_POOLS}")

    for index, raw in enumerate(raw_pools):
        pool = _parse_pool(raw, index, default_mtu, problems)
        if pool is not None:
            pools.append(pool)

    _check_unique_names(pools, problems)
    _check_cidrs(pools, problems)
    _check_families(pools, problems)
    if problems:
        raise ValidationError(problems)
    return Topology(name=name, tunnel=tunnel, pools=tuple(pools), description=description)


def _parse_name(raw: Mapping, where: str, index: int, problems: list[str]) -> tuple[str, bool]:
    """The entry's 'name', or a placeholder `#<index>` (and a problem) when missing or invalid.

    The placeholder keeps later messages about the same entry readable; the flag says whether
    the name is real.
    """
    name = raw.get("name")
    if name is None:
        problems.append(f"{where}: field 'name' is missing")
    elif _name_problem(name):
        problems.append(f"{where}: field 'name': {_name_problem(name)}")
    else:
        return name, True
    return f"#{index}", False


def _parse_pool(raw: object, index: int, default_mtu: int, problems: list[str]) -> PoolSpec | None:
    where = f"pools[{index}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping with name, nat and nodes, got {_kind(raw)}")
        return None
    name, _ = _parse_name(raw, where, index, problems)
    where = f"pool {name!r}"
    for key in sorted(set(map(str, raw)) - POOL_KEYS):
        problems.append(f"{where}: unknown field {key!r} (known: {', '.join(sorted(POOL_KEYS))})")

    gateway = raw.get("gateway", f"gw-{name}")
    if _name_problem(gateway):
        problems.append(f"{where}: field 'gateway': {_name_problem(gateway)}")
    nat = raw.get("nat", "none")
    if nat not in NAT_KINDS:
        problems.append(f"{where}: field 'nat': {nat!r} is not one of {', '.join(NAT_KINDS)}")
    pods = _count(raw.get("pods", 1), f"{where}: field 'pods'", problems)
    mtu = _mtu(raw.get("underlayMTU", default_mtu), f"{where}: field 'underlayMTU'", problems)
    underlay = raw.get("underlay", "ipv4")
    if underlay not in UNDERLAY_FAMILIES:
        problems.append(f"{where}: field 'underlay': {underlay!r} is not one of "
                        f"{', '.join(UNDERLAY_FAMILIES)}")
        underlay = "ipv4"
    replicas = raw.get("tunnelReplicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 16:
        problems.append(f"{where}: field 'tunnelReplicas': {replicas!r} is not an integer from "
                        "1 to 16 (the Gateway's tunnelConfig.Replicas; 2 or more makes its "
                        "gateway candidates active-active)")
        replicas = 1

    raw_nodes = raw.get("nodes")
    nodes: list[NodeSpec] = []
    if raw_nodes is None or raw_nodes == []:
        problems.append(f"{where}: has no nodes: field 'nodes' must list at least one node")
        raw_nodes = []
    elif not isinstance(raw_nodes, list):
        problems.append(f"{where}: field 'nodes': must be a list of nodes, got {_kind(raw_nodes)}")
        raw_nodes = []
    elif len(raw_nodes) > MAX_NODES_PER_POOL:
        problems.append(f"{where}: field 'nodes': {len(raw_nodes)} nodes, at most "
                        f"{MAX_NODES_PER_POOL} per pool")
    for node_index, raw_node in enumerate(raw_nodes):
        node = _parse_node(raw_node, where, node_index, pods, problems)
        if node is not None:
            nodes.append(node)
    return PoolSpec(name=str(name), gateway=str(gateway), nat=str(nat), nodes=tuple(nodes),
                    underlay_mtu=mtu, underlay=str(underlay), tunnel_replicas=replicas)


def _parse_node(raw: object, pool_where: str, index: int, default_pods: int,
                problems: list[str]) -> NodeSpec | None:
    where = f"{pool_where} nodes[{index}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping with name and podCIDR, got {_kind(raw)}")
        return None
    name, named = _parse_name(raw, where, index, problems)
    if named:
        where = f"{pool_where} node {name!r}"
        reserved = _reserved_problem(name)
        if reserved:
            problems.append(f"{where}: field 'name': {reserved}")
    for key in sorted(set(map(str, raw)) - NODE_KEYS):
        problems.append(f"{where}: unknown field {key!r} (known: {', '.join(sorted(NODE_KEYS))})")

    candidate = raw.get("gatewayCandidate", False)
    if not isinstance(candidate, bool):
        problems.append(f"{where}: field 'gatewayCandidate': must be true or false, "
                        f"got {candidate!r}")
        candidate = False
    pods = _count(raw.get("pods", default_pods), f"{where}: field 'pods'", problems)
    kind = raw.get("kind", "netns")
    if kind not in NODE_KINDS:
        problems.append(f"{where}: field 'kind': {kind!r} is not one of {', '.join(NODE_KINDS)}")
        kind = "netns"

    cidrs = _parse_pod_cidrs(raw, where, index, pods, problems)
    if not cidrs:
        return None
    return NodeSpec(name=str(name), pod_cidr=cidrs[0], gateway_candidate=candidate, pods=pods,
                    pod_cidrs=cidrs, kind=str(kind))


def _parse_pod_cidrs(raw: Mapping, where: str, index: int, pods: int,
                     problems: list[str]) -> tuple[Network, ...]:
    """A node's pod networks from `podCIDR` and/or `podCIDRs`, as Kubernetes allows them: one or
    two networks, at most one per family, `podCIDR` (when given too) equal to `podCIDRs[0]`.
    Empty when they cannot be used (the problems say why)."""
    single, many = raw.get("podCIDR"), raw.get("podCIDRs")
    example = (f"podCIDR: 10.244.{index}.0/24, or podCIDRs: [10.244.{index}.0/24, "
               f"fd00:10:244:{index}::/64] for a dual-stack node")
    if single is None and many is None:
        problems.append(f"{where}: field 'podCIDR' is missing (e.g. {example})")
        return ()
    if many is None:
        cidr = _pod_cidr(single, f"{where}: field 'podCIDR'", index, pods, problems)
        return (cidr,) if cidr is not None else ()
    if not isinstance(many, list) or not many:
        got = "an empty list" if many == [] else _kind(many)
        problems.append(f"{where}: field 'podCIDRs': must be a list of one or two networks "
                        f"(one IPv4, one IPv6), got {got}; e.g. {example}")
        return ()
    if len(many) > 2:
        problems.append(f"{where}: field 'podCIDRs': {len(many)} networks; Kubernetes allows at "
                        "most two, one IPv4 and one IPv6")
        return ()
    cidrs = [_pod_cidr(c, f"{where}: field 'podCIDRs[{k}]'", index, pods, problems)
             for k, c in enumerate(many)]
    if any(c is None for c in cidrs):
        return ()
    found = tuple(c for c in cidrs if c is not None)
    if len(found) == 2 and found[0].version == found[1].version:
        problems.append(f"{where}: field 'podCIDRs': {found[0]} and {found[1]} are both "
                        f"IPv{found[0].version}; Kubernetes allows one network per family: give "
                        "one IPv4 and one IPv6 network (dual-stack), or just one")
        return ()
    if single is not None and single != many[0]:
        problems.append(f"{where}: field 'podCIDR': {single!r} differs from podCIDRs[0] "
                        f"({many[0]!r}); Kubernetes keeps podCIDR equal to podCIDRs[0]: drop "
                        "'podCIDR' or make them equal")
        return ()
    return found


def _pod_cidr(raw_cidr: object, where: str, index: int, pods: int,
              problems: list[str]) -> Network | None:
    """One pod network, checked (family, size, room for the pods, special and lab space)."""
    if not isinstance(raw_cidr, str):
        problems.append(f"{where}: must be a string like 10.244.0.0/24 or fd00:10:244::/64, "
                        f"got {_kind(raw_cidr)}")
        return None
    try:
        cidr = ipaddress.ip_network(raw_cidr, strict=True)
    except ValueError as exc:
        problems.append(f"{where}: {raw_cidr!r} is not a valid IPv4 or IPv6 network ({exc}); "
                        f"use e.g. 10.244.{index}.0/24 or fd00:10:244:{index}::/64")
        return None
    # The network address is not used, the node takes the next one, pods the ones after (and
    # IPv4's broadcast address is not usable either).
    spare = 3 if cidr.version == 4 else 2
    smallest = 30 if cidr.version == 4 else 126
    if cidr.prefixlen > smallest:
        problems.append(f"{where}: {raw_cidr} is too small: use /{smallest} or larger (the node "
                        "takes the first address, pods the next ones)")
        return None
    if cidr.num_addresses - spare < pods:
        problems.append(f"{where}: {raw_cidr} has room for {cidr.num_addresses - spare} pods, "
                        f"{pods} asked; use a larger network or fewer pods")
        return None
    special = _special(cidr)
    if special:
        example = "10.244.0.0/16" if cidr.version == 4 else "fd00:10:244::/56"
        problems.append(f"{where}: {raw_cidr} is {special} space, not usable for pods; use e.g. "
                        f"{example}")
        return None
    if cidr.version == 4 and any(cidr.overlaps(r) for r in UNDERLAY_RANGES):
        problems.append(f"{where}: {raw_cidr} overlaps the lab underlay "
                        f"({', '.join(map(str, UNDERLAY_RANGES))}); use e.g. 10.244.0.0/16")
        return None
    if cidr.version == 6 and cidr.overlaps(UNDERLAY6_RANGE):
        problems.append(f"{where}: {raw_cidr} overlaps the lab's IPv6 underlay "
                        f"({UNDERLAY6_RANGE}); use e.g. fd00:10:244::/56")
        return None
    if cidr.version == 6 and cidr.overlaps(VTEP6_NETWORK):
        problems.append(f"{where}: {raw_cidr} overlaps {VTEP6_NETWORK}, where the overlay puts "
                        "its IPv6 VTEP addresses; use e.g. fd00:10:244::/56")
        return None
    return cidr


def _check_unique_names(pools: list[PoolSpec], problems: list[str]) -> None:
    seen_pools: dict[str, int] = {}
    seen_gateways: dict[str, str] = {}
    owner: dict[str, str] = {}  # node or pod name -> "pool 'x' node 'y'"
    for pool in pools:
        if pool.name.startswith("#"):
            continue
        seen_pools[pool.name] = seen_pools.get(pool.name, 0) + 1
        if seen_pools[pool.name] == 2:
            problems.append(f"pool {pool.name!r}: field 'name': duplicate pool name; "
                            "every pool needs its own name")
        if pool.gateway in seen_gateways and seen_gateways[pool.gateway] != pool.name:
            problems.append(f"pool {pool.name!r}: field 'gateway': {pool.gateway!r} is already "
                            f"the gateway of pool {seen_gateways[pool.gateway]!r}")
        seen_gateways.setdefault(pool.gateway, pool.name)
        for node in pool.nodes:
            if node.name.startswith("#"):
                continue
            where = f"pool {pool.name!r} node {node.name!r}"
            if node.name in owner:
                problems.append(f"{where}: field 'name': duplicate node name, already used by "
                                f"{owner[node.name]}")
            else:
                owner[node.name] = where
            for pod in pod_names(node):
                if pod in owner and owner[pod] != where:
                    problems.append(f"{where}: pod {pod!r} collides with {owner[pod]}; "
                                    "rename the node")
                owner.setdefault(pod, where)


def _check_cidrs(pools: list[PoolSpec], problems: list[str]) -> None:
    placed: list[tuple[Network, str]] = []
    for pool in pools:
        for node in pool.nodes:
            where = f"pool {pool.name!r} node {node.name!r}"
            for cidr in node.cidrs():
                for other, other_where in placed:
                    if cidr.version == other.version and cidr.overlaps(other):
                        problems.append(f"{where}: field 'podCIDR': {cidr} overlaps {other} of "
                                        f"{other_where}; give every node its own network")
                placed.append((cidr, where))


def _check_families(pools: list[PoolSpec], problems: list[str]) -> None:
    """What the families of the underlays and pod networks must agree on.

    - Gateways tunnel over one family: once a pool's underlay is IPv6 only, every pool needs an
      IPv6 underlay (ipv6 or dual) for its gateway to reach that pool's.
    - IPv6 pods need a cross-pool path of at least 1280 bytes (IPv6's minimum MTU).
    """
    v6_only = [p.name for p in pools if p.underlay == "ipv6"]
    if v6_only:
        for pool in pools:
            if pool.underlay == "ipv4":
                problems.append(
                    f"pool {pool.name!r}: field 'underlay': ipv4, but pool {v6_only[0]!r} has an "
                    "IPv6-only underlay and gateways tunnel over one address family; give pool "
                    f"{pool.name!r} `underlay: dual` (or ipv6)")
    for pool in pools:
        if pool.underlay_mtu >= IPV6_MIN_UNDERLAY_MTU:
            continue
        for node in pool.nodes:
            v6 = [c for c in node.cidrs() if c.version == 6]
            if v6:
                problems.append(
                    f"pool {pool.name!r} node {node.name!r}: field 'podCIDRs': IPv6 pod network "
                    f"{v6[0]} needs underlayMTU >= {IPV6_MIN_UNDERLAY_MTU} (the WireGuard tunnel "
                    f"takes 80 bytes and IPv6 needs 1280), the pool has {pool.underlay_mtu}; "
                    "raise the pool's underlayMTU or drop the IPv6 network")


SPECIAL_RANGES: tuple[tuple[Network, str], ...] = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "'this network'"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved"),
    (ipaddress.IPv6Network("::/96"), "unspecified, loopback or IPv4-compatible"),
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
)


def _special(cidr: Network) -> str | None:
    for net, what in SPECIAL_RANGES:
        if net.version == cidr.version and cidr.overlaps(net):
            return what
    return None


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"must be a string, got {_kind(name)}"
    if not DNS_LABEL.match(name) or len(name) > MAX_NAME:
        return (f"{name!r} is not valid: use lowercase letters, digits and '-', starting and "
                f"ending with a letter or digit, at most {MAX_NAME} characters")
    return None


def _reserved_problem(name: str) -> str | None:
    if name in (INTERNET, CONTROL_PLANE) or name.startswith(ROUTER_PREFIX):
        return (f"{name!r} is reserved for the lab's own namespaces ({INTERNET}, {CONTROL_PLANE}, "
                f"{ROUTER_PREFIX}<pool>); choose another name")
    return None


def _count(value: object, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: must be an integer from 0 to {MAX_PODS_PER_NODE}, "
                        f"got {value!r}")
        return 1
    if not 0 <= value <= MAX_PODS_PER_NODE:
        problems.append(f"{where}: {value} is out of range: use 0 to {MAX_PODS_PER_NODE}")
        return 1
    return value


def _mtu(value: object, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: must be an integer from {MIN_MTU} to {MAX_MTU}, got {value!r}")
        return DEFAULT_UNDERLAY_MTU
    if not MIN_MTU <= value <= MAX_MTU:
        problems.append(f"{where}: {value} is out of range: use {MIN_MTU} to {MAX_MTU}")
        return DEFAULT_UNDERLAY_MTU
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
