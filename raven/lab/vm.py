"""Lab nodes of `kind: vm`: a qemu guest (virtme-ng, Debian's kernel, software emulation).

Why: this machine's kernel has no WireGuard module; a VM node runs the agent on a real kernel
that has one (`--wireguard auto` picks the kernel backend there), next to netns nodes that use
wireguard-go, in one lab.

How a VM node is wired (the node's host namespace `<lab>.<node>` stays, as the VM's "chassis"):
- the pool router's port `n<j>` is a veth into the node's namespace, as for a netns node; there
  it joins bridge `vmbr` with tap `lan0`, the guest's NIC on the pool segment. So the pool
  segment, `node-down` (port down) and `disconnect` work unchanged;
- tap `ctl0` (169.254.100.1/30) is the guest's control NIC `ctl0` (169.254.100.2): the lab's
  channel into the guest (raven.lab.vmguest: a command server in the guest, a client on the
  host). Each VM sits in its own namespace, so every VM uses the same link-local pair;
- qemu (vng) runs under the lab supervisor in the node's namespace and mount namespace
  (process `vm`); its console goes to logs/<node>.vm.log;
- the guest sees the host's filesystem read-only (the project's .venv and tools), plus shared
  directories: the node's state directory (read-write: the agent's key and offline cache
  survive a reboot of the guest) and, read-only, the API server's directory (the kubeconfig),
  the proxy CA's and the lab's vm directory (the Python bundle), see shared_ro;
- inside the guest: NIC `eth0` with the node's underlay address and the lab's routes, and the
  pods as network namespaces `<lab>.<pod>` with veths `p<k>`, exactly as raven.lab.build gives
  a netns node (the same `ip -batch` lines);
- a guest command is run by a host process (raven.lab.vmguest `call`) that stands for it: it
  lives in the node's host namespace (so `raven lab down` finds and kills it by namespace),
  forwards signals, and its death kills the guest command. Daemons in the guest (the agent) are
  therefore supervised by raven.lab.runtime like any other.
Rules kept:
- Python in the guest is slow under software emulation: Python programs the lab starts there
  (the agent) load from a bundle of compiled modules built once per lab (vm/bundle.zip, see
  raven.lab.vmbundle); the control server and the ICMP probe use the standard library only.
- Waits are generous and reported with the console log's end; nothing asserts on wall time.
- Power: node-down kills qemu (a power cut); node-up boots it again (a VM loses its RAM).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raven.errors import CommandError
from raven.lab import icmp, runtime, vmguest
from raven.lab import netns as nsutil
from raven.lab.plan import LabPlan, NodePlan, PoolPlan

Progress = Callable[[str], None]
VM = "vm"  # supervisor name of a VM node's qemu (vng) process
BRIDGE, LAN_TAP, CTL_TAP = "vmbr", "lan0", "ctl0"
CTL_HOST, CTL_GUEST, CTL_PREFIX = "169.254.100.1", "169.254.100.2", 30
CTL_PORT = 7422
GUEST_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")  # as HOLDER_SCRIPT
CTL_ADDRESS = f"{CTL_GUEST}:{CTL_PORT}"
MEMORY = os.environ.get("RAVEN_LAB_VM_MEMORY", "640M")
BOOT_TIMEOUT = float(os.environ.get("RAVEN_LAB_VM_BOOT_TIMEOUT", "600"))
AGENT_READY_TIMEOUT = 600.0  # a fresh agent in a guest under TCG: imports take tens of seconds
# What `raven agent` imports, lazily imported modules included (the guest would otherwise read
# them one by one over 9p): the CLI, the agent, the Kubernetes client and the data plane.
BUNDLE_MODULES = ("raven.cli", "raven.commands.*", "raven.agent_command", "raven.agent",
                  "raven.kube.*", "raven.dataplane.*", "raven.proxy.*", "raven.health")


# --- what the machine needs ---------------------------------------------------------------------

def kernel_has_wireguard(version: str) -> bool:
    moddir = Path("/lib/modules") / version
    if any((moddir / "kernel/drivers/net/wireguard").glob("wireguard.ko*")):
        return True
    builtin = moddir / "modules.builtin"
    return builtin.exists() and "wireguard" in builtin.read_text()


def find_kernel() -> Path | None:
    """The newest installed /boot/vmlinuz-* whose modules include WireGuard."""
    found = [image for image in Path("/boot").glob("vmlinuz-*")
             if os.access(image, os.R_OK)
             and kernel_has_wireguard(image.name.removeprefix("vmlinuz-"))]
    return max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)], default=None)


def vng_path() -> Path | None:
    local = Path(sys.executable).parent / "vng"  # setup.sh: the project's 'vm' extra
    if local.exists():
        return local
    found = shutil.which("vng")
    return Path(found) if found else None


def unavailable() -> str | None:
    """Why VM nodes cannot run on this machine (None: they can)."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (apt qemu-system-x86)")
    if find_kernel() is None:
        missing.append("a /boot/vmlinuz-* with the wireguard module (apt linux-image-amd64)")
    if vng_path() is None:
        missing.append("vng (pip virtme-ng, the project's 'vm' extra)")
    if shutil.which("busybox") is None:
        missing.append("busybox (apt busybox-static)")
    if not missing:
        return None
    return f"nodes of kind vm need {', '.join(missing)}: run scripts/setup.sh"


