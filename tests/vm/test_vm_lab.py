"""A lab with a node of kind vm: kernel WireGuard in a qemu guest next to wireguard-go nodes.

Topology mixed-vm (test-topologies/mixed-vm.yaml): pool cloud (public; gateway cloud-1, netns,
wireguard-go), pool cone (cone NAT; gateway cone-vm, a VM: Debian's kernel, kernel WireGuard;
member cone-2, netns) and pool sym (symmetric NAT; gateway sym-1, netns). Everything is driven
through `raven lab` verbs, as an operator would.
Oracles: ICMP crossing the lab (raven lab ping; a 50 pps echo stream from a pod namespace),
`ip -json` and `wg` run inside the guest, /proc/uptime of the guest, `ps`-free process checks
through /proc and `ip netns`/`ip -json link` of the host.
One lab for the module (a VM boot under software emulation costs minutes); slow by nature.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from icmp_stream_support import EchoStream, start_stream

from raven.lab import cluster, runtime, vm

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]

RAVEN = [sys.executable, "-m", "raven.cli"]
TOPOLOGY = "mixed-vm"
VM_NODE, VM_POOL = "cone-vm", "cone"
UP_TIMEOUT = 1800.0  # boot + agent imports under TCG on a loaded 2-core machine


def raven(*args: str, timeout: float = 300.0, check: bool = False
          ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*RAVEN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"raven {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def in_target(lab: str, target: str, *argv: str) -> str:
    return raven("lab", "exec", lab, target, "--", *argv, timeout=120, check=True).stdout


def tunnel_netns_of(lab: str, target: str) -> str | None:
    """The node's tunnel namespace while it holds the node's raven0 and raven-wg0 (an active
    gateway, docs/tunnel-namespace.md), named inside the node (the guest, or the netns node's
    mount namespace); None when the devices are in the node's own namespace."""
    name = runtime.tunnel_netns(lab, target)
    kind = in_target(lab, target, "sh", "-c",
                     f"stat -f -c %T /run/netns/{name} 2>/dev/null || true").strip()
    return name if kind == "nsfs" else None


def in_devices(lab: str, target: str, *argv: str) -> str:
    """`in_target` where the node's raven0 and raven-wg0 are (`ip netns exec` remounts /sys
    for the namespace, and the kernel WireGuard backend answers `wg` only there)."""
    name = tunnel_netns_of(lab, target)
    return in_target(lab, target, *(["ip", "netns", "exec", name] if name else []), *argv)


def status(lab: str) -> dict:
    return json.loads(raven("lab", "status", lab, "--json", check=True).stdout)


