"""The Kubernetes objects Raven reads, as frozen dataclasses, with validation.

Rules this module keeps:
- `Gateway.from_k8s` accepts `raven.openyurt.io/v1beta1` and `v1alpha1` JSON exactly as OpenYurt
  writes it; v1alpha1 is converted the way OpenYurt converts it (tunnel replicas 1, proxy
  replicas 1, every endpoint `type: tunnel`, `port: 4500`). `to_k8s` renders v1beta1 (or v1alpha1)
  with Go's `omitempty` conventions; keys we do not know are kept at every level, so a round trip
  through the model never loses a field someone else wrote.
- Parsing never guesses: a value of the wrong JSON type is a problem with its field path, not a
  silent default. `from_k8s` raises `ValidationError` only for such structural problems; the
  semantic rules (OpenYurt's admission webhook plus ours) are reported by `gateway_problems` and
  `fleet_problems`, so an agent can still load an existing object that a newer rule dislikes.
- Every problem message names the object, the field path and what would be valid.
- All values are hashable (maps are `FrozenMap`), so models compare with `==` and can be cached.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raven import constants
from raven.errors import ValidationError

TUNNEL = "tunnel"
PROXY = "proxy"
ENDPOINT_TYPES = (TUNNEL, PROXY)
EXPOSE_PUBLIC_IP = "PublicIP"
EXPOSE_LOAD_BALANCER = "LoadBalancer"
EXPOSE_TYPES = ("", EXPOSE_PUBLIC_IP, EXPOSE_LOAD_BALANCER)
DEFAULT_TUNNEL_PORT = constants.WIREGUARD_PORT  # OpenYurt's DefaultTunnelServerExposedPort
DEFAULT_PROXY_PORT = 10262  # OpenYurt's DefaultProxyServerExposedPort
V1BETA1 = f"{constants.API_GROUP}/{constants.API_VERSION}"
V1ALPHA1 = f"{constants.API_GROUP}/{constants.API_VERSION_ALPHA}"
API_VERSIONS = (V1BETA1, V1ALPHA1)


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping of JSON values (deep-copied in, deep-copied out)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        # Only nested containers need a deep copy; scalars are immutable (and copying is the
        # hot part of parsing thousands of Gateways).
        self._data: dict[str, Any] = {
            k: copy.deepcopy(v) if isinstance(v, dict | list) else v for k, v in dict(data).items()
        }
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return copy.deepcopy(value) if isinstance(value, dict | list) else value

    def get(self, key: str, default: Any = None) -> Any:  # hot in the planner: skip the ABC
        value = self._data.get(key, default)
        return copy.deepcopy(value) if isinstance(value, dict | list) else value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(_canonical(self._data))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)


def _canonical(value: Any) -> Any:
    """A hashable form of a JSON value that is equal for equal values (key order ignored;
    YAML may give keys of mixed types, so they sort by their text)."""
    if isinstance(value, dict):
        return tuple(sorted(((str(k), type(k).__name__), _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[]", *(_canonical(v) for v in value))
    return value


EMPTY = FrozenMap()


# --------------------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True)
class Endpoint:
    """A node that may serve its pool as a tunnel (or proxy) endpoint."""

    node_name: str
    type: str = TUNNEL
    port: int = 0  # 0 = the default port of `type`
    under_nat: bool = False
    nat_type: str = ""
    public_ip: str = ""
    public_port: int = 0
    config: FrozenMap = EMPTY
    extra: FrozenMap = EMPTY  # unknown keys, kept for round trips

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return DEFAULT_PROXY_PORT if self.type == PROXY else DEFAULT_TUNNEL_PORT

    @property
    def public_key(self) -> str:
        return str(self.config.get(constants.ENDPOINT_CONFIG_PUBLIC_KEY, ""))

    def to_k8s(self, api_version: str = V1BETA1) -> dict[str, Any]:
        out = self.extra.to_dict()
        out["nodeName"] = self.node_name
        if api_version == V1BETA1:
            out["type"] = self.type
            if self.port:
                out["port"] = self.port
        if self.under_nat:
            out["underNAT"] = True
        if self.nat_type:
            out["natType"] = self.nat_type
        if self.public_ip:
            out["publicIP"] = self.public_ip
        if self.public_port:
            out["publicPort"] = self.public_port
        if self.config:
            out["config"] = self.config.to_dict()
        return out


@dataclass(frozen=True)
class NodeInfo:
    """One pool member as the controller lists it in `status.nodes`."""

    node_name: str
    private_ip: str = ""
    subnets: tuple[str, ...] = ()
    extra: FrozenMap = EMPTY

    def to_k8s(self) -> dict[str, Any]:
        out = self.extra.to_dict()
        out.update(nodeName=self.node_name, privateIP=self.private_ip, subnets=list(self.subnets))
        return out


@dataclass(frozen=True)
class ProxyConfig:
    replicas: int = 0
    http_port: str = ""
    https_port: str = ""
    extra: FrozenMap = EMPTY

    def to_k8s(self) -> dict[str, Any]:
        out = self.extra.to_dict()
        out["Replicas"] = self.replicas
        if self.http_port:
            out["proxyHTTPPort"] = self.http_port
        if self.https_port:
            out["proxyHTTPSPort"] = self.https_port
        return out


@dataclass(frozen=True)
class TunnelConfig:
    replicas: int = 0
    extra: FrozenMap = EMPTY

    def to_k8s(self) -> dict[str, Any]:
        out = self.extra.to_dict()
        out["Replicas"] = self.replicas
        return out


@dataclass(frozen=True)
class GatewaySpec:
    node_selector: FrozenMap | None = None
    proxy_config: ProxyConfig | None = None
    tunnel_config: TunnelConfig | None = None
    endpoints: tuple[Endpoint, ...] = ()
    expose_type: str = ""
    extra: FrozenMap = EMPTY

    @property
    def tunnel_replicas(self) -> int:
        """How many active tunnel endpoints to elect: `tunnelConfig.Replicas`, 0/absent = 1."""
        if self.tunnel_config is None or self.tunnel_config.replicas <= 0:
            return 1
        return self.tunnel_config.replicas

    @property
    def tunnel_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.type == TUNNEL)


@dataclass(frozen=True)
class Condition:
    """A standard Kubernetes condition (our optional addition to the status)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""
    extra: FrozenMap = EMPTY

    def to_k8s(self) -> dict[str, Any]:
        out = self.extra.to_dict()
        out.update(type=self.type, status=self.status)
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        if self.last_transition_time:
            out["lastTransitionTime"] = self.last_transition_time
        return out