# --- plan helpers -----------------------------------------------------------------------------

def vm_nodes(plan: LabPlan) -> list[tuple[PoolPlan, NodePlan]]:
    return [(pool, node) for pool, node in plan.nodes() if node.is_vm]


def node_of(plan: LabPlan, target: str) -> NodePlan | None:
    """The VM node that `target` (a VM node or one of its pods) lives in; None otherwise."""
    for _, node in plan.nodes():
        if node.is_vm and (node.name == target or any(p.name == target for p in node.pods)):
            return node
    return None


def _find(plan: LabPlan, name: str) -> tuple[PoolPlan, NodePlan]:
    for pool, node in vm_nodes(plan):
        if node.name == name:
            return pool, node
    raise CommandError(f"lab {plan.name!r} has no VM node {name!r}")


def mac(prefix: int, underlay_ip: str) -> str:
    """A locally administered MAC from the node's underlay address (stable across boots)."""
    raw = bytes([0x52, prefix]) + ipaddress.ip_address(underlay_ip).packed[-4:]
    return ":".join(f"{b:02x}" for b in raw)


def vm_dir(lab: str) -> Path:
    return runtime.run_dir(lab) / "vm"


def bundle_path(lab: str) -> Path:
    return vm_dir(lab) / "bundle.zip"


# --- host side --------------------------------------------------------------------------------

def host_lines(marker: str, pool: PoolPlan, node: NodePlan) -> list[str]:
    """`ip -batch` lines for the VM node's host namespace: the bridge from the pool port to the
    guest's LAN tap, and the control tap."""
    mtu = pool.mtu
    return [
        marker,
        f"link add {BRIDGE} mtu {mtu} type bridge",
        f"link set eth0 master {BRIDGE} up",
        f"tuntap add dev {LAN_TAP} mode tap",
        f"link set {LAN_TAP} mtu {mtu} master {BRIDGE} up",
        f"link set {BRIDGE} up",
        f"tuntap add dev {CTL_TAP} mode tap",
        f"address add {CTL_HOST}/{CTL_PREFIX} dev {CTL_TAP}",
        f"link set {CTL_TAP} up",
    ]


def vmguest_script() -> str:
    return str(Path(vmguest.__file__).resolve())


def vng_argv(lab: str, pool: PoolPlan, node: NodePlan) -> list[str]:
    from raven.lab import cluster  # paths only; cluster imports this module lazily too

    kernel, vng = find_kernel(), vng_path()
    if kernel is None or vng is None:
        raise CommandError(unavailable() or "no kernel or vng for VM nodes")
    lan, ctl = mac(0x54, node.underlay_ip), mac(0x55, node.underlay_ip)
    qemu = (f"-netdev tap,id=lan,ifname={LAN_TAP},script=no,downscript=no "
            f"-device virtio-net-pci,netdev=lan,mac={lan} "
            f"-netdev tap,id=ctl,ifname={CTL_TAP},script=no,downscript=no "
            f"-device virtio-net-pci,netdev=ctl,mac={ctl}")
    server = ["python3", "-I", "-S", vmguest_script(), "serve", CTL_ADDRESS]
    boot = nsutil.guest_boot_command({lan: "eth0", ctl: CTL_TAP}, CTL_TAP,
                                     f"{CTL_GUEST}/{CTL_PREFIX}", server)
    argv = [str(vng), "--run", str(kernel), "--user", "root", "--memory", MEMORY,
            "--cpus", "1", "--cwd", "/",
            "--rwdir", str(cluster.state_dir(lab, node.name)),
            *(arg for folder in shared_ro(lab) for arg in ("--rodir", str(folder))),
            f"--qemu-opts={qemu}"]
    if os.environ.get("RAVEN_VM_KVM") != "1":
        argv.append("--disable-kvm")  # qemu on /dev/kvm fails on our machines; TCG always works
    return [*argv, "--", boot]


def shared_ro(lab: str) -> list[Path]:
    """Host directories a guest reads at their host paths: the API server's (kubeconfig), the
    proxy CA's (the agents' --proxy-ca-file) and the lab's vm directory (the bundle)."""
    from raven.lab import cluster

    return [cluster.apiserver_dir(lab), cluster.proxy_ca_paths(lab)[0].parent, vm_dir(lab)]


