"""The settings root: one frozen dataclass per section, each default defined exactly once.

Sections:
- `OverlaySettings`: what every node of a cluster must agree on (device names, VNI, ports, route
  tables, rule priority, firewall mark, nftables table, encapsulation overheads, MTU, keepalive).
  The planner (`raven.topology`) and the data plane (`raven.dataplane`) both read it from here,
  so `apply()` and `cleanup()` can never disagree about which objects are ours.
- `AgentSettings`: the node agent's knobs (state directory, periods, listen addresses); it
  carries the `OverlaySettings` it plans with.
- `DataplaneSettings`: the data plane of one node (namespace, state directory, WireGuard
  backend); it carries the `OverlaySettings` whose names it programs. `raven.dataplane`
  re-exports it (the same class): the section is plain values, the kernel work stays there.
- `LeaderSettings`, `ControllerSettings`: the gateway controller's knobs.
- `LabSettings`: the network-namespace lab's daemons and waits (`raven.lab.cluster` calls it
  `ClusterSettings`).
- `ApiServerSettings`: the embedded API server (`raven apiserver`); `raven.apiserver.settings`
  re-exports it (the same class), and a bad value raises `ApiServerError` when it is made.
- `RavenSettings`: the root that composes them; `DEFAULTS` is the one default instance.

Rules kept:
- a default is written once, here; the CLI takes its argparse defaults and the "(default ...)"
  of its help text from these dataclasses (`help_for`), and tests check that the shipped
  manifests' flags agree with them;
- every field that a flag sets has its help text in the field's metadata ("help"), next to
  the default it explains;
- `*_problems()` validate a section and return sentences naming the flag and the fix; they
  never raise, so a command can report every problem at once;
- pure: no I/O (the controller's identity default, which needs the hostname, is resolved by
  the controller, not here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from raven import constants
from raven.election import ElectionOptions
from raven.errors import ApiServerError, DataplaneError
from raven.failover import ProbeSettings

# An overlay packet must still carry a minimal IPv4 packet (RFC 791: 576 bytes) after the
# WireGuard encapsulation, the larger of the two overheads; below IPv6's minimum link MTU (1280,
# RFC 8200) cross-pool IPv6 pod traffic cannot pass, which `overlay_warnings` says.
MIN_INNER_MTU_IPV4 = 576
MIN_INNER_MTU_IPV6 = 1280
MAX_UNDERLAY_MTU = 65535  # the largest MTU Linux accepts on any link
DEFAULT_STATE_DIR = Path("/var/lib/raven")  # the agent's key, input cache, status, wireguard-go
WIREGUARD_BACKENDS = ("auto", "kernel", "userspace")  # auto: the kernel module if it loads
DEFAULT_WIREGUARD_BACKEND = "auto"
DEFAULT_WIREGUARD_GO = "wireguard-go"  # the userspace backend's binary (looked up on $PATH)
DEFAULT_APISERVER_DATA_DIR = Path("/var/lib/raven-apiserver")  # `raven apiserver --data-dir`
DEFAULT_NODE_GRACE = 40.0  # kube-controller-manager --node-monitor-grace-period (lab kubelet)
# Ports written once here; the shipped manifests use them (tests/unit/test_settings_defaults.py).
PROXY_SERVER_PORT = 10263  # a proxy server's server-facing (CONNECT) port (OpenYurt's default)
AGENT_METRICS_PORT = 10265  # the DaemonSet serves the agent's health and metrics on it
CONTROLLER_METRICS_PORT = 10266  # the Deployment serves the controller's on it


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with its flag's help text beside its default."""
    return field(default=default, metadata={"help": help})


def default_of(section: Any, name: str) -> Any:
    """The default of field `name` of a settings dataclass (class or instance)."""
    for f in fields(section):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    raise KeyError(f"{section.__name__ if isinstance(section, type) else section}: no "
                   f"setting {name!r}")


