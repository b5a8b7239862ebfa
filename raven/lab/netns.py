"""The lab's one adapter to the kernel and the system tools (ip, nft, sysctl, nsenter, unshare).

Every process the lab runs to configure or query the kernel, and every daemon it starts, goes
through this module, so the rest of raven.lab never builds an `ip`/`nft` command line by hand.
Rules kept:
- Output is read as JSON only (`ip -j`, `nft -j`, the ICMP probe's JSON); no tool's text is
  scraped. A command whose outcome matters without output is judged by its exit status.
- Configuration goes through `ip [-n NS] -batch -` (one process per namespace, not per command).
- `NETNS_DIR` is the one place that knows where named network namespaces live.
- Processes inside a namespace are found by comparing /proc/PID/ns/net with the namespace's
  inode, never by name; a process inside a lab namespace belongs to that lab.
- Nothing here touches the root network namespace's links or routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from raven.errors import CommandError
from raven.lab import icmp

NETNS_DIR = Path("/run/netns")  # where `ip netns add` binds named namespaces
LAB_MARKER = "raven-lab:"  # alias of `lo` in every lab namespace: raven-lab:<lab>


def netns_path(netns: str) -> Path:
    return NETNS_DIR / netns


# --- running tools ----------------------------------------------------------------------------

def run(argv: list[str], stdin: str | None = None, check: bool = True,
        timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; CommandError naming the command when it fails and `check`."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(f"`{' '.join(argv[:6])}` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def run_json(argv: list[str], stdin: str | None = None, timeout: float = 120.0) -> Any:
    """Run a tool that prints JSON and return the parsed document (None for empty output)."""
    proc = run(argv, stdin=stdin, timeout=timeout)
    if not proc.stdout.strip():
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise CommandError(f"`{' '.join(argv[:6])}` printed no valid JSON: {exc}") from None


def spawn(argv: list[str], log: IO[bytes] | int | None, env: Mapping[str, str],
          umask: int = -1) -> subprocess.Popen:
    """Start a daemon in its own session (so its whole process group can be signalled),
    stdout and stderr into `log`; with `umask` (e.g. 0o077) everything it creates is private."""
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env=dict(env), start_new_session=True, close_fds=True, umask=umask,
    )


# --- entering a namespace -----------------------------------------------------------------------

def netns_exec_argv(netns: str) -> list[str]:
    """Prefix that runs a command in a named namespace (with /sys remounted for it)."""
    return ["ip", "netns", "exec", netns]


def nsenter_argv(pid: int) -> list[str]:
    """Prefix that runs a command in the network AND mount namespace of process `pid`."""
    return ["nsenter", "--target", str(pid), "--mount", "--net", "--"]


def nsenter_net_argv(netns: str) -> list[str]:
    """Cheapest prefix into a named namespace: only the network namespace is entered."""
    return ["nsenter", f"--net={netns_path(netns)}", "--"]


# Holder of a lab host's private mount namespace: $1 is the host's directory under the run dir.
HOLDER_SCRIPT = r"""
set -e
# Drop this copy of the host's netns bind mounts so they do not keep other namespaces alive.
umount -R -l "$2" 2>/dev/null || true
mkdir -p /run/wireguard /run/raven
mount --bind "$1/wireguard" /run/wireguard
mount --bind "$1/raven" /run/raven
# Nodes route their pods' traffic, IPv4 and IPv6 (IPv6 stays on: dual-stack pods need it).
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
exec sleep infinity
"""
HOLDER_COMM = "sleep"  # /proc/PID/comm of a holder that finished its setup


def holder_argv(netns: str, host_dir: Path) -> list[str]:
    """`ip netns exec` remounts /sys for the namespace; unshare keeps a private mount namespace
    alive in which /run/wireguard and /run/raven are the host's own directories."""
    return [*netns_exec_argv(netns), "unshare", "--mount", "--propagation", "private",
            "sh", "-c", HOLDER_SCRIPT, "raven-lab-holder", str(host_dir), str(NETNS_DIR)]


# --- ip ---------------------------------------------------------------------------------------

def ip_batch(lines: Iterable[str], netns: str | None = None, force: bool = False,
             ipv6: bool = False) -> None:
    """Run `ip [-n NS] [-force] [-6] -batch -` with the given command lines (`ipv6`: for the
    commands that act on IPv4 alone unless told, e.g. `route flush`, `rule flush`)."""
    text = "\n".join(lines) + "\n"
    argv = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + \
        (["-6"] if ipv6 else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and not force:
        where = f" in {netns}" if netns else ""
        raise CommandError(f"ip batch{where} failed: {(proc.stderr or proc.stdout).strip()}")


def ip_json(netns: str, *args: str) -> list[dict]:
    """`ip -n NS -j ARGS`; [] when the object does not exist (ip fails) or prints nothing."""
    proc = run(["ip", "-n", netns, "-j", *args], check=False)
    if proc.returncode != 0:
        return []
    try:
        data = json.loads(proc.stdout or "[]")
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def list_netns() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir())