def _env_for_vng(vng: Path) -> dict[str, str]:
    # vng runs virtme-run from its own bin directory.
    return {"PATH": f"{vng.parent}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


def start(lab: str, node_name: str) -> None:
    """Start the VM of a node (not waited for; see wait_ready)."""
    from raven.lab import cluster

    plan = runtime.load_plan(lab)
    pool, node = _find(plan, node_name)
    # Shared folders must exist before the guest mounts them; the API server and the proxy CA
    # fill theirs later (both keep them 0700).
    cluster.state_dir(lab, node.name).mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in shared_ro(lab):
        folder.mkdir(parents=True, exist_ok=True, mode=0o755 if folder == vm_dir(lab) else 0o700)
    vng = vng_path()
    runtime.start_process(lab, node.name, VM, vng_argv(lab, pool, node),
                          env=_env_for_vng(vng) if vng else None, host_side=True)


def call_argv(lab: str, node: str, netns: str | None = None, stdin: bool = False) -> list[str]:
    """Prefix that runs a command in the guest of `node` (in pod namespace `netns`)."""
    prefix = runtime.node_exec_argv(lab, node)
    return [*prefix, sys.executable, "-I", "-S", vmguest_script(), "call", CTL_ADDRESS,
            *(["--netns", netns] if netns else []), *(["--stdin"] if stdin else []), "--"]


def exec_argv(lab: str, plan: LabPlan, target: str) -> list[str]:
    """raven.lab.runtime.exec_argv for a VM node or a pod of one."""
    node = node_of(plan, target)
    assert node is not None
    netns = None if target == node.name else next(p.netns for p in node.pods if p.name == target)
    return call_argv(lab, node.name, netns)


def call(lab: str, node: str, argv: list[str], stdin: str | None = None,
         netns: str | None = None, timeout: float = 300.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the guest and wait for it; CommandError naming it when it fails."""
    full = call_argv(lab, node, netns, stdin=stdin is not None) + list(argv)
    try:
        proc = nsutil.run(full, stdin=stdin, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandError(f"lab {lab!r}: VM node {node!r}: `{' '.join(argv[:4])}` did not "
                           f"finish in {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise CommandError(f"lab {lab!r}: VM node {node!r}: `{' '.join(argv[:4])}` failed "
                           f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def guest_uptime(lab: str, node: str) -> float | None:
    """The guest's uptime when its command server answers; None when it does not (yet)."""
    try:
        proc = nsutil.run(call_argv(lab, node), check=False, timeout=20)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["uptime"])
    except (ValueError, KeyError, IndexError):
        return None


def _console_tail(lab: str, node: str, lines: int = 20) -> str:
    path = runtime.log_path(lab, node, VM)
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def wait_ready(lab: str, node: str, timeout: float = BOOT_TIMEOUT,
               stop: threading.Event | None = None) -> float:
    """Wait until the guest's command server answers; return the guest's uptime then. `stop`
    (set when `lab up` is interrupted) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        if stop is not None and stop.is_set():
            raise CommandError(f"lab {lab!r}: stopped while the VM of {node!r} booted")
        if not runtime.process_running(lab, node, VM):
            raise CommandError(f"lab {lab!r}: the VM of node {node!r} exited while booting; "
                               f"its console ({runtime.log_path(lab, node, VM)}) ends:\n"
                               f"{_console_tail(lab, node)}")
        uptime = guest_uptime(lab, node)
        if uptime is not None:
            return uptime
        if time.monotonic() > deadline:
            raise CommandError(f"lab {lab!r}: the VM of node {node!r} did not answer in "
                               f"{timeout:.0f}s; its console ends:\n{_console_tail(lab, node)}")
        if stop is not None:
            stop.wait(1.0)
        else:
            time.sleep(1.0)


def configure(lab: str, node_name: str) -> None:
    """Give a booted guest the lab's wiring: underlay addresses and routes, pods (as build.py
    gives a netns node), forwarding on (as the holder sets it in a netns node)."""
    from raven.lab import build

    plan = runtime.load_plan(lab)
    pool, node = _find(plan, node_name)
    call(lab, node.name, nsutil.sysctl_argv(*GUEST_SYSCTLS))
    lines = [f"netns add {pod.netns}" for pod in node.pods]
    lines.append(f"link set eth0 mtu {pool.mtu}")
    lines += build._node_lines(plan, pool, node)
    call(lab, node.name, nsutil.ip_batch_argv(), stdin="\n".join(lines) + "\n")
    for pod in node.pods:
        call(lab, node.name, nsutil.ip_batch_argv(pod.netns),
             stdin="\n".join(build._pod_lines(plan, node, pod)) + "\n")


def boot(lab: str, node: str, progress: Progress | None = None) -> float:
    """Start, wait for and configure a node's VM; return the seconds it took."""
    started = time.monotonic()
    start(lab, node)
    uptime = wait_ready(lab, node)
    configure(lab, node)
    took = time.monotonic() - started
    if progress:
        progress(f"VM node {node}: booted and wired in {took:.0f}s (guest uptime {uptime:.0f}s "
                 "at its first answer)")
    return took