@dataclass(frozen=True)
class BackoffSettings:
    initial: float = 0.2  # seconds before the first retry
    maximum: float = 10.0  # never wait longer than this between two attempts
    factor: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised (0 = none)

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        """Delay before retry number `attempt` (0-based); `rng` gives the jitter in [0, 1)
        (a parameter, so this stays pure and the sequence is testable)."""
        base = min(self.maximum, self.initial * (self.factor ** max(0, attempt)))
        return base * (1.0 - self.jitter) + base * self.jitter * rng()


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: Path | None = None  # None: $KUBECONFIG, then in-cluster, then ~/.kube/config
    context: str | None = None
    request_timeout: float = 10.0  # seconds, per request (connect and read)
    watch_timeout: int = 60  # server-side timeoutSeconds of one watch request
    backoff: BackoffSettings = field(default_factory=BackoffSettings)
    user_agent: str = "raven"


@dataclass(frozen=True)
class OverlaySettings:
    """The cluster-wide names and numbers of the overlay; defaults are Raven's (raven.constants)."""

    vxlan_device: str = constants.VXLAN_DEVICE
    vxlan_vni: int = constants.VXLAN_VNI
    vxlan_port: int = constants.VXLAN_PORT
    vxlan_table: int = constants.VXLAN_TABLE
    wireguard_device: str = constants.WIREGUARD_DEVICE
    wireguard_port: int = constants.WIREGUARD_PORT
    wireguard_table: int = constants.WIREGUARD_TABLE
    rule_priority: int = constants.RULE_PRIORITY
    fwmark: int = constants.FWMARK
    nft_table: str = constants.NFT_TABLE
    vxlan_overhead: int = constants.VXLAN_OVERHEAD
    wireguard_overhead: int = constants.WIREGUARD_OVERHEAD
    underlay_mtu: int = _opt(constants.DEFAULT_UNDERLAY_MTU, "MTU of the node's underlay link")
    keepalive: int = constants.DEFAULT_KEEPALIVE_SECONDS
    # The tunnel-namespace shape of active gateways (docs/tunnel-namespace.md). The planner's
    # switch, off for a plain planner (no namespace name to plan for); the agent, whose default
    # is on, sets it from its --tunnel-netns, `raven plan` from its --tunnel-namespace.
    tunnel_namespace: bool = False
    tunnel_veth: str = constants.TUNNEL_VETH
    tunnel_veth_peer: str = constants.TUNNEL_VETH_PEER
    tunnel_veth_subnet: str = constants.TUNNEL_VETH_SUBNET

    @property
    def vxlan_mtu(self) -> int:
        return self.underlay_mtu - self.vxlan_overhead

    @property
    def tunnel_mtu(self) -> int:
        return self.underlay_mtu - self.wireguard_overhead

    @property
    def tables(self) -> tuple[int, ...]:
        """Every policy-routing table the overlay owns."""
        return (self.vxlan_table, self.wireguard_table)

    @property
    def min_underlay_mtu(self) -> int:
        return MIN_INNER_MTU_IPV4 + max(self.vxlan_overhead, self.wireguard_overhead)


def overlay_problems(s: OverlaySettings) -> list[str]:
    lowest = s.min_underlay_mtu
    if not lowest <= s.underlay_mtu <= MAX_UNDERLAY_MTU:
        return [f"--underlay-mtu {s.underlay_mtu}: out of range; use {lowest} to "
                f"{MAX_UNDERLAY_MTU} (after the {max(s.vxlan_overhead, s.wireguard_overhead)}-"
                f"byte tunnel overhead a pod packet must still hold {MIN_INNER_MTU_IPV4} bytes)"]
    return []


def overlay_warnings(s: OverlaySettings) -> list[str]:
    inner = min(s.vxlan_mtu, s.tunnel_mtu)
    if inner < MIN_INNER_MTU_IPV6:
        return [f"--underlay-mtu {s.underlay_mtu}: tunnel MTU {inner} is below IPv6's minimum "
                f"{MIN_INNER_MTU_IPV6}; IPv6 pod traffic cannot cross the overlay (use at least "
                f"{MIN_INNER_MTU_IPV6 + max(s.vxlan_overhead, s.wireguard_overhead)})"]
    return []