@dataclass(frozen=True)
class GatewayStatus:
    nodes: tuple[NodeInfo, ...] = ()
    active_endpoints: tuple[Endpoint, ...] = ()
    conditions: tuple[Condition, ...] = ()
    node_count: int | None = None  # our optional addition: len(nodes), for `kubectl get gw`
    extra: FrozenMap = EMPTY

    @property
    def tunnel_names(self) -> tuple[str, ...]:
        """Node names of the active tunnel endpoints, in status order."""
        return tuple(e.node_name for e in self.active_endpoints if e.type == TUNNEL)


@dataclass(frozen=True)
class Gateway:
    """A Gateway custom resource: one node pool."""

    name: str
    spec: GatewaySpec = GatewaySpec()
    status: GatewayStatus = GatewayStatus()
    metadata: FrozenMap = EMPTY  # the whole metadata object as read (name included)
    extra: FrozenMap = EMPTY  # unknown top-level keys

    @property
    def subnets(self) -> tuple[str, ...]:
        """Every pod subnet of the pool (from status.nodes), canonical, sorted, unique."""
        return tuple(sorted({s for n in self.status.nodes for s in n.subnets}))

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(n.node_name for n in self.status.nodes)

    @staticmethod
    def from_k8s(obj: Mapping[str, Any]) -> Gateway:
        problems: list[str] = []
        gateway = _parse_gateway(obj, problems)
        if problems or gateway is None:
            raise ValidationError(problems or [f"{_label(obj)}: not a Gateway object"])
        return gateway

    def to_k8s(self, api_version: str = V1BETA1) -> dict[str, Any]:
        if api_version not in API_VERSIONS:
            raise ValueError(
                f"unknown Gateway apiVersion {api_version!r}; use one of {API_VERSIONS}"
            )
        out = self.extra.to_dict()
        metadata = self.metadata.to_dict()
        metadata["name"] = self.name
        out.update(apiVersion=api_version, kind=constants.GATEWAY_KIND, metadata=metadata)
        spec = self.spec.extra.to_dict()
        if self.spec.node_selector is not None:
            spec["nodeSelector"] = self.spec.node_selector.to_dict()
        if api_version == V1BETA1:
            if self.spec.proxy_config is not None:
                spec["proxyConfig"] = self.spec.proxy_config.to_k8s()
            if self.spec.tunnel_config is not None:
                spec["tunnelConfig"] = self.spec.tunnel_config.to_k8s()
        if self.spec.endpoints:
            spec["endpoints"] = [e.to_k8s(api_version) for e in self.spec.endpoints]
        if self.spec.expose_type:
            spec["exposeType"] = self.spec.expose_type
        out["spec"] = spec
        status = self.status.extra.to_dict()
        if self.status.nodes:
            status["nodes"] = [n.to_k8s() for n in self.status.nodes]
        if api_version == V1BETA1:
            if self.status.active_endpoints:
                status["activeEndpoints"] = [e.to_k8s() for e in self.status.active_endpoints]
        elif self.status.active_endpoints:
            status["activeEndpoint"] = self.status.active_endpoints[0].to_k8s(V1ALPHA1)
        if self.status.conditions:
            status["conditions"] = [c.to_k8s() for c in self.status.conditions]
        if self.status.node_count is not None:
            status["nodeCount"] = self.status.node_count
        if status:
            out["status"] = status
        return out