def qemu_pids() -> dict[int, str]:
    """Every qemu process of the machine: pid -> its RAVEN_LAB (empty if none)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("qemu-system"):
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        lab = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RAVEN_LAB=")), "")
        out[int(entry.name)] = lab
    return out


def assert_nothing_left(lab: str) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{lab}." not in netns
    deadline = time.monotonic() + 10  # killed processes may take a moment to be reaped
    while lab in qemu_pids().values() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lab not in qemu_pids().values()
    assert not (Path("/run/raven-lab") / lab).exists()
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                      check=True).stdout)
    assert not [link["ifname"] for link in links if link["ifname"] in ("lan0", "ctl0", "vmbr")]


def wait_all_pairs(lab: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        proc = raven("lab", "ping", lab, "--json", timeout=300)
        report = json.loads(proc.stdout)
        if proc.returncode == 0 and report["ok"]:
            return report
        if time.monotonic() > deadline:
            failed = [f"{p['src']}->{p['dst']}" for p in report["pairs"] if not p["ok"]]
            raise AssertionError(f"{len(failed)} pairs fail after {timeout:.0f}s: {failed}")
        time.sleep(2)


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    reason = vm.unavailable()
    if reason:
        pytest.skip(reason)
    name = f"rvt-vm-{secrets.token_hex(3)}"
    started = time.monotonic()
    try:
        up = raven("lab", "up", TOPOLOGY, "--name", name, timeout=UP_TIMEOUT)
        assert up.returncode == 0, up.stderr[-4000:]
        sys.stderr.write(f"\n[vm-lab] lab up {TOPOLOGY} to all pairs: "
                         f"{time.monotonic() - started:.0f}s\n")
        yield name
    finally:
        raven("lab", "down", name, timeout=120)


# --- interop -----------------------------------------------------------------------------------

def test_every_pod_pair_answers_across_both_wireguard_backends(lab: str) -> None:
    report = wait_all_pairs(lab, timeout=60)
    pods = [p["name"] for pool in status(lab)["pools"] for n in pool["nodes"] for p in n["pods"]]
    assert len(report["pairs"]) == len(pods) * (len(pods) - 1) == 20
    # the VM gateway runs kernel WireGuard; the netns gateways run wireguard-go (a TUN device)
    # all three are active gateways: their devices are in their tunnel namespaces, the kernel
    # WireGuard device of the guest moved there like wireguard-go's TUN (docs/tunnel-namespace.md)
    kinds = {}
    for node in (VM_NODE, "cloud-1", "sym-1"):
        assert tunnel_netns_of(lab, node) is not None, node
        link = json.loads(in_devices(lab, node, "ip", "-j", "-d", "link", "show", "raven-wg0"))[0]
        kinds[node] = link.get("linkinfo", {}).get("info_kind")
    assert kinds == {VM_NODE: "wireguard", "cloud-1": "tun", "sym-1": "tun"}
    assert "raven-wg0" not in {link["ifname"] for link in json.loads(
        in_target(lab, VM_NODE, "ip", "-j", "link", "show"))}  # moved, not copied
    # the guest's kernel has the cloud gateway (wireguard-go) as its peer, handshake done; the
    # symmetric pool is reached through it (NAT to NAT is relayed by the public pool)
    cloud_key = in_devices(lab, "cloud-1", "wg", "show", "raven-wg0", "public-key").strip()
    dump = in_devices(lab, VM_NODE, "wg", "show", "raven-wg0", "dump").splitlines()[1:]
    fields = [line.split("\t") for line in dump if line.strip()]
    # Peers that carry addresses. A peer with "(none)" is a direct-path probe peer towards the
    # other NAT'd pool (docs/gateway.md 4a): with one public gateway the NAT kinds are unknown,
    # so the agents may try a direct path, which carries nothing until it answers.
    carrying = [f[0] for f in fields if f[3] != "(none)"]
    handshakes = {f[0]: int(f[4]) for f in fields}
    assert carrying == [cloud_key] and handshakes[cloud_key] > 0
    # the pods of the VM node are namespaces of the guest, not of this machine
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{lab}.{VM_NODE}-pod0" not in netns
    assert f"{lab}.{VM_NODE}-pod0" in in_target(lab, VM_NODE, "ip", "netns", "list")
    node = next(n for p in status(lab)["pools"] for n in p["nodes"] if n["name"] == VM_NODE)
    assert node["kind"] == "vm"


def start_probe(lab: str, pod: str, dst: str, rate: int = 50) -> EchoStream:
    return start_stream(["ip", "netns", "exec", f"{lab}.{pod}"], dst, rate)


def stop_probe(stream: EchoStream) -> dict:
    try:
        return stream.stop()
    finally:
        stream.kill()


def pod_ip(lab: str, pod: str) -> str:
    return next(p["ip"] for pool in status(lab)["pools"] for n in pool["nodes"]
                for p in n["pods"] if p["name"] == pod)


def agent_pid(lab: str, node: str) -> int | None:
    return next((p["pid"] for p in status(lab)["processes"]
                 if p["target"] == node and p["name"] == "agent" and p["running"]), None)


def test_agent_restart_on_the_vm_gateway_loses_no_packet(lab: str) -> None:
    wait_all_pairs(lab, timeout=60)
    before = agent_pid(lab, VM_NODE)
    # through the guest's VXLAN and kernel WireGuard (cone-2 is a member of the VM's pool),
    # and into the guest's own pod
    probes = {"cone-2-pod0 -> cloud-1-pod0": start_probe(lab, "cone-2-pod0",
                                                           pod_ip(lab, "cloud-1-pod0")),
              "cloud-2-pod0 -> cone-vm-pod0": start_probe(lab, "cloud-2-pod0",
                                                            pod_ip(lab, "cone-vm-pod0"))}
    try:
        time.sleep(2)
        started = time.monotonic()
        restart = raven("lab", "agent-restart", lab, VM_NODE, timeout=900)
        sys.stderr.write(f"\n[vm-lab] agent-restart on {VM_NODE} to ready: "
                         f"{time.monotonic() - started:.0f}s\n")
        time.sleep(2)
    finally:
        results = {name: stop_probe(proc) for name, proc in probes.items()}
    assert restart.returncode == 0, restart.stderr
    assert agent_pid(lab, VM_NODE) not in (None, before)
    for name, result in results.items():
        assert result["sent"] > 100, (name, result)
        assert result["received"] == result["sent"], (name, result)


def wait_ready_reason(lab: str, pool: str, reason: str, timeout: float = 300.0) -> None:
    gateway = next(p["gateway"] for p in status(lab)["pools"] if p["name"] == pool)
    deadline = time.monotonic() + timeout
    ready: dict = {}
    while time.monotonic() < deadline:
        obj = cluster.kubectl_json(lab, "get", "gateway", gateway)
        ready = next((c for c in (obj.get("status") or {}).get("conditions", [])
                      if c["type"] == "Ready"), {})
        if ready.get("reason") == reason:
            return
        time.sleep(1)
    raise AssertionError(f"Gateway {gateway}: Ready never had reason {reason}: {ready}")


def guest_uptime(lab: str) -> float:
    return float(in_target(lab, VM_NODE, "cat", "/proc/uptime").split()[0])


def test_vm_gateway_rebooted_while_its_pool_is_cut_off_keeps_its_identity(lab: str) -> None:
    wait_all_pairs(lab, timeout=60)
    mac = in_devices(lab, VM_NODE, "cat", "/sys/class/net/raven0/address").strip()
    key = in_devices(lab, VM_NODE, "wg", "show", "raven-wg0", "public-key").strip()
    uptime = guest_uptime(lab)
    raven("lab", "disconnect", lab, VM_POOL, check=True)
    try:
        # The event the power cut must come after: the controller has seen every heartbeat of
        # the pool go stale and keeps its gateway anyway (Ready reason KeptWithoutHeartbeat).
        wait_ready_reason(lab, VM_POOL, "KeptWithoutHeartbeat")
        raven("lab", "node-down", lab, VM_NODE, check=True)
        assert not status(lab)["processes"] or not any(
            p["target"] == VM_NODE and p["name"] == "vm" and p["running"]
            for p in status(lab)["processes"])  # power cut: qemu is gone
        started = time.monotonic()
        raven("lab", "node-up", lab, VM_NODE, "--reboot", timeout=1200, check=True)
        booted = time.monotonic() - started
        assert guest_uptime(lab) < uptime or uptime < 60  # a new kernel booted
        wait_all_pairs(lab, timeout=900)
        sys.stderr.write(f"\n[vm-lab] node-up --reboot of {VM_NODE}: booted and wired in "
                         f"{booted:.0f}s, all pairs answer {time.monotonic() - started:.0f}s "
                         "after the start (pool cut off from the control plane)\n")
        assert in_devices(lab, VM_NODE, "cat", "/sys/class/net/raven0/address").strip() == mac
        assert in_devices(lab, VM_NODE, "wg", "show", "raven-wg0", "public-key").strip() == key
        link = json.loads(in_devices(lab, VM_NODE, "ip", "-j", "-d", "link", "show",
                                     "raven-wg0"))[0]
        assert link["linkinfo"]["info_kind"] == "wireguard"
    finally:
        raven("lab", "reconnect", lab, VM_POOL)
    wait_all_pairs(lab, timeout=300)


def test_down_leaves_no_qemu_tap_namespace_or_file(lab: str) -> None:
    assert any(p["name"] == "vm" and p["running"] for p in status(lab)["processes"])
    assert lab in qemu_pids().values()
    down = raven("lab", "down", lab, timeout=120)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(lab)


# --- interrupted and crashed `up` ----------------------------------------------------------------

def _up_until_qemu_runs(name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*RAVEN, "lab", "up", TOPOLOGY, "--name", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while name not in qemu_pids().values():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "qemu never started"
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_up_stopped_while_a_vm_boots_leaves_nothing(how: str) -> None:
    reason = vm.unavailable()
    if reason:
        pytest.skip(reason)
    name = f"rvt-vmx-{secrets.token_hex(3)}"
    try:
        proc = _up_until_qemu_runs(name)
        if how == "SIGINT":
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 128 + signal.SIGINT, err
            assert_nothing_left(name)  # `up` removed its own lab
        else:
            os.kill(proc.pid, signal.SIGKILL)  # a crash: nothing of `up` runs any more
            proc.communicate(timeout=30)
            netns = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                   text=True).stdout
            assert f"{name}.cone-vm" in netns  # the crash left the lab behind ...
            down = raven("lab", "down", name, timeout=120)
            assert down.returncode == 0, down.stderr
            assert_nothing_left(name)  # ... and `lab down` removes all of it, qemu included
    finally:
        raven("lab", "down", name, timeout=120)