@dataclass(frozen=True)
class ProxySettings:
    """The agent's cloud-to-edge proxy component (docs/proxy.md); it runs only on nodes elected
    as active proxy endpoints."""

    enabled: bool = _opt(True, "run the proxy server/client when this node is an active proxy "
                         "endpoint")
    server_port: int = _opt(PROXY_SERVER_PORT, "server-facing (CONNECT) port of a proxy "
                            "server, on the node's InternalIP")
    ca_file: Path | None = field(default=None, metadata={
        "help": "cluster proxy CA certificate (PEM); default: Secret kube-system/raven-proxy-ca"})
    ca_key_file: Path | None = field(default=None,
                                     metadata={"help": "key of --proxy-ca-file (PEM)"})
    cert_lifetime: float = _opt(86400.0, "seconds a proxy certificate is valid; renewed after "
                                "two thirds")
    keepalive: float = _opt(10.0, "seconds between PINGs on a proxy connection; dropped after "
                            "two missed")
    dial_timeout: float = 5.0  # TLS handshake, CONNECT head, dial of a kubelet
    max_streams: int = 1000  # concurrent streams one proxy connection carries


def proxy_problems(s: ProxySettings) -> list[str]:
    problems = []
    if not 0 < s.server_port < 65536:
        problems.append(f"--proxy-server-port {s.server_port}: use a port 1-65535")
    if (s.ca_file is None) != (s.ca_key_file is None):
        problems.append("--proxy-ca-file and --proxy-ca-key-file go together; pass both or "
                        "neither (then the Secret kube-system/raven-proxy-ca is read)")
    if not s.cert_lifetime >= 10:
        problems.append(f"--proxy-cert-lifetime {s.cert_lifetime:g}: at least 10 seconds")
    if not s.keepalive > 0:
        problems.append(f"--proxy-keepalive {s.keepalive:g}: must be a positive number")
    return problems


@dataclass(frozen=True)
class AgentSettings:
    """The node agent (`raven agent`)."""

    node: str = _opt("", "this node's name")
    state_dir: Path = field(default=DEFAULT_STATE_DIR,
                           metadata={"help": "keys, input cache and status"})
    kube: KubeSettings = field(default_factory=KubeSettings)
    netns: str | None = _opt(None, "program this named network namespace instead of our own "
                             "(labs)")
    tunnel_netns: str | None = _opt(
        constants.TUNNEL_NETNS, "as an active gateway, keep raven0 and raven-wg0 in this "
        "named network namespace, joined to the node's by a veth pair, so that no policy rule "
        "is needed (docs/tunnel-namespace.md; needs CAP_SYS_ADMIN and the host's /var/run/netns); "
        "'' keeps them in the node's namespace, where the node's firewall sees transit traffic")
    wireguard_backend: str = _opt(DEFAULT_WIREGUARD_BACKEND, "WireGuard backend: "
                                  f"{', '.join(WIREGUARD_BACKENDS[:-1])} or "
                                  f"{WIREGUARD_BACKENDS[-1]}")
    wireguard_go: str = _opt(DEFAULT_WIREGUARD_GO, "wireguard-go binary")
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    resync_period: float = _opt(30.0, "seconds between full re-applies without events "
                                "(repairs drift)")
    coalesce: float = 0.05  # wait this long after an event so a burst becomes one reconcile
    heartbeat_period: float = _opt(5.0, "seconds between heartbeat Lease renewals")
    heartbeat_duration: int = 15  # leaseDurationSeconds written on the heartbeat Lease
    stats_period: float = 10.0  # refresh per-peer metrics (handshake age, bytes) and drift
    metrics_port: int = AGENT_METRICS_PORT  # the port the DaemonSet serves health and metrics on
    metrics_listen: tuple[str, ...] = _opt(
        (), "serve /healthz /readyz /metrics here, HOST:PORT, repeatable; /status only on a "
        "loopback address; never a wildcard (0.0.0.0, ::). The DaemonSet passes "
        f"127.0.0.1:{AGENT_METRICS_PORT} and $(NODE_IP):{AGENT_METRICS_PORT}, the node's "
        "InternalIP")
    namespace: str = constants.RAVEN_NAMESPACE  # where heartbeat Leases live
    backoff: BackoffSettings = field(default_factory=BackoffSettings)
    # Data-path probes and the failover they decide inside the pool (raven.failover).
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)

    @property
    def plan(self) -> OverlaySettings:  # the name used before the settings root existed
        return self.overlay


