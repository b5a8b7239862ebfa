"""The probe echo responder: a tiny process of its own, so it outlives agent restarts.

Why a process: an agent restart leaves the data plane in place (hitless); if the agent itself
answered the probes, the pool would see its gateway silent for the second a restart takes and
fail over. Like wireguard-go, the responder is started once and left running; `raven agent
cleanup` stops it (`stop`).

Run as a script with the standard library only (`python -I -S responder.py --port P [--netns
PATH] [--advertise FILE]`): it answers each probe request (raven.healthprobe.wire: 16 bytes,
"RVNP", kind 1) with the same bytes of kind 2, from the address it was sent to, out of the
device it arrived on (IP_PKTINFO), so the answer crosses the same tunnel back. Anything else is
ignored. When the request asks for it (flag ADVERTISE) and the agent wrote its claim to FILE
("<gateway> <controller's choice> <since, unix seconds>", raven.pool_claims), the reply carries
"<gateway> <controller's choice> <age in ms>": the age, not the time, so that nodes compare
claims without comparing clocks. The file is read again only when it changes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

# The wire format of raven.healthprobe.wire (kept equal by tests/unit/test_failover_decision.py).
MAGIC = b"RVNP"
REQUEST = 1
REPLY = 2
SIZE = 16
ADVERTISE = 0x01
MAX_ADVERT = 200
ADVERT_FILE = "pool-claim"  # in the agent's state directory
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; the name is missing before 3.13
_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo
CLONE_NEWNET = 0x40000000
PID_FILE = "probe-responder.pid"
# The second responder, in the tunnel namespace of an active gateway (docs/tunnel-namespace.md):
# the probes to its VTEP arrive there. Stopped when the plan loses that namespace, before the
# agent could make the namespace again (it would keep the old one alive, empty, for nothing).
TUNNEL_PID_FILE = "probe-responder-tunnel.pid"


class _Claim:
    """The agent's claim as last written to its file (read again when the file changes)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.fields: tuple[str, str, float] | None = None

    def payload(self) -> bytes:
        if self.path is None:
            return b""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)
            if stamp != self.stamp:
                with open(self.path, encoding="ascii") as f:
                    gateway, head, since = f.read().split()
                self.fields, self.stamp = (gateway, head, float(since)), stamp
        except (OSError, ValueError):  # no claim (yet), or a torn one: say nothing
            self.fields, self.stamp = None, None
        if self.fields is None:
            return b""
        gateway, head, since = self.fields
        age = max(0, int((time.time() - since) * 1000))
        return f"{gateway} {head} {age}".encode("ascii")[:MAX_ADVERT]


def serve(port: int, advert: str | None = None) -> None:
    claim = _Claim(advert)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", port))
    space = socket.CMSG_SPACE(_PKTINFO.size)
    while True:
        data, ancillary, _flags, peer = sock.recvmsg(64, space)
        if len(data) != SIZE or data[:4] != MAGIC or data[4] != REQUEST:
            continue
        info = next((d for level, kind, d in ancillary
                     if level == socket.IPPROTO_IP and kind == IP_PKTINFO), None)
        if info is None or len(info) < _PKTINFO.size:
            continue
        ifindex, _spec_dst, dst = _PKTINFO.unpack(info[:_PKTINFO.size])
        reply = data[:4] + bytes([REPLY]) + data[5:]
        if data[5] & ADVERTISE:
            reply += claim.payload()
        with contextlib.suppress(OSError):  # a device that just went: the prober sees a loss
            sock.sendmsg([reply], [(socket.IPPROTO_IP, IP_PKTINFO,
                                    _PKTINFO.pack(ifindex, dst, b"\0\0\0\0"))], 0, peer)


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.close(fd)


# --- the agent's side (imported as raven.healthprobe.responder) -------------------------------

def _alive(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(__file__).name.encode() in b" ".join(cmdline) and str(port).encode() in cmdline


def _recorded_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _named(netns: str) -> bool:
    from raven.dataplane import netns as namespaces  # only the agent asks

    return namespaces.exists(netns)


def _recorded(pid_file: Path, port: int, netns: str | None) -> bool:
    """True when `pid_file` names a live responder of ours for `port` in namespace `netns`.
    Asked before `_answers`: a responder started a moment ago may not have bound its port
    yet, and a second one started then would fail to bind, exit, and leave its dead pid in
    the file (so `stop` would find nothing to stop)."""
    pid = _recorded_pid(pid_file)
    if pid is None or not _alive(pid, port):
        return False
    from raven.dataplane import netns as namespaces  # only the agent asks

    where = namespaces.netns_path(netns) if netns else Path("/proc/self/ns/net")
    target = namespaces.inode(netns) if netns else os.stat(where).st_ino
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        if theirs == target:
            return True
        # Started for that namespace a moment ago and not in it yet (it enters it itself,
        # once Python is up): still ours, not to be replaced.
        starting = theirs == os.stat("/proc/self/ns/net").st_ino
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(netns) and starting and str(where).encode() in cmdline


def _answers(port: int, netns: str | None) -> bool:
    """True when a responder answers on `port` (asked over loopback in the namespace)."""
    from raven.dataplane.netns import entered  # only the agent asks; the script never does

    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(0.3)
        sock.sendto(MAGIC + bytes([REQUEST]) + bytes(11), ("127.0.0.1", port))
        data = sock.recv(64)
        return len(data) == SIZE and data[:4] == MAGIC and data[4] == REPLY
    except OSError:
        return False
    finally:
        sock.close()


def ensure(state_dir: Path, port: int, netns: str | None = None,
           forget_claim: bool = False, pid_file: str = PID_FILE) -> int | None:
    """Start the responder for `port` in namespace `netns` (a name; None = ours) unless one
    already answers there; returns the pid started (kept in the state directory, like
    wireguard-go's), or None when one was running. `forget_claim` (the agent's start): when a
    responder must be started, the node was down or is new, and what it claimed before is
    void: it must learn what its pool uses now before claiming anything (raven.pool_claims)."""
    if netns and not _named(netns):
        return None  # no such namespace (any more): nothing to serve there
    if _recorded(state_dir / pid_file, port, netns):
        return None  # ours runs there (perhaps still binding its port)
    # One recorded in another namespace (a tunnel namespace deleted meanwhile) would keep that
    # namespace alive, serving nobody: stopped before another is started.
    stop(state_dir, port, pid_file)
    if _answers(port, netns):
        return None
    argv = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "--port", str(port),
            "--advertise", str(state_dir / ADVERT_FILE)]
    if forget_claim:
        (state_dir / ADVERT_FILE).unlink(missing_ok=True)
    if netns:
        from raven.dataplane.netns import netns_path

        argv += ["--netns", str(netns_path(netns))]
    import subprocess  # only the agent starts it

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    (state_dir / pid_file).write_text(f"{proc.pid}\n")
    return proc.pid


def stop(state_dir: Path, port: int, pid_file_name: str = PID_FILE) -> bool:
    """Stop the responder (`raven agent cleanup`); True when one was running."""
    pid_file = state_dir / pid_file_name
    pid = _recorded_pid(pid_file)
    if pid is None:
        return False
    pid_file.unlink(missing_ok=True)
    if not _alive(pid, port):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="raven data-path probe echo responder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--netns", help="path of a network namespace to serve in")
    parser.add_argument("--advertise", help="file with the agent's claim (appended on request)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.netns:
        _enter(args.netns)
    try:
        serve(args.port, args.advertise)
    except OSError as exc:  # e.g. the port is taken by a responder already running
        print(f"probe responder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