@dataclass(frozen=True)
class Node:
    """The facts of a Kubernetes Node that the overlay needs."""

    name: str
    internal_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    labels: FrozenMap = EMPTY
    annotations: FrozenMap = EMPTY
    ready: bool = True
    raw: FrozenMap = field(default=EMPTY, compare=False)  # the object as read, for round trips

    @property
    def internal_ip(self) -> str:
        """The first InternalIP (IPv4 preferred): the VXLAN underlay address."""
        return _first_v4(self.internal_ips)

    @property
    def external_ip(self) -> str:
        return _first_v4(self.external_ips)

    @property
    def gateway(self) -> str | None:
        """The Gateway (pool) this node is labelled into, if any."""
        value = self.labels.get(constants.GATEWAY_LABEL)
        return str(value) if value else None

    @property
    def public_key(self) -> str:
        return str(self.annotations.get(constants.ANNOTATION_PUBLIC_KEY, ""))

    @property
    def public_address(self) -> str:
        return str(self.annotations.get(constants.ANNOTATION_PUBLIC_ADDRESS, ""))

    @staticmethod
    def from_k8s(obj: Mapping[str, Any]) -> Node:
        problems: list[str] = []
        node = _parse_node(obj, problems)
        if problems or node is None:
            raise ValidationError(problems or ["not a Node object"])
        return node

    def to_k8s(self) -> dict[str, Any]:
        out = self.raw.to_dict()
        out.setdefault("apiVersion", "v1")
        out.setdefault("kind", "Node")
        metadata = out.setdefault("metadata", {})
        metadata["name"] = self.name
        if self.labels:
            metadata["labels"] = self.labels.to_dict()
        else:
            metadata.pop("labels", None)
        if self.annotations:
            metadata["annotations"] = self.annotations.to_dict()
        else:
            metadata.pop("annotations", None)
        spec = out.setdefault("spec", {})
        if self.pod_cidrs:
            spec["podCIDR"] = self.pod_cidrs[0]
            spec["podCIDRs"] = list(self.pod_cidrs)
        else:
            spec.pop("podCIDR", None)
            spec.pop("podCIDRs", None)
        status = out.setdefault("status", {})
        other = [
            a for a in status.get("addresses", [])
            if isinstance(a, dict) and a.get("type") not in ("InternalIP", "ExternalIP")
        ]
        status["addresses"] = (
            [{"type": "InternalIP", "address": ip} for ip in self.internal_ips]
            + [{"type": "ExternalIP", "address": ip} for ip in self.external_ips]
            + other
        )
        conditions = [
            c for c in status.get("conditions", [])
            if isinstance(c, dict) and c.get("type") != "Ready"
        ]
        conditions.append({"type": "Ready", "status": "True" if self.ready else "False"})
        status["conditions"] = conditions
        return out


@dataclass(frozen=True)
class Network:
    """What the planner sees: every Gateway and the Node facts it knows, sorted by name."""

    gateways: tuple[Gateway, ...] = ()
    nodes: tuple[Node, ...] = ()

    @staticmethod
    def of(gateways: Iterable[Gateway], nodes: Iterable[Node] = ()) -> Network:
        return Network(
            tuple(sorted(gateways, key=lambda g: g.name)),
            tuple(sorted(nodes, key=lambda n: n.name)),
        )

    def gateway(self, name: str) -> Gateway | None:
        return next((g for g in self.gateways if g.name == name), None)

    def pool_of(self, node_name: str) -> Gateway | None:
        """The first Gateway (by name) whose status.nodes lists `node_name`."""
        return next((g for g in self.gateways if node_name in g.member_names), None)