@dataclass(frozen=True)
class DataplaneSettings:
    """The data plane of one node (`raven.dataplane.Dataplane`). The agent makes it from its
    own section (`AgentSettings`), whose defaults are these constants too.

    Rule kept: the overlay's names and numbers (device names, tables, nft table) are not
    redefined here: they come from `overlay` (shared with the planner), so `apply()` and
    `cleanup()` can never disagree about which objects are ours. A bad value is refused when
    the section is made (`DataplaneError`, from `dataplane_problems`)."""

    netns: str | None = None  # network namespace name (`ip netns`), None = the current one
    # The named namespace that holds raven0 and raven-wg0 when a plan has a tunnel part
    # (`NodeState.tunnel`, docs/tunnel-namespace.md); made and deleted by the data plane.
    tunnel_netns: str | None = None
    state_dir: Path = DEFAULT_STATE_DIR  # private key, wireguard-go pid file and log
    wireguard_backend: str = DEFAULT_WIREGUARD_BACKEND  # one of WIREGUARD_BACKENDS
    wireguard_go: str = DEFAULT_WIREGUARD_GO
    # None: wireguard-go's socket is /var/run/wireguard/<dev>.sock of our mount namespace.
    # A directory: wireguard-go runs in a private mount namespace with this directory on
    # /var/run/wireguard, so tests and labs never share sockets.
    wireguard_run_dir: Path | None = None
    # The cluster-wide names and numbers: device names, tables (`overlay.tables`), nft table.
    overlay: OverlaySettings = field(default_factory=OverlaySettings)

    def __post_init__(self) -> None:
        problems = dataplane_problems(self)
        if problems:
            raise DataplaneError("; ".join(problems))
        object.__setattr__(self, "state_dir", Path(self.state_dir))


def dataplane_problems(s: DataplaneSettings) -> list[str]:
    problems = []
    if s.wireguard_backend not in WIREGUARD_BACKENDS:
        problems.append(f"DataplaneSettings.wireguard_backend: {s.wireguard_backend!r} is not "
                        f"valid; use one of {', '.join(WIREGUARD_BACKENDS)}")
    if not isinstance(s.overlay, OverlaySettings):
        problems.append(
            f"DataplaneSettings.overlay: expected raven.settings.OverlaySettings, got "
            f"{type(s.overlay).__name__}; pass the OverlaySettings the planner uses")
    return problems


@dataclass(frozen=True)
class LeaderSettings:
    """Leader election of the controller replicas on one Lease (client-go's rules)."""

    name: str = constants.CONTROLLER_LEASE_NAME
    namespace: str = constants.RAVEN_NAMESPACE
    lease_duration: int = _opt(15, "seconds a leader lease is honoured without renewal")
    renew_period: float = _opt(5.0, "seconds between leader lease renewals")
    retry_period: float = _opt(2.0, "seconds between takeover attempts by a standby")


@dataclass(frozen=True)
class ControllerSettings:
    """The gateway controller (`raven controller`)."""

    kube: KubeSettings = field(default_factory=KubeSettings)
    identity: str = _opt("", "leader-election identity (empty: hostname-pid; the pod name in "
                         "Kubernetes)")
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    election: ElectionOptions = field(default_factory=ElectionOptions)
    resync_period: float = _opt(5.0, "seconds between full re-elections without events "
                                "(heartbeats go stale without events)")
    coalesce: float = 0.05  # wait this long after an event so a burst becomes one reconcile
    # target port of x-raven-proxy-internal-svc (docs/proxy.md): the proxy servers' own port
    proxy_server_port: int = PROXY_SERVER_PORT
    metrics_port: int = CONTROLLER_METRICS_PORT  # the Deployment serves health and metrics on it
    metrics_listen: tuple[str, ...] = _opt(
        (), "serve /healthz /readyz /metrics here, HOST:PORT, repeatable; /status only on a "
        f"loopback address; never a wildcard. The Deployment passes 127.0.0.1:"
        f"{CONTROLLER_METRICS_PORT} and $(POD_IP):{CONTROLLER_METRICS_PORT}")