def lo_alias(netns: str) -> str:
    with contextlib.suppress(IndexError, AttributeError):
        return str(ip_json(netns, "link", "show", "lo")[0].get("ifalias", ""))
    return ""


def netns_inode(netns: str) -> int | None:
    try:
        return os.stat(netns_path(netns)).st_ino
    except OSError:
        return None


def pids_in(inodes: set[int], kind: str = "net") -> list[int]:
    """Pids of every process whose namespace of `kind` ("net", "mnt") is one of `inodes`."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if os.stat(entry / "ns" / kind).st_ino in inodes:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def delete_netns_inside(prefix: list[str], name: str) -> None:
    """`ip netns del NAME` behind `prefix` (a lab host's: its mount namespace, where an agent
    named its tunnel namespace); nothing when there is none."""
    run([*prefix, "ip", "netns", "del", name], check=False)


def ns_inode(pid: int, kind: str = "net") -> int | None:
    """The inode of process `pid`'s namespace of `kind`; None when it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def private_mounts_of(pids: list[int]) -> set[int]:
    """The mount namespaces of `pids` other than ours: the lab hosts' private ones. A process
    there may sit in a network namespace the host cannot name (an agent's tunnel namespace,
    named inside the host's mount namespace only), so finding a lab's processes by their
    network namespaces alone misses it."""
    hosts = {ns_inode(os.getpid(), "mnt"), ns_inode(1, "mnt")}  # ours and the machine's
    return {i for i in (ns_inode(p, "mnt") for p in pids) if i is not None and i not in hosts}


# --- sysctl and nftables ----------------------------------------------------------------------

def sysctl(netns: str, *settings: str) -> None:
    """Set `key=value` sysctls inside a namespace."""
    run([*netns_exec_argv(netns), "sysctl", "-qw", *settings])


def nft_apply(netns: str, ruleset: str) -> None:
    """Load an nftables ruleset (one atomic transaction) into a namespace."""
    run([*netns_exec_argv(netns), "nft", "-f", "-"], stdin=ruleset)


def nft_tables(netns: str) -> list[tuple[str, str]]:
    """(family, name) of every nftables table of a namespace, from `nft -j`."""
    data = run_json([*netns_exec_argv(netns), "nft", "-j", "list", "tables"]) or {}
    return [(t["table"]["family"], t["table"]["name"]) for t in data.get("nftables", [])
            if "table" in t]


def nft_delete_table(netns: str, family: str, table: str) -> bool:
    """Delete one table if it exists; True when it existed."""
    if (family, table) not in nft_tables(netns):
        return False
    run([*netns_exec_argv(netns), "nft", "delete", "table", family, table])
    return True


# Deletes every conntrack entry of the namespace (IPv4 and IPv6): an IPCTNL_MSG_CT_DELETE with
# no attributes over netfilter netlink, as `conntrack -F` sends (that tool is not installed).
CONNTRACK_FLUSH = r"""
import socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
for family in (socket.AF_INET, socket.AF_INET6):
    body = struct.pack("BBH", family, 0, 0)  # nfgenmsg
    s.send(struct.pack("=IHHII", 16 + len(body), (1 << 8) | 2, 0x5, 1, 0) + body)
    reply = s.recv(4096)
    err = struct.unpack_from("=i", reply, 16)[0]
    if err not in (0, -2):  # ENOENT: nothing to flush
        raise SystemExit(f"conntrack flush failed: errno {-err}")
"""


def conntrack_flush(netns: str) -> None:
    """Forget every connection (and so every NAT mapping) the namespace's conntrack holds."""
    run([*netns_exec_argv(netns), sys.executable, "-I", "-S", "-c", CONNTRACK_FLUSH])


def nft_flush(netns: str) -> None:
    run([*netns_exec_argv(netns), "nft", "flush", "ruleset"])


# --- reachability ---------------------------------------------------------------------------

# --- iperf3 -------------------------------------------------------------------------------------

def iperf3_server_argv(netns: str, address: str, port: int) -> list[str]:
    """An iperf3 server in `netns` for exactly one test (`-1`), bound to `address`."""
    return [*netns_exec_argv(netns), "iperf3", "-s", "-1", "-B", address, "-p", str(port)]


def iperf3_client_argv(netns: str, server: str, port: int, seconds: float,
                       extra: tuple[str, ...] = ()) -> list[str]:
    """An iperf3 client in `netns` that prints its result as JSON (`-J`)."""
    return [*netns_exec_argv(netns), "iperf3", "-c", server, "-p", str(port), "-t",
            f"{seconds:g}", "-J", *extra]