def boot_all(plan: LabPlan, progress: Progress) -> None:
    """Build the Python bundle, start every VM at once, wait for each and wire it."""
    nodes = [node.name for _, node in vm_nodes(plan)]
    if not nodes:
        return
    why = unavailable()
    if why:
        raise CommandError(f"lab {plan.name!r}: {why}")
    progress(f"VM nodes {', '.join(nodes)}: building the Python bundle, booting (software "
             "emulation: a minute or more)")
    from raven.lab import vmbundle

    vm_dir(plan.name).mkdir(parents=True, exist_ok=True)
    vmbundle.build(bundle_path(plan.name), BUNDLE_MODULES)
    for node in nodes:
        start(plan.name, node)
    pool = ThreadPoolExecutor(max_workers=len(nodes))
    stop = threading.Event()
    try:
        futures = [pool.submit(_ready_and_configure, plan.name, node, progress, stop)
                   for node in nodes]
        for future in futures:
            future.result()
    finally:
        stop.set()  # a failure or a signal: the other waits end now, then the lab is removed
        pool.shutdown(wait=True, cancel_futures=True)


def _ready_and_configure(lab: str, node: str, progress: Progress,
                         stop: threading.Event) -> None:
    started = time.monotonic()
    uptime = wait_ready(lab, node, stop=stop)
    configure(lab, node)
    progress(f"VM node {node}: answered at guest uptime {uptime:.0f}s, wired "
             f"{time.monotonic() - started:.0f}s after the start")


# --- Python programs in the guest ---------------------------------------------------------------

def guest_python_argv(lab: str, argv: list[str]) -> list[str]:
    """[python, -m, MODULE, ARGS...] as the guest should run it: from the lab's bundle of
    compiled modules first (one file read instead of thousands of lookups over 9p)."""
    if len(argv) < 3 or argv[1] != "-m":
        return argv
    from raven.lab import vmbundle

    return vmbundle.python_argv(bundle_path(lab), argv[2], argv[3:])


# --- ICMP from pods inside guests ---------------------------------------------------------------

def icmp_probe_many(plan: LabPlan, probes: dict[str, list[str]], tries: int = 2,
                    timeout_s: float = 1.0) -> dict[str, dict[str, float | None]]:
    """raven.lab.netns.icmp_probe_many where some source namespaces are pods of VM nodes: those
    are probed by raven/lab/icmp.py run inside their guest; all sources at once."""
    by_netns = {pod.netns: node for _, node, pod in plan.pods() if node.is_vm}
    host = {ns: a for ns, a in probes.items() if ns not in by_netns}
    guests: dict[str, dict[str, list[str]]] = {}
    for ns, addresses in probes.items():
        if ns in by_netns:
            guests.setdefault(by_netns[ns].name, {})[ns] = addresses
    if not guests:
        return nsutil.icmp_probe_many(probes, tries, timeout_s)
    out: dict[str, dict[str, float | None]] = {ns: dict.fromkeys(a) for ns, a in probes.items()}
    workers = ThreadPoolExecutor(max_workers=len(guests) + 1)
    try:
        jobs = [workers.submit(nsutil.icmp_probe_many, host, tries, timeout_s)] if host else []
        jobs += [workers.submit(_guest_probe, plan.name, node, wanted, tries, timeout_s)
                 for node, wanted in guests.items()]
        for job in jobs:
            for ns, replies in job.result().items():
                out[ns].update(replies)
    finally:
        workers.shutdown(wait=True)
    return out


def _guest_probe(lab: str, node: str, probes: dict[str, list[str]], tries: int,
                 timeout_s: float) -> dict[str, dict[str, float | None]]:
    paths = {f"{vmguest.NETNS_DIR}/{ns}": ns for ns in probes}  # the guest's netns directory
    request = {"tries": tries, "timeout": timeout_s,
               "probes": [{"netns": p, "addresses": probes[ns]} for p, ns in paths.items()]}
    out: dict[str, dict[str, float | None]] = {ns: dict.fromkeys(a) for ns, a in probes.items()}
    proc = call(lab, node, ["python3", "-I", "-S", str(Path(icmp.__file__).resolve())],
                stdin=json.dumps(request), timeout=60 + tries * timeout_s * 2, check=False)
    if proc.returncode != 0:
        return out  # an unreachable guest: nothing answered
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return out
    for result in data.get("results", []):
        ns = paths.get(result.get("netns"))
        if ns is not None and result.get("address") in out[ns]:
            out[ns][result["address"]] = result.get("rttMs")
    return out