@dataclass(frozen=True)
class LabSettings:
    """The network-namespace lab (`raven lab`): how it runs the daemons and how long it waits.
    The shipped defaults of the daemons, never faster ones: a lab measures what a cluster gets
    (failover is fast because agents decide it from data-path probes, not from these)."""

    heartbeat_period: float = default_of(AgentSettings, "heartbeat_period")  # Lease renewal
    heartbeat_timeout: float = ElectionOptions().heartbeat_timeout  # controller: dead after
    controller_resync: float = default_of(ControllerSettings, "resync_period")
    agent_resync: float = default_of(AgentSettings, "resync_period")
    node_grace: float = DEFAULT_NODE_GRACE  # kubelet stand-in: NotReady after this long down
    # The agents keep an active gateway's tunnel devices in a namespace of their own,
    # LAB.NODE-tun (docs/tunnel-namespace.md), as the shipped agent does; off: in the node's.
    tunnel_namespace: bool = bool(default_of(AgentSettings, "tunnel_netns"))
    wait_timeout: float = 180.0  # up(): all pairs must answer within this


@dataclass(frozen=True)
class ApiServerSettings:
    """Everything the API server needs to start.

    `port` 0 asks the kernel for a free port; the bound port is reported by the running server.
    `plain_http` serves without TLS and is refused unless `host` is a loopback address.
    """

    data_dir: Path = field(default=DEFAULT_APISERVER_DATA_DIR, metadata={
        "help": "directory for the database, TLS material, token and kubeconfig"})
    host: str = "127.0.0.1"
    port: int = 6443
    plain_http: bool = False
    extra_sans: tuple[str, ...] = ()
    # Older resourceVersions than the events kept get 410 Expired.
    watch_history: int = _opt(20000, "events kept for resuming watches")
    bookmark_interval: float = _opt(60.0, "seconds between watch bookmarks")
    # Watches without timeoutSeconds end after a random time in this range (like kube-apiserver).
    default_watch_timeout: tuple[float, float] = field(default=(1800.0, 3600.0))
    # A watcher with this many unsent bytes is disconnected (it re-watches or re-lists).
    watcher_backlog_bytes: int = 64 << 20
    max_body_bytes: int = _opt(3 << 20, "largest request body accepted (any framing); larger "
                               "ones get 413; kube-apiserver's is 3 MiB")
    # JSON/YAML bodies nested deeper than this are refused (400) before anything recurses on them.
    max_body_depth: int = 200
    # Bytes of request line and headers read per request; beyond them 431 and close (Go's
    # net/http DefaultMaxHeaderBytes). http.server alone allows 100 lines of 64 KiB: 6.4 MB held
    # per unauthenticated connection, several GB over max_connections.
    max_header_bytes: int = 1 << 20
    # Seconds a client has to send the request line and headers (TLS handshake included).
    header_timeout: float = 30.0
    # Seconds a client has to send a whole body once its headers are in.
    body_timeout: float = 60.0
    idle_timeout: float = _opt(90.0, "close a keep-alive connection idle this many seconds; "
                               "watches are never idle")
    # Seconds a response write may block on a client that does not read.
    write_timeout: float = 60.0
    max_connections: int = _opt(1024, "connections served at once (one thread each), watches "
                                "included; more are closed at accept")
    # --- kubelets (pods/log, pods/exec, pods/attach, nodes/proxy; raven.apiserver.nodedial)
    # CA that kubelet serving certificates must chain to; None: the cluster CA of the data dir.
    kubelet_ca: Path | None = None
    # Client certificate and key presented to kubelets (and egress proxies); None: made in the
    # data dir from the cluster CA (apiserver-kubelet-client.crt).
    kubelet_client_cert: Path | None = None
    kubelet_client_key: Path | None = None
    # Networks (CIDRs) node addresses must lie in to be dialled; empty: any unicast address
    # that is not link-local.
    kubelet_networks: tuple[str, ...] = ()
    kubelet_timeout: float = _opt(10.0, "seconds to connect (TCP, proxy CONNECT, TLS) to a "
                                  "kubelet or egress proxy before answering 503/502")
    # HTTP CONNECT proxies over TLS (HOST:PORT), tried in order, for the nodes `egress_selector`
    # selects (kube-apiserver's egress selector, HTTPConnect mode); empty: always direct.
    egress_proxies: tuple[str, ...] = ()
    # Label selector of the Nodes reached through the egress proxies; "" selects every node.
    egress_selector: str = ""
    # CA that egress proxy certificates must chain to; None: the cluster CA.
    egress_proxy_ca: Path | None = None
    # Raven's proxy (docs/proxy.md): nodes of NAT'd pools are reached through the proxy servers
    # the Gateway status names, with a client certificate issued from this CA (certificate and
    # key); None: not used. Checked before the egress proxies above.
    raven_proxy_ca: Path | None = None
    raven_proxy_ca_key: Path | None = None
    raven_proxy_port: int = _opt(PROXY_SERVER_PORT, "the proxy servers' server-facing port")

    def __post_init__(self) -> None:
        problems = apiserver_problems(self)
        if problems:
            raise ApiServerError("API server settings: " + "; ".join(problems))