def icmp_probe_many(probes: Mapping[str, list[str]], tries: int = 2,
                    timeout_s: float = 1.0) -> dict[str, dict[str, float | None]]:
    """Echo, from inside each namespace, each of its addresses, all at once:
    namespace -> address -> RTT in ms (None when no reply came).

    One run of raven/lab/icmp.py (standard library only, started with -I -S so it needs no
    site-packages) for all sources; it enters each namespace itself and prints JSON.
    """
    wanted = {ns: list(addresses) for ns, addresses in probes.items() if addresses}
    if not wanted:
        return {ns: {} for ns in probes}
    by_path = {str(netns_path(ns)): ns for ns in wanted}
    request = {"tries": tries, "timeout": timeout_s,
               "probes": [{"netns": path, "addresses": wanted[ns]}
                          for path, ns in by_path.items()]}
    argv = [sys.executable, "-I", "-S", str(Path(icmp.__file__))]
    data = run_json(argv, stdin=json.dumps(request), timeout=30 + tries * timeout_s * 2) or {}
    out: dict[str, dict[str, float | None]] = {ns: dict.fromkeys(a) for ns, a in probes.items()}
    for result in data.get("results", []):
        ns = by_path.get(result.get("netns"))
        if ns is not None and result.get("address") in out[ns]:
            out[ns][result["address"]] = result.get("rttMs")
    return out


def icmp_probe(netns: str, addresses: list[str], tries: int = 2,
               timeout_s: float = 1.0) -> dict[str, float | None]:
    """icmp_probe_many for one source namespace: address -> RTT in ms, None if no reply."""
    return icmp_probe_many({netns: addresses}, tries, timeout_s)[netns]


# --- a pod's sandbox and "container" -------------------------------------------------------------

# $0 is the pod's name. The sandbox plays Kubernetes' pause container: it holds the pod's UTS
# namespace (hostname = pod name) and is the process whose namespaces an exec enters (a node's
# private mount namespace has no /run/netns to find the pod's network namespace by name).
POD_SANDBOX_SCRIPT = 'hostname "$0" && exec sleep infinity'
# Without a sandbox (tests outside a lab): a UTS namespace of its own named after the pod; `exec`
# keeps the command's status (127 with the shell's message when it does not exist).
POD_EXEC_SCRIPT = 'hostname "$0" && exec "$@"'


def pod_sandbox_argv(hostname: str) -> list[str]:
    """The pod's sandbox process (run in the pod's network namespace by the supervisor)."""
    return ["unshare", "--uts", "--", "sh", "-c", POD_SANDBOX_SCRIPT, hostname]


def pod_exec_argv(sandbox_pid: int | None, hostname: str) -> list[str]:
    """Prefix that runs a command the way a pod's container sees it: in the network and UTS
    namespaces of the pod's sandbox, or without one in a UTS namespace named after the pod."""
    if sandbox_pid is not None:
        return ["nsenter", "--target", str(sandbox_pid), "--net", "--uts", "--"]
    return ["unshare", "--uts", "--", "sh", "-c", POD_EXEC_SCRIPT, hostname]


# --- command lines run inside a VM node's guest (raven.lab.vm sends them over its channel) ------

def ip_batch_argv(netns: str | None = None) -> list[str]:
    """`ip [-n NS] -batch -` (lines on stdin), for a kernel this process cannot enter."""
    return ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]


def sysctl_argv(*settings: str) -> list[str]:
    return ["sysctl", "-qw", *settings]


def ip_json_argv(*args: str) -> list[str]:
    return ["ip", "-j", *args]


def guest_boot_command(nics: Mapping[str, str], control: str, address: str,
                       server: list[str]) -> str:
    """Shell command a VM guest runs first: rename its NICs by MAC (`nics`: MAC -> name, names
    not eth*), give the control NIC `address` (CIDR), then exec the command server."""
    import shlex

    lines = ["set -e"]
    for mac, name in nics.items():
        lines.append(f"for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {mac} ] && "
                     f"ip link set \"${{d##*/}}\" name {name} || true; done")
    lines += [f"ip address add {address} dev {control}", f"ip link set {control} up",
              "ip link set lo up", "exec " + shlex.join(server)]
    return "; ".join(lines)


# --- the delay stage --------------------------------------------------------------------------

def delayline_argv(a: str, b: str, delay_ms: float) -> list[str]:
    """The userspace delay stage between interfaces `a` and `b` (raven.lab.delayline), run as a
    lab process in the router's namespace (raven.lab.runtime.start_process adds the prefix)."""
    return [sys.executable, "-I", "-m", "raven.lab.delayline", a, b, f"{delay_ms:g}"]
