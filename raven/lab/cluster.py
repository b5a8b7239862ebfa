"""The overlay on a lab: API server, controller, kubelet stand-in, Gateways and one agent per node.

`up(plan)` turns a built lab (raven.lab.build) into a running cluster:
  1 `raven apiserver` in the control-plane namespace, listening on the control-plane underlay
    address (so agents behind NAT reach it through their NAT), data under <run dir>/apiserver;
    a dual-stack control plane listens on both families and each agent gets a kubeconfig
    naming the address of its node's family
  2 the Gateway CRD (package data raven/lab/data/gateway-crd.yaml, the same file as
    gateway/crd.yaml) applied with kubectl
  3 the kubelet stand-in (raven.lab.kubelet): Node objects with addresses, podCIDR(s), pool label
  4 one Gateway per pool: every gatewayCandidate node is a tunnel endpoint and a proxy endpoint
    (proxyConfig.Replicas 1), underNAT from `nat`; the proxy CA (docs/proxy.md) is made once
    per lab under <run dir>/proxy-ca and applied as Secret kube-system/raven-proxy-ca
  5 `raven controller` in the control-plane namespace
  6 `raven agent` on every node: node netns + private mount namespace, state directory
    <run dir>/state/<node> (survives reboots of the node, like /var/lib/raven); the gateway
    candidates' agents start right after step 2 (they publish their keys when their Nodes
    appear), the members' too, at a low CPU priority until every candidate planned itself
    into its pool
  7 wait, with progress, until every pod reaches every pod.
Rules kept:
- every process runs under the lab supervisor (raven.lab.runtime), so `raven lab down` stops it;
- the API server's data directory is 0700 and it runs with umask 077, so its token, keys and
  admin.kubeconfig are readable by root only;
- a (re)started agent counts as ready once it wrote its status file, which it does only after
  a successful apply; an agent that exits or stays unready is reported with its log;
- the root network namespace is never used: API calls from here run kubectl inside the
  control-plane namespace;
- timing knobs for the lab (heartbeat period, heartbeat timeout, controller resync) are the
  daemons' shipped defaults, passed as their ordinary flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from raven import constants
from raven.errors import CommandError
from raven.lab import netns as nsutil
from raven.lab import runtime
from raven.lab.ping import PingReport, ping_all
from raven.lab.plan import LabPlan, NodePlan, PoolPlan
from raven.lab.topology import CONTROL_PLANE
from raven.model import DEFAULT_PROXY_PORT
from raven.safeyaml import load_yaml
from raven.settings import LabSettings
from raven.timefmt import to_time

Progress = Callable[[str], None]
APISERVER_PORT = 6443
# The members' agents start at this lower CPU priority until the candidates are in their pools.
MEMBER_NICE = 10
AGENT_STATUS_FILE = "agent-status.json"  # raven.agent.STATUS_FILE: written after each good apply

APISERVER = "apiserver"  # supervisor names (control-plane target unless said otherwise)
CONTROLLER = "controller"
KUBELET = "kubelet"
AGENT = "agent"  # on every node


# The lab's section of the settings root (defaults written there once).
ClusterSettings = LabSettings


def _quiet(_: str) -> None:
    pass


# --- paths and commands -----------------------------------------------------------------------

def apiserver_dir(lab: str) -> Path:
    return runtime.run_dir(lab) / "apiserver"


def kubeconfig_path(lab: str) -> Path:
    """The admin kubeconfig the API server writes (server = the control plane's lab address)."""
    return apiserver_dir(lab) / "admin.kubeconfig"


def state_dir(lab: str, node: str) -> Path:
    return runtime.run_dir(lab) / "state" / node


def proxy_ca_paths(lab: str) -> tuple[Path, Path]:
    """(CA certificate, CA key) of the lab's proxy CA; the API server's proxy dialer and the
    agents use them (docs/proxy.md)."""
    base = runtime.run_dir(lab) / "proxy-ca"
    return base / "ca.crt", base / "ca.key"


def ensure_proxy_ca(lab: str) -> tuple[Path, Path]:
    """Make the lab's proxy CA once (kept across restarts of the overlay), root-only files."""
    from raven.proxy import certs

    crt, key = proxy_ca_paths(lab)
    if crt.exists() and key.exists():
        return crt, key
    crt.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(crt.parent, 0o700)
    ca = certs.make_ca(f"raven-proxy-ca-{lab}", 10 * 365 * 86400, time.time())
    for path, data in ((key, ca.key_pem), (crt, ca.cert_pem)):
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return crt, key


def proxy_ca_secret(lab: str) -> dict:
    from raven.proxy import certs

    crt, key = proxy_ca_paths(lab)
    return certs.ca_secret(certs.load_ca_files(crt, key))


def settings_path(lab: str) -> Path:
    return runtime.run_dir(lab) / "cluster.json"


def has_overlay(lab: str) -> bool:
    """True when `up` started the overlay on this lab (not a --network-only lab)."""
    return settings_path(lab).exists()


def require_overlay(lab: str) -> None:
    runtime.load_plan(lab)
    if not has_overlay(lab):
        raise CommandError(f"lab {lab!r} runs no overlay (built with --network-only or tunnel "
                           f"none): no API server, controller or agents to act on")


def load_settings(lab: str) -> ClusterSettings:
    try:
        data = json.loads(settings_path(lab).read_text())
    except (OSError, ValueError):
        return ClusterSettings()
    return ClusterSettings(**{k: v for k, v in data.items()
                              if k in ClusterSettings.__dataclass_fields__})


def raven_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "raven.cli", *args]