def apiserver_problems(s: ApiServerSettings) -> list[str]:
    """Every problem of the section, naming the setting (`raven apiserver` names the flag)."""
    problems = []
    for name in ("watch_history", "max_body_bytes", "max_body_depth", "max_connections",
                 "max_header_bytes"):
        if getattr(s, name) < 1:
            problems.append(f"{name} must be at least 1 (got {getattr(s, name)})")
    for name in ("bookmark_interval", "header_timeout", "body_timeout", "idle_timeout",
                 "write_timeout"):
        if not getattr(s, name) > 0:
            problems.append(f"{name} must be more than 0 seconds (got {getattr(s, name)})")
    if not s.kubelet_timeout > 0:
        problems.append(f"kubelet_timeout must be more than 0 seconds "
                        f"(got {s.kubelet_timeout})")
    for cidr in s.kubelet_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"kubelet_networks: {cidr!r} is not a network (e.g. "
                            "198.18.0.0/15)")
    if (s.raven_proxy_ca is None) != (s.raven_proxy_ca_key is None):
        problems.append("raven_proxy_ca and raven_proxy_ca_key go together")
    if not 0 < s.raven_proxy_port < 65536:
        problems.append(f"raven_proxy_port must be a port number (got {s.raven_proxy_port})")
    if (s.kubelet_client_cert is None) != (s.kubelet_client_key is None):
        problems.append("kubelet_client_cert and kubelet_client_key go together")
    return problems


@dataclass(frozen=True)
class RavenSettings:
    """The root: every section, each with its defaults."""

    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    dataplane: DataplaneSettings = field(default_factory=DataplaneSettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    lab: LabSettings = field(default_factory=LabSettings)
    apiserver: ApiServerSettings = field(default_factory=ApiServerSettings)


DEFAULTS = RavenSettings()


def help_for(section: Any, name: str, show_default: bool = True) -> str:
    """The help text of field `name`, with its default appended."""
    f = next((f for f in fields(section) if f.name == name), None)
    if f is None or "help" not in f.metadata:
        raise KeyError(f"setting {name!r} has no help text")
    text = str(f.metadata["help"])
    default = default_of(section, name)
    if show_default and default not in (None, "", ()):
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        text += f" (default {shown})"
    return text


def listen_problems(flag: str, listen: tuple[str, ...]) -> list[str]:
    """Every problem of a list of HOST:PORT listen addresses (pure: nothing is bound here)."""
    problems = []
    for text in listen:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        fix = f"use HOST:PORT with an address of this machine, e.g. 127.0.0.1:{AGENT_METRICS_PORT}"
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            problems.append(f"{flag} {text!r}: not HOST:PORT with a port 0-65535 "
                            f"(0: any free port); {fix}")
            continue
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            problems.append(f"{flag} {text!r}: {host or 'an empty host'!s} is not an IP "
                            f"address; {fix}")
            continue
        if address.is_unspecified:
            problems.append(f"{flag} {text!r}: a wildcard address would serve metrics on every "
                            "address of the node, public ones included; name the addresses "
                            "(127.0.0.1 and the node's InternalIP)")
    return problems


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