# --------------------------------------------------------------------------------------------
# Parsing (structural problems are collected with their field paths)


def _label(obj: Any) -> str:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"Gateway {name}" if isinstance(name, str) and name else "Gateway (unnamed)"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a map"}.get(type(value), type(value).__name__)


class _Reader:
    """Reads typed fields of one object, recording a problem for each wrong type."""

    def __init__(self, label: str, problems: list[str]) -> None:
        self.label = label
        self.problems = problems

    def problem(self, path: str, text: str) -> None:
        self.problems.append(f"{self.label}: {path}: {text}")

    def map(self, obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(f"{path}{key}", f"is {_type_name(value)}; it must be a map (object)")
            return None
        return value

    def list(self, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(f"{path}{key}", f"is {_type_name(value)}; it must be a list")
            return []
        return value

    def str(self, obj: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(f"{path}{key}", f"{json.dumps(value)} is {_type_name(value)}; "
                                         "it must be a string (quote it in YAML)")
            return default
        return value

    def int(self, obj: Mapping[str, Any], key: str, path: str, lo: int, hi: int | None) -> int:
        value = obj.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{path}{key}", f"{json.dumps(value)} is {_type_name(value)}; "
                                         "it must be an integer")
            return 0
        if value < lo or (hi is not None and value > hi):
            valid = f"between {lo} and {hi}" if hi is not None else f"{lo} or more"
            self.problem(f"{path}{key}", f"{value} is out of range; use an integer {valid}")
            return 0
        return value

    def bool(self, obj: Mapping[str, Any], key: str, path: str) -> bool:
        value = obj.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.problem(f"{path}{key}", f"{json.dumps(value)} is {_type_name(value)}; "
                                         "it must be true or false")
            return False
        return value

    def str_map(self, obj: Mapping[str, Any], key: str, path: str) -> FrozenMap:
        value = self.map(obj, key, path)
        if value is None:
            return EMPTY
        good = {}
        for k, v in value.items():
            if not isinstance(v, str):
                self.problem(f"{path}{key}.{k}", f"{json.dumps(v)} is {_type_name(v)}; "
                                                 "every value must be a string (quote it in YAML)")
            else:
                good[str(k)] = v
        return FrozenMap(good)


def _extra(obj: Mapping[str, Any], known: Iterable[str]) -> FrozenMap:
    """The keys of `obj` not in `known` (a tuple or set of field names), for round trips."""
    unknown = {k: v for k, v in obj.items() if k not in known}
    return FrozenMap(unknown) if unknown else EMPTY


_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_ENDPOINT_KEYS = frozenset(("nodeName", "type", "port", "underNAT", "natType", "publicIP",
                            "publicPort", "config"))
_ALPHA_ENDPOINT_KEYS = frozenset(("nodeName", "underNAT", "natType", "publicIP", "publicPort",
                                  "config", "proxyType"))
_NODE_INFO_KEYS = frozenset(("nodeName", "privateIP", "subnets"))


def _parse_endpoint(raw: Any, path: str, r: _Reader, alpha: bool) -> Endpoint | None:
    if not isinstance(raw, Mapping):
        r.problem(path, f"is {_type_name(raw)}; each endpoint must be a map with nodeName and type")
        return None
    p = f"{path}."
    if alpha:
        # OpenYurt converts every v1alpha1 endpoint to a tunnel on the default tunnel port.
        ep_type, port = TUNNEL, DEFAULT_TUNNEL_PORT
        extra = _extra(raw, _ALPHA_ENDPOINT_KEYS)
    else:
        ep_type = r.str(raw, "type", p)
        port = r.int(raw, "port", p, 0, 65535)
        extra = _extra(raw, _ENDPOINT_KEYS)
    return Endpoint(
        node_name=r.str(raw, "nodeName", p),
        type=ep_type,
        port=port,
        under_nat=r.bool(raw, "underNAT", p),
        nat_type=r.str(raw, "natType", p),
        public_ip=r.str(raw, "publicIP", p),
        public_port=r.int(raw, "publicPort", p, 0, 65535),
        config=r.str_map(raw, "config", p),
        extra=extra,
    )


def _parse_node_info(raw: Any, path: str, r: _Reader) -> NodeInfo | None:
    if not isinstance(raw, Mapping):
        r.problem(path, f"is {_type_name(raw)}; each entry must be a map with nodeName, "
                        "privateIP and subnets")
        return None
    # Fast path: the exact shape the controller writes (thousands of these per fleet).
    name, ip, listed = raw.get("nodeName"), raw.get("privateIP"), raw.get("subnets")
    if (len(raw) == 3 and type(name) is str and type(ip) is str and type(listed) is list
            and all(type(s) is str for s in listed)):
        return NodeInfo(name, ip, tuple(listed))
    p = f"{path}."
    subnets = []
    for i, s in enumerate(r.list(raw, "subnets", p)):
        if not isinstance(s, str):
            r.problem(f"{p}subnets[{i}]", f"{json.dumps(s)} is {_type_name(s)}; use a CIDR string")
        else:
            subnets.append(s)
    return NodeInfo(
        node_name=r.str(raw, "nodeName", p),
        private_ip=r.str(raw, "privateIP", p),
        subnets=tuple(subnets),
        extra=_extra(raw, _NODE_INFO_KEYS),
    )


def _parse_condition(raw: Any, path: str, r: _Reader) -> Condition | None:
    if not isinstance(raw, Mapping):
        r.problem(path, f"is {_type_name(raw)}; each condition must be a map with type and status")
        return None
    p = f"{path}."
    return Condition(
        type=r.str(raw, "type", p), status=r.str(raw, "status", p),
        reason=r.str(raw, "reason", p), message=r.str(raw, "message", p),
        last_transition_time=r.str(raw, "lastTransitionTime", p),
        extra=_extra(raw, ("type", "status", "reason", "message", "lastTransitionTime")),
    )


def _parse_gateway(obj: Any, problems: list[str]) -> Gateway | None:
    label = _label(obj)
    r = _Reader(label, problems)
    if not isinstance(obj, Mapping):
        r.problems.append(f"{label}: the document is {_type_name(obj)}; a Gateway must be a map "
                          "with apiVersion, kind, metadata and spec")
        return None
    api_version = obj.get("apiVersion")
    if api_version not in API_VERSIONS:
        r.problem("apiVersion", f"{json.dumps(api_version)} is not a Gateway version; use "
                                f"{V1BETA1} (or {V1ALPHA1})")
    if obj.get("kind") != constants.GATEWAY_KIND:
        r.problem("kind", f"{json.dumps(obj.get('kind'))} is not {constants.GATEWAY_KIND!r}; "
                          f"use kind: {constants.GATEWAY_KIND}")
    alpha = api_version == V1ALPHA1
    metadata = r.map(obj, "metadata", "") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        r.problem("metadata.name", "is missing; give the Gateway a name (a DNS-1123 subdomain)")
        name = ""
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        r.problem("metadata.name", f"{json.dumps(name)} is not a DNS-1123 subdomain; use "
                                   "lower-case letters, digits, '-' and '.', starting and ending "
                                   "with a letter or digit")
    spec_raw = r.map(obj, "spec", "") or {}
    endpoints = tuple(
        e for i, raw in enumerate(r.list(spec_raw, "endpoints", "spec."))
        if (e := _parse_endpoint(raw, f"spec.endpoints[{i}]", r, alpha)) is not None
    )
    node_selector = r.map(spec_raw, "nodeSelector", "spec.")
    if alpha:
        # v1alpha1 has no proxy/tunnel config: OpenYurt's conversion sets both replicas to 1.
        proxy: ProxyConfig | None = ProxyConfig(replicas=1)
        tunnel: TunnelConfig | None = TunnelConfig(replicas=1)
        spec_known = ("nodeSelector", "endpoints", "exposeType", "EnableServerProxy",
                      "EnableNetworkProxy", "Replicas")
    else:
        proxy = tunnel = None
        proxy_raw = r.map(spec_raw, "proxyConfig", "spec.")
        if proxy_raw is not None:
            proxy = ProxyConfig(
                replicas=r.int(proxy_raw, "Replicas", "spec.proxyConfig.", 0, None),
                http_port=r.str(proxy_raw, "proxyHTTPPort", "spec.proxyConfig."),
                https_port=r.str(proxy_raw, "proxyHTTPSPort", "spec.proxyConfig."),
                extra=_extra(proxy_raw, ("Replicas", "proxyHTTPPort", "proxyHTTPSPort")),
            )
        tunnel_raw = r.map(spec_raw, "tunnelConfig", "spec.")
        if tunnel_raw is not None:
            tunnel = TunnelConfig(
                replicas=r.int(tunnel_raw, "Replicas", "spec.tunnelConfig.", 0, None),
                extra=_extra(tunnel_raw, ("Replicas",)),
            )
        spec_known = ("nodeSelector", "proxyConfig", "tunnelConfig", "endpoints", "exposeType")
    spec = GatewaySpec(
        node_selector=FrozenMap(node_selector) if node_selector is not None else None,
        proxy_config=proxy,
        tunnel_config=tunnel,
        endpoints=endpoints,
        expose_type=r.str(spec_raw, "exposeType", "spec."),
        extra=_extra(spec_raw, spec_known),
    )
    status_raw = r.map(obj, "status", "") or {}
    nodes = tuple(
        n for i, raw in enumerate(r.list(status_raw, "nodes", "status."))
        if (n := _parse_node_info(raw, f"status.nodes[{i}]", r)) is not None
    )
    if alpha:
        single = status_raw.get("activeEndpoint")
        active = ()
        if single is not None:
            ep = _parse_endpoint(single, "status.activeEndpoint", r, alpha=True)
            active = (ep,) if ep is not None else ()
        status_known: tuple[str, ...] = ("nodes", "activeEndpoint", "conditions", "nodeCount")
    else:
        active = tuple(
            e for i, raw in enumerate(r.list(status_raw, "activeEndpoints", "status."))
            if (e := _parse_endpoint(raw, f"status.activeEndpoints[{i}]", r, alpha)) is not None
        )
        status_known = ("nodes", "activeEndpoints", "conditions", "nodeCount")
    conditions = tuple(
        c for i, raw in enumerate(r.list(status_raw, "conditions", "status."))
        if (c := _parse_condition(raw, f"status.conditions[{i}]", r)) is not None
    )
    node_count = (r.int(status_raw, "nodeCount", "status.", 0, None)
                  if status_raw.get("nodeCount") is not None else None)
    status = GatewayStatus(
        nodes=nodes, active_endpoints=active, conditions=conditions, node_count=node_count,
        extra=_extra(status_raw, status_known),
    )
    return Gateway(
        name=name, spec=spec, status=status, metadata=FrozenMap(metadata),
        extra=_extra(obj, ("apiVersion", "kind", "metadata", "spec", "status")),
    )


def _parse_node(obj: Any, problems: list[str]) -> Node | None:
    if not isinstance(obj, Mapping):
        problems.append(f"Node: the document is {_type_name(obj)}; a Node must be a map")
        return None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    name = metadata.get("name")
    label = f"Node {name}" if isinstance(name, str) and name else "Node (unnamed)"
    r = _Reader(label, problems)
    if not isinstance(name, str) or not name:
        r.problem("metadata.name", "is missing; every Node has a name")
        name = ""
    spec = r.map(obj, "spec", "") or {}
    status = r.map(obj, "status", "") or {}
    cidrs: list[str] = []
    for i, c in enumerate(r.list(spec, "podCIDRs", "spec.")):
        if isinstance(c, str):
            cidrs.append(c)
        else:
            r.problem(f"spec.podCIDRs[{i}]", f"{json.dumps(c)} is not a CIDR string")
    single = r.str(spec, "podCIDR", "spec.")
    if single and single not in cidrs:
        cidrs.insert(0, single)
    internal: list[str] = []
    external: list[str] = []
    for i, a in enumerate(r.list(status, "addresses", "status.")):
        if not isinstance(a, Mapping):
            r.problem(f"status.addresses[{i}]", "must be a map with type and address")
            continue
        if a.get("type") == "InternalIP" and isinstance(a.get("address"), str):
            internal.append(a["address"])
        elif a.get("type") == "ExternalIP" and isinstance(a.get("address"), str):
            external.append(a["address"])
    ready = False
    for c in r.list(status, "conditions", "status."):
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            ready = c.get("status") == "True"
    return Node(
        name=name,
        internal_ips=tuple(internal),
        external_ips=tuple(external),
        pod_cidrs=tuple(cidrs),
        labels=r.str_map(metadata, "labels", "metadata."),
        annotations=r.str_map(metadata, "annotations", "metadata."),
        ready=ready,
        raw=FrozenMap(obj),
    )


def _first_v4(ips: Sequence[str]) -> str:
    for ip in ips:
        if _is_ipv4(ip):
            return ip
    return ips[0] if ips else ""


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Conversion


def _normalise_version(version: str) -> str:
    if version in API_VERSIONS:
        return version
    full = f"{constants.API_GROUP}/{version}"
    if full in API_VERSIONS:
        return full
    raise ValidationError([f"cannot convert a Gateway to {version!r}; use one of "
                           f"{', '.join(API_VERSIONS)}"])


def convert_gateway(obj: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """Convert one Gateway object between v1alpha1 and v1beta1 (OpenYurt's conversion).

    `to_version` is `raven.openyurt.io/v1beta1` or `v1beta1` (same for v1alpha1). Converting to
    the version the object already has returns an unchanged copy. Raises `ValidationError` when
    the object cannot be read.
    """
    target = _normalise_version(to_version)
    if obj.get("apiVersion") == target:
        return copy.deepcopy(dict(obj))
    return Gateway.from_k8s(obj).to_k8s(target)


# --------------------------------------------------------------------------------------------
# Validation


def _ip_problem(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return True
    return False


def gateway_problems(obj: Any) -> list[str]:
    """Every problem of one Gateway object; an empty list means it is valid.

    Structural problems (wrong JSON types) first, then OpenYurt's admission rules (except its cap
    of one tunnel replica: we allow more), then ours (duplicate endpoints, bad status entries).
    """
    problems: list[str] = []
    gateway = _parse_gateway(obj, problems)
    if gateway is None:
        return problems
    label = _label(obj)
    spec = gateway.spec

    def add(path: str, text: str) -> None:
        problems.append(f"{label}: {path}: {text}")

    if spec.expose_type not in EXPOSE_TYPES:
        add("spec.exposeType", f"{json.dumps(spec.expose_type)} is not an expose type; use "
                               f"{EXPOSE_PUBLIC_IP}, {EXPOSE_LOAD_BALANCER} or leave it empty")
    nat_reference = spec.endpoints[0].under_nat if spec.endpoints else False
    seen: dict[tuple[str, str], int] = {}
    for i, ep in enumerate(spec.endpoints):
        path = f"spec.endpoints[{i}]"
        if not ep.node_name:
            add(f"{path}.nodeName", "is empty; name the node that hosts this endpoint")
        if ep.type not in ENDPOINT_TYPES:
            add(f"{path}.type", f"{json.dumps(ep.type)} is not an endpoint type; use "
                                f"{TUNNEL} or {PROXY}")
        if ep.public_ip and _ip_problem(ep.public_ip):
            add(f"{path}.publicIP", f"{json.dumps(ep.public_ip)} is not an IP address; use an "
                                    "IPv4 or IPv6 address or leave it empty")
        if ep.under_nat != nat_reference:
            add(f"{path}.underNAT", f"is {str(ep.under_nat).lower()} but spec.endpoints[0] says "
                                    f"{str(nat_reference).lower()}; every endpoint of a Gateway "
                                    "must agree on underNAT (they share one network)")
        if spec.expose_type in (EXPOSE_PUBLIC_IP, EXPOSE_LOAD_BALANCER) and ep.under_nat:
            add(f"{path}.underNAT", f"is true but the Gateway is exposed (exposeType "
                                    f"{spec.expose_type}); set underNAT to false or clear "
                                    "exposeType")
        key = (ep.node_name, ep.type)
        if ep.node_name and key in seen:
            add(f"{path}", f"node {ep.node_name!r} is already a {ep.type} endpoint at "
                           f"spec.endpoints[{seen[key]}]; list each node once per type")
        else:
            seen.setdefault(key, i)
    if spec.proxy_config is not None and spec.proxy_config.replicas > 1:
        proxies = sum(1 for e in spec.endpoints if e.type == PROXY)
        if spec.proxy_config.replicas > proxies:
            add("spec.proxyConfig.Replicas",
                f"{spec.proxy_config.replicas} is more than the {proxies} proxy endpoint(s) in "
                "spec.endpoints; lower it or add proxy endpoints")
    for i, info in enumerate(gateway.status.nodes):
        path = f"status.nodes[{i}]"
        if not info.node_name:
            add(f"{path}.nodeName", "is empty; name the member node")
        if info.private_ip and _ip_problem(info.private_ip):
            add(f"{path}.privateIP", f"{json.dumps(info.private_ip)} is not an IP address; use "
                                     "the node's InternalIP")
        for j, subnet in enumerate(info.subnets):
            try:
                ipaddress.ip_network(subnet, strict=True)
            except ValueError:
                example = "fd00:10:244:1::/64" if ":" in subnet else "10.244.1.0/24"
                add(f"{path}.subnets[{j}]", f"{json.dumps(subnet)} is not a CIDR network; use "
                                            f"e.g. {example} (host bits zero)")
    for i, ep in enumerate(gateway.status.active_endpoints):
        if ep.public_ip and _ip_problem(ep.public_ip):
            add(f"status.activeEndpoints[{i}].publicIP",
                f"{json.dumps(ep.public_ip)} is not an IP address; use an IPv4 or IPv6 address "
                "or leave it empty")
    return problems


def _networks(subnets: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for s in subnets:
        try:
            out.append(ipaddress.ip_network(s, strict=False))
        except ValueError:
            continue  # reported by gateway_problems
    return out


def fleet_problems(
    gateways: Sequence[Gateway], nodes: Sequence[Node] = (), *, nodes_complete: bool = True
) -> list[str]:
    """Problems across Gateways: a node claimed by two pools, pod subnets overlapping between pools,
    and (when `nodes` is given and `nodes_complete`, i.e. it is every Node of the cluster)
    endpoints naming nodes that do not exist."""
    problems: list[str] = []
    ordered = sorted(gateways, key=lambda g: g.name)
    claims: dict[str, list[tuple[str, str]]] = {}
    for gw in ordered:
        for i, ep in enumerate(gw.spec.endpoints):
            if ep.node_name:
                claims.setdefault(ep.node_name, []).append((gw.name, f"spec.endpoints[{i}]"))
        for i, info in enumerate(gw.status.nodes):
            if info.node_name:
                claims.setdefault(info.node_name, []).append((gw.name, f"status.nodes[{i}]"))
    for node in sorted(nodes, key=lambda n: n.name):
        if node.gateway:
            claims.setdefault(node.name, []).append((node.gateway, "label"))
    for node_name, where in sorted(claims.items()):
        pools = sorted({g for g, _ in where})
        if len(pools) > 1:
            first = pools[0]
            for gw_name in pools[1:]:
                paths = ", ".join(p for g, p in where if g == gw_name)
                problems.append(
                    f"Gateway {gw_name}: {paths}: node {node_name!r} also belongs to Gateway "
                    f"{first}; a node can be in one pool only (fix the endpoints or the node "
                    f"label {constants.GATEWAY_LABEL})"
                )
    pool_subnets: dict[str, set[str]] = {gw.name: set(gw.subnets) for gw in ordered}
    for node in nodes:
        if node.gateway in pool_subnets:
            pool_subnets[node.gateway].update(node.pod_cidrs)
    # CIDRs are nested or disjoint: sorted by start address (larger first on a tie), a network
    # overlaps an earlier one exactly when it starts inside the widest one still open.
    entries = sorted(
        ((net.version, int(net.network_address), -net.prefixlen, str(net), pool), net)
        for pool, subnets in pool_subnets.items() for net in _networks(subnets)
    )
    cover: tuple[str, Any] | None = None
    reported: set[tuple[str, str, str, str]] = set()
    for (version, start, _, text, pool), net in entries:
        if cover is not None:
            cover_pool, cover_net = cover
            if (cover_net.version == version and start <= int(cover_net.broadcast_address)):
                key = (pool, text, cover_pool, str(cover_net))
                if cover_pool != pool and key not in reported:
                    reported.add(key)
                    first, second = sorted([(cover_pool, str(cover_net)), (pool, text)])
                    problems.append(
                        f"Gateway {second[0]}: status.nodes subnets: {second[1]} overlaps "
                        f"{first[1]} of Gateway {first[0]}; pod subnets of different pools must "
                        "not overlap (give the nodes distinct podCIDRs)"
                    )
                continue
        cover = (pool, net)
    if nodes and nodes_complete:
        known = {n.name for n in nodes}
        for gw in ordered:
            for i, ep in enumerate(gw.spec.endpoints):
                if ep.node_name and ep.node_name not in known:
                    problems.append(f"Gateway {gw.name}: spec.endpoints[{i}].nodeName: no node "
                                    f"named {ep.node_name!r}; name an existing node")
    return problems