def kubectl(lab: str, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """kubectl with the admin kubeconfig, run inside the control-plane namespace."""
    require_overlay(lab)
    argv = [*runtime.exec_argv(lab, CONTROL_PLANE), "kubectl", "--kubeconfig",
            str(kubeconfig_path(lab)), *args]
    proc = nsutil.run(argv, stdin=stdin, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(f"lab {lab!r}: kubectl {' '.join(args)}: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def kubectl_json(lab: str, *args: str) -> dict:
    return json.loads(kubectl(lab, *args, "-o", "json").stdout)


def gateway_crd() -> str:
    """The Gateway CRD manifest, from the package data (works from an installed wheel)."""
    return resources.files("raven.lab").joinpath("data", "gateway-crd.yaml").read_text()


# --- the objects ----------------------------------------------------------------------------

def gateway_object(pool: PoolPlan, tunnel_family: str = "ipv4") -> dict:
    """The Gateway CR of a pool: candidates are tunnel endpoints and proxy endpoints; underNAT
    from the pool's nat. When gateways tunnel over IPv6, a public dual-stack pool's endpoints
    name their IPv6 address as publicIP (else the controller would publish the IPv4 InternalIP)."""
    endpoints = []
    for node in pool.nodes:
        if not node.gateway_candidate:
            continue
        endpoint = {"nodeName": node.name, "type": "tunnel", "port": constants.WIREGUARD_PORT,
                    "underNAT": pool.nat != "none"}
        if tunnel_family == "ipv6" and pool.public and pool.underlay == "dual":
            endpoint["publicIP"] = node.underlay_ip6
        endpoints.append(endpoint)
    endpoints += [
        {"nodeName": node.name, "type": "proxy", "port": DEFAULT_PROXY_PORT,
         "underNAT": pool.nat != "none"}
        for node in pool.nodes if node.gateway_candidate
    ]
    return {
        "apiVersion": f"{constants.API_GROUP}/{constants.API_VERSION}",
        "kind": constants.GATEWAY_KIND,
        "metadata": {"name": pool.gateway, "labels": {"raven.openyurt.io/lab-pool": pool.name}},
        "spec": {
            "nodeSelector": {"matchLabels": {constants.GATEWAY_LABEL: pool.gateway}},
            "tunnelConfig": {"Replicas": pool.tunnel_replicas},
            "proxyConfig": {"Replicas": 1},
            "endpoints": endpoints,
        },
    }


def tunnel_family(plan: LabPlan) -> str:
    """The family gateways tunnel over: IPv6 once a pool's underlay is IPv6 only (the topology
    validator then requires IPv6 on every pool's underlay), else IPv4."""
    return "ipv6" if any(p.underlay == "ipv6" for p in plan.pools) else "ipv4"


def gateway_objects(plan: LabPlan) -> list[dict]:
    return [gateway_object(pool, tunnel_family(plan)) for pool in plan.pools]


# --- processes ------------------------------------------------------------------------------

def _log_tail(lab: str, target: str, name: str, lines: int = 15) -> str:
    path = runtime.log_path(lab, target, name)
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_apiserver(lab: str, timeout: float = 30.0) -> None:
    plan = runtime.load_plan(lab)
    data = apiserver_dir(lab)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)  # mkdir's mode is masked by the umask and ignored when it exists
    kubeconfig_path(lab).unlink(missing_ok=True)
    # Kubelets (pods/log, pods/exec, nodes/proxy) are dialled only at the pools' node addresses.
    networks = [arg for lan in kubelet_lans(plan) for arg in ("--kubelet-network", lan)]
    # NAT'd pools' kubelets through the proxy servers the Gateway status names (docs/proxy.md).
    proxy_ca, proxy_key = proxy_ca_paths(lab)
    if proxy_ca.exists() and proxy_key.exists():
        networks += ["--raven-proxy-ca", str(proxy_ca), "--raven-proxy-ca-key", str(proxy_key)]
    runtime.start_process(lab, CONTROL_PLANE, APISERVER, raven_argv(
        "apiserver", "--data-dir", str(data), *apiserver_listen_args(plan), *networks),
        umask=0o077)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not runtime.process_running(lab, CONTROL_PLANE, APISERVER):
            raise CommandError(f"lab {lab!r}: the API server exited:\n"
                               f"{_log_tail(lab, CONTROL_PLANE, APISERVER)}")
        if kubeconfig_path(lab).exists() and kubectl(
                lab, "get", "--raw", "/readyz", check=False, timeout=10).returncode == 0:
            _write_family_kubeconfigs(lab, plan)
            return
        time.sleep(0.1)
    raise CommandError(f"lab {lab!r}: the API server did not answer in {timeout:.0f}s:\n"
                       f"{_log_tail(lab, CONTROL_PLANE, APISERVER)}")


def _dual_control_plane(plan: LabPlan) -> bool:
    cp = plan.control_plane
    return bool(cp.ip6) and cp.ip != cp.ip6


def kubelet_lans(plan: LabPlan) -> list[str]:
    """Where kubelets may be dialled (pods/log, pods/exec, nodes/proxy): the pools' LANs."""
    return [lan for pool in plan.pools for lan in (pool.lan, pool.lan6) if lan]


def apiserver_listen_args(plan: LabPlan) -> list[str]:
    """Where the API server listens: the control plane's address; a dual-stack control plane
    (IPv4 and IPv6 nodes in one lab) listens on both families (`[::]`), its certificate naming
    both addresses."""
    cp = plan.control_plane
    if _dual_control_plane(plan):
        return ["--listen", f"[::]:{APISERVER_PORT}", "--tls-san", cp.ip, "--tls-san", cp.ip6]
    host = f"[{cp.ip}]" if ":" in cp.ip else cp.ip
    return ["--listen", f"{host}:{APISERVER_PORT}"]


def family_kubeconfig_path(lab: str, family: str) -> Path:
    return apiserver_dir(lab) / f"nodes-{family}.kubeconfig"


def _write_family_kubeconfigs(lab: str, plan: LabPlan) -> None:
    """A dual-stack control plane's admin kubeconfig names the loopback; nodes get a copy
    naming the control plane's address of their family (ipv4, ipv6), private like the
    original."""
    if not _dual_control_plane(plan):
        return
    config = load_yaml(kubeconfig_path(lab).read_text(), source="admin.kubeconfig")
    cp = plan.control_plane
    for family, host in (("ipv4", cp.ip), ("ipv6", f"[{cp.ip6}]")):
        for cluster in config.get("clusters", []):
            cluster["cluster"]["server"] = f"https://{host}:{APISERVER_PORT}"
        path = family_kubeconfig_path(lab, family)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(config, out)


def node_kubeconfig(lab: str, plan: LabPlan, node: NodePlan) -> Path:
    """The kubeconfig a node's agent uses: the admin one, or on a dual-stack control plane the
    one of the node's family (IPv4 when it has an IPv4 underlay)."""
    if not _dual_control_plane(plan):
        return kubeconfig_path(lab)
    family = "ipv6" if ":" in node.underlay_ip else "ipv4"
    return family_kubeconfig_path(lab, family)


def start_controller(lab: str, settings: ClusterSettings | None = None) -> None:
    s = settings or load_settings(lab)
    runtime.start_process(lab, CONTROL_PLANE, CONTROLLER, raven_argv(
        "controller", "--kubeconfig", str(kubeconfig_path(lab)), "--identity", "lab-controller",
        "--heartbeat-timeout", f"{s.heartbeat_timeout:g}", "--resync",
        f"{s.controller_resync:g}"))


def start_kubelet(lab: str, settings: ClusterSettings | None = None) -> None:
    s = settings or load_settings(lab)
    runtime.start_process(lab, CONTROL_PLANE, KUBELET, [
        sys.executable, "-m", "raven.lab.kubelet", lab, "--kubeconfig",
        str(kubeconfig_path(lab)), "--grace", f"{s.node_grace:g}"])


def agent_argv(lab: str, pool: PoolPlan, node: NodePlan, settings: ClusterSettings) -> list[str]:
    ca_crt, ca_key = proxy_ca_paths(lab)
    return raven_argv(
        "agent", "--node", node.name, "--kubeconfig",
        str(node_kubeconfig(lab, runtime.load_plan(lab), node)),
        "--state-dir", str(state_dir(lab, node.name)), "--underlay-mtu", str(pool.mtu),
        "--heartbeat-period", f"{settings.heartbeat_period:g}",
        "--resync", f"{settings.agent_resync:g}",
        "--proxy-ca-file", str(ca_crt), "--proxy-ca-key-file", str(ca_key),
        # the lab's own name (labs share /var/run/netns), or "" for the devices in the node's
        "--tunnel-netns", tunnel_netns(lab, node.name) if settings.tunnel_namespace else "")


tunnel_netns = runtime.tunnel_netns


def start_agent(lab: str, node: str, settings: ClusterSettings | None = None,
                nice: int = 0) -> int:
    """Start the agent of `node`; `nice` > 0 starts it at that lower CPU priority (`lab up`:
    the members while the candidates start; `renice_agents` restores it)."""
    require_overlay(lab)
    s = settings or load_settings(lab)
    plan = runtime.load_plan(lab)
    found = [(p, n) for p, n in plan.nodes() if n.name == node]
    if not found:
        raise CommandError(f"lab {lab!r} has no node {node!r}; nodes: "
                           f"{', '.join(n.name for _, n in plan.nodes())}")
    pool, plan_node = found[0]
    state_dir(lab, node).mkdir(parents=True, exist_ok=True)
    argv = agent_argv(lab, pool, plan_node, s)
    if plan_node.is_vm:
        from raven.lab import vm

        argv = vm.guest_python_argv(lab, argv)
    elif nice > 0:
        argv = ["nice", "-n", str(nice), *argv]
    return runtime.start_process(lab, node, AGENT, argv)


def renice_agents(lab: str, nodes: list[NodePlan]) -> None:
    """Give the agents of `nodes` the ordinary CPU priority again: every thread of every
    process in the agent's process group, and the process groups of its children that run
    in sessions of their own (wireguard-go and the probe responder are started with
    `start_new_session`, so the agent's group does not hold them, yet they inherited its
    priority: a member's responder stayed at nice 10 for good)."""
    for node in nodes:
        pid = runtime.process_pid(lab, node.name, AGENT)
        if pid is not None and not node.is_vm:
            for group in (pid, *runtime.children(pid)):
                with contextlib.suppress(OSError):  # it exited meanwhile: the wait reports it
                    os.setpriority(os.PRIO_PGRP, group, 0)


def agent_status_stamp(lab: str, node: str) -> tuple[int, int] | None:
    """Identity of the agent's status file (inode, mtime): it changes with every write."""
    try:
        st = os.stat(state_dir(lab, node) / AGENT_STATUS_FILE)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_agent_ready(lab: str, node: str, since: tuple[int, int] | None,
                     timeout: float = 30.0) -> None:
    """Wait until the running agent of `node` rewrote its status file (its first successful
    apply) after `since` (the stamp taken before it started); CommandError naming why not."""
    deadline = time.monotonic() + timeout
    while True:
        if not runtime.process_running(lab, node, AGENT):
            raise CommandError(f"lab {lab!r}: the agent on {node!r} exited before it was ready; "
                               f"its log ({runtime.log_path(lab, node, AGENT)}) ends:\n"
                               f"{_log_tail(lab, node, AGENT)}")
        stamp = agent_status_stamp(lab, node)
        if stamp is not None and stamp != since:
            return
        if time.monotonic() > deadline:
            raise CommandError(f"lab {lab!r}: the agent on {node!r} runs but has not applied its "
                               f"plan after {timeout:.0f}s; its log ends:\n"
                               f"{_log_tail(lab, node, AGENT)}")
        time.sleep(0.05)


def stop_agent(lab: str, node: str, timeout: float = 10.0) -> bool:
    return runtime.stop_process(lab, node, AGENT, timeout)


# --- bring-up -------------------------------------------------------------------------------

def up(plan: LabPlan, progress: Progress = _quiet, settings: ClusterSettings | None = None,
       wait: bool = True) -> PingReport | None:
    """Start the control plane and the agents on a built lab; wait until all pairs answer."""
    s = settings or ClusterSettings()
    lab = plan.name
    if plan.tunnel == "none":
        progress("tunnel: none: no overlay is started (the bare lab)")
        return None
    started = time.monotonic()
    runtime.write_json_atomic(settings_path(lab), s.__dict__)
    ensure_proxy_ca(lab)  # before the API server: it dials kubelets through the proxy with it
    progress(f"API server on {plan.control_plane.ip}:{APISERVER_PORT} (control-plane)")
    start_apiserver(lab)
    progress("Gateway CRD")
    kubectl(lab, "apply", "-f", "-", stdin=gateway_crd())
    # The gateway candidates' agents start first, as soon as the API server serves Gateways:
    # an agent's start (interpreter, imports, its first list) is the longest step from
    # `lab up` to a direct path (docs/gateway.md, 4a), and every later step of the lab runs
    # while they start. An agent reacts to what appears later (its Node, the Gateways, their
    # status) as in a real cluster; it publishes its key once its Node exists.
    candidates = [n for _, n in plan.nodes() if n.gateway_candidate]
    members = [n for _, n in plan.nodes() if not n.gateway_candidate]
    progress(f"kubelet stand-in: {len(plan.nodes())} Node objects")
    start_kubelet(lab, s)
    progress(f"agents on {len(candidates)} gateway candidates"
             + (f", {len(members)} members (at low CPU priority until the candidates are in "
                "their pools)" if members else ""))
    for node in candidates:
        start_agent(lab, node.name, s)
    # The members start too, but niced: on a 2-core machine their start would take the CPU
    # from the candidates', and no member is on the way to a gateway's election, key or
    # direct paths; they use what the candidates leave (while those wait for the API server
    # or the network) and get the ordinary priority once every candidate is in its pool.
    for node in members:
        start_agent(lab, node.name, s, nice=MEMBER_NICE)
    progress("gateway controller")
    start_controller(lab, s)
    progress(f"{len(plan.pools)} Gateways: " + ", ".join(
        f"{p.gateway} ({sum(n.gateway_candidate for n in p.nodes)} candidates, nat {p.nat})"
        for p in plan.pools))
    kubectl(lab, "apply", "-f", "-",
            stdin="\n".join(json.dumps(g) for g in gateway_objects(plan)))
    progress("proxy CA (Secret kube-system/raven-proxy-ca)")
    kubectl(lab, "apply", "-f", "-", stdin=json.dumps(proxy_ca_secret(lab)))
    _wait_nodes(lab, len(plan.nodes()))
    _wait_first_applies(lab, candidates, s.wait_timeout, settled=True)
    renice_agents(lab, members)
    # The kubelet APIs and Pods once the agents have applied: nothing of the overlay waits
    # for them, and their start (a Python process per node) and the pings of the wait below
    # would take the CPU from the agents' own start.
    _wait_first_applies(lab, members, s.wait_timeout)
    from raven.lab import kubelets  # it uses this module's paths and kubectl

    progress(f"kubelet APIs on {len(plan.nodes())} nodes (port {kubelets.KUBELET_PORT}), "
             f"{sum(len(n.pods) for _, n in plan.nodes())} Pods")
    kubelets.start(lab, to_time(time.time()))
    runtime.write_json_atomic(runtime.run_dir(lab) / "cluster-state.json",
                              {"phase": "started"})
    if not wait:
        return None
    timeout = s.wait_timeout
    if any(n.is_vm for _, n in plan.nodes()):
        from raven.lab import vm

        timeout += vm.AGENT_READY_TIMEOUT  # agents in guests import for minutes under TCG
    report = wait_all_pairs(plan, timeout, progress)
    answered = sum(p.ok for p in report.pairs)
    progress(f"overlay ready in {time.monotonic() - started:.1f}s: "
             + (f"all {answered} pod pairs answer" if answered == len(report.pairs) else
                f"all {answered} connectable pod pairs answer (of {len(report.pairs)})"))
    return report


def _wait_first_applies(lab: str, nodes: list[NodePlan], timeout: float,
                        settled: bool = False) -> None:
    """Until the agent of every node outside a VM has applied its first plan (its status file
    exists: the state directory is new; `settled`: a plan that puts the node in its pool,
    i.e. after the election), has exited, or `timeout`; never raises (the wait for all pairs
    reports what is wrong)."""
    deadline = time.monotonic() + timeout
    waiting = [n.name for n in nodes if not n.is_vm]
    while waiting and time.monotonic() < deadline:
        waiting = [n for n in waiting if not _applied(lab, n, settled)
                   and runtime.process_running(lab, n, AGENT)]
        if waiting:
            time.sleep(0.05)


def _applied(lab: str, node: str, settled: bool) -> bool:
    """Has the node's agent written its status file (with a role in its pool: `settled`)?"""
    if not settled:
        return agent_status_stamp(lab, node) is not None
    try:
        status = json.loads((state_dir(lab, node) / AGENT_STATUS_FILE).read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return False
    return status.get("role") not in (None, "alone")


def _wait_nodes(lab: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = kubectl(lab, "get", "nodes", "-o", "json", check=False)
        if proc.returncode == 0 and len(json.loads(proc.stdout).get("items", [])) >= count:
            return
        if not runtime.process_running(lab, CONTROL_PLANE, KUBELET):
            break
        time.sleep(0.2)
    raise CommandError(f"lab {lab!r}: the kubelet stand-in did not register {count} nodes:\n"
                       f"{_log_tail(lab, CONTROL_PLANE, KUBELET)}")


def pool_pair_expected(plan: LabPlan, src_pool: str, dst_pool: str) -> bool:
    """Can the overlay connect these pools? Same pool always; else both need a gateway
    candidate, and two pools behind NAT need a public pool with a candidate to relay them."""
    if src_pool == dst_pool:
        return True
    pools = {p.name: p for p in plan.pools}

    def has_gateway(pool: PoolPlan) -> bool:
        return any(n.gateway_candidate for n in pool.nodes)

    a, b = pools[src_pool], pools[dst_pool]
    if not (has_gateway(a) and has_gateway(b)):
        return False
    if a.public or b.public:
        return True
    return any(p.public and has_gateway(p) for p in plan.pools)


def wait_all_pairs(plan: LabPlan, timeout: float, progress: Progress = _quiet) -> PingReport:
    """Ping all pairs until every pair the overlay can connect answers (pool_pair_expected);
    CommandError naming the failing pairs otherwise."""
    deadline = time.monotonic() + timeout
    last = ""
    unreachable = {(a.name, b.name) for a in plan.pools for b in plan.pools
                   if not pool_pair_expected(plan, a.name, b.name)}
    if unreachable:
        progress("not expected to connect (no gateway candidate, or NAT to NAT without a "
                 "public pool to relay): " + ", ".join(f"{a}->{b}" for a, b in sorted(unreachable)))
    while True:
        report = ping_all(plan, scope="all", tries=1, timeout_s=1)
        expected = [p for p in report.pairs if (p.src_pool, p.dst_pool) not in unreachable]
        ok = sum(p.ok for p in expected)
        line = f"waiting for the overlay: {ok}/{len(expected)} pod pairs answer"
        if ok == len(expected):
            return report
        if line != last:
            progress(line)
            last = line
        dead = [n.name for _, n in plan.nodes()
                if not runtime.process_running(plan.name, n.name, AGENT)]
        if time.monotonic() > deadline or dead:
            failed = [f"{p.src}->{p.dst}" + (" (ipv6)" if p.family == "ipv6" else "")
                      for p in expected if not p.ok]
            why = f"agents exited on {', '.join(dead)}" if dead else f"after {timeout:.0f}s"
            tail = _log_tail(plan.name, dead[0], AGENT) if dead else ""
            raise CommandError(
                f"lab {plan.name!r}: overlay not ready ({why}): {len(failed)} pairs fail: "
                f"{', '.join(failed[:8])}{' ...' if len(failed) > 8 else ''}\n{tail}".rstrip())
        time.sleep(0.5)


# --- views ----------------------------------------------------------------------------------

def gateways(lab: str) -> list[dict]:
    return list(kubectl_json(lab, "get", "gateways.raven.openyurt.io").get("items", []))


def active_gateways(lab: str) -> dict[str, list[str]]:
    """Gateway name -> node names of its active endpoints (from Gateway status)."""
    return {g["metadata"]["name"]: [e.get("nodeName", "") for e in
                                    (g.get("status") or {}).get("activeEndpoints") or []
                                    if e.get("type", "tunnel") == "tunnel"]
            for g in gateways(lab)}


def pool_of(plan: LabPlan, pool_name: str) -> PoolPlan:
    for pool in plan.pools:
        if pool.name == pool_name or pool.gateway == pool_name:
            return pool
    raise CommandError(f"lab {plan.name!r} has no pool {pool_name!r}; pools: "
                       f"{', '.join(p.name for p in plan.pools)}")


def wait_active(lab: str, pool: str, timeout: float = 30.0,
                exclude: tuple[str, ...] = ()) -> str:
    """The node name of `pool`'s active gateway once one (not in `exclude`) is elected."""
    plan = runtime.load_plan(lab)
    gateway = pool_of(plan, pool).gateway
    deadline = time.monotonic() + timeout
    while True:
        active = [n for n in active_gateways(lab).get(gateway, []) if n not in exclude]
        if active:
            return active[0]
        if time.monotonic() > deadline:
            raise CommandError(f"lab {lab!r}: pool {pool!r} has no active gateway after "
                               f"{timeout:.0f}s")
        time.sleep(0.2)


def _dial_text(address: object) -> str:
    """An endpoint's address as it is dialled (IPv6 in brackets), or why there is none."""
    if not address:
        return "behind NAT"
    return f"[{address}]" if ":" in str(address) else str(address)


def format_gateways(lab: str) -> str:
    lines = []
    for g in gateways(lab):
        status = g.get("status") or {}
        active = [f"{e.get('nodeName')} ({_dial_text(e.get('publicIP'))}:{e.get('port')})"
                  for e in status.get("activeEndpoints") or []]
        nodes = [n.get("nodeName") for n in status.get("nodes") or []]
        lines.append(f"  {g['metadata']['name']:<16} active {', '.join(active) or 'none':<34} "
                     f"members {', '.join(nodes)}")
    return "\n".join(lines)
