"""Control channel of a lab VM node: the guest's command server and the host's client.

Standard library only, and run as a script (`python3 -I -S vmguest.py ...`): the guest starts
it as its first process, and under software emulation a Python that scans no site-packages
starts in about a second instead of tens of seconds.

    vmguest.py serve ADDR:PORT            in the guest: run commands for the host, forever
    vmguest.py call ADDR:PORT [--netns NS] [--timeout S] [--stdin] -- ARGV...
                                          on the host (inside the node's host namespace, which
                                          holds the VM's control NIC): run ARGV in the guest

Protocol (TCP over the VM's own link-local control link; one command per connection):
- client -> server: one JSON line {"argv": [...], "netns": NS|null, "env": {...},
  "stdin": base64}; or {"op": "ping"}, answered with {"exit": 0, "uptime": S}.
- server -> client: JSON lines {"o": base64} (stdout) and {"e": base64} (stderr) as the
  command writes them, then {"exit": code} (negative: killed by that signal).
- client -> server, later: {"signal": N} lines, sent to the command's process group.
Rules kept:
- A command runs in its own session; `netns` (a name under /run/netns of the guest) is entered
  with setns(2) before it starts.
- A connection that closes before the command ended (the host-side client was killed, or the
  host went away) SIGKILLs the command's process group: a guest process never outlives the host
  process that stands for it, so the lab's supervisor (pid records, process groups) and
  `raven lab down` govern guest daemons as they govern host ones.
- The client sends its standard input only with --stdin (read to the end first); otherwise
  the command's stdin is empty. It forwards SIGTERM, SIGINT and SIGHUP to the command, passes
  its exit code through (128 + N when killed by signal N) and forwards the RAVEN_* variables
  of its environment.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

CLONE_NEWNET = 0x40000000
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETNS_DIR = "/run/netns"


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


# --- server (guest) ---------------------------------------------------------------------------


def _enter_netns(name: str) -> None:
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.lock, contextlib.suppress(OSError):
            self.sock.sendall(data)


def _pump(stream, conn: _Conn, key: str) -> None:
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            return
        conn.send({key: base64.b64encode(chunk).decode()})


def _handle(sock: socket.socket) -> None:
    conn = _Conn(sock)
    reader = sock.makefile("rb")
    try:
        request = json.loads(reader.readline() or b"{}")
        if request.get("op") == "ping":
            with open("/proc/uptime") as f:
                conn.send({"exit": 0, "uptime": float(f.read().split()[0])})
            return
        netns = request.get("netns")
        env = {"PATH": GUEST_PATH, **os.environ, **(request.get("env") or {})}
        try:
            proc = subprocess.Popen(
                request["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd="/", start_new_session=True,
                preexec_fn=(lambda: _enter_netns(netns)) if netns else None)
        except (OSError, subprocess.SubprocessError, KeyError, TypeError) as exc:
            conn.send({"e": base64.b64encode(f"guest: cannot run: {exc}\n".encode()).decode()})
            conn.send({"exit": 127})
            return
        pumps = [threading.Thread(target=_pump, args=(s, conn, k), daemon=True)
                 for s, k in ((proc.stdout, "o"), (proc.stderr, "e"))]
        for t in pumps:
            t.start()
        with contextlib.suppress(OSError):
            proc.stdin.write(base64.b64decode(request.get("stdin") or ""))
        with contextlib.suppress(OSError):
            proc.stdin.close()

        def control() -> None:  # signals from the host; EOF = the host side is gone
            for line in reader:
                with contextlib.suppress(ValueError, OSError, TypeError):
                    os.killpg(proc.pid, int(json.loads(line)["signal"]))
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)

        threading.Thread(target=control, daemon=True).start()
        code = proc.wait()
        for t in pumps:
            t.join(timeout=2.0)  # a daemon the command left behind may hold its pipes
        conn.send({"exit": code})
    except (OSError, ValueError) as exc:
        with contextlib.suppress(Exception):
            conn.send({"e": base64.b64encode(f"guest: {exc}\n".encode()).decode(), "exit": 255})
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.close()


def serve(address: str) -> None:
    server = socket.create_server(_addr(address), reuse_port=False)
    print(f"raven-vmguest: serving on {address}", flush=True)
    while True:
        sock, _ = server.accept()
        threading.Thread(target=_handle, args=(sock,), daemon=True).start()


# --- client (host) ----------------------------------------------------------------------------


def call(address: str, argv: list[str], netns: str | None = None, stdin: bytes = b"",
         connect_timeout: float = 5.0) -> int:
    """Run `argv` in the guest; stream its output to ours; return its exit status."""
    sock = socket.create_connection(_addr(address), timeout=connect_timeout)
    sock.settimeout(None)
    # A guest that dies (qemu killed or crashed) sends no FIN: keepalives end the wait for it,
    # so the host process standing for a guest daemon does not outlive the guest for long.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    env = {k: v for k, v in os.environ.items() if k.startswith("RAVEN_")}
    request = {"argv": argv, "netns": netns, "env": env,
               "stdin": base64.b64encode(stdin).decode()} if argv else {"op": "ping"}
    sock.sendall((json.dumps(request) + "\n").encode())

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            sock.sendall((json.dumps({"signal": signum}) + "\n").encode())

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    buffer = b""
    while True:
        try:
            ready, _, _ = select.select([sock], [], [])
            chunk = sock.recv(65536) if ready else b""
        except InterruptedError:
            continue
        except OSError as exc:  # keepalive gave up: the guest is gone
            sys.stderr.write(f"raven-vmguest: lost the guest: {exc}\n")
            return 255
        if not chunk:
            sys.stderr.write("raven-vmguest: the guest closed the connection\n")
            return 255
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            for key, out in (("o", sys.stdout), ("e", sys.stderr)):
                if key in message:
                    out.buffer.write(base64.b64decode(message[key]))
                    out.buffer.flush()
            if "exit" in message:
                if "uptime" in message:
                    print(json.dumps({"uptime": message["uptime"]}), flush=True)
                code = int(message["exit"])
                return 128 - code if code < 0 else code


def main(args: list[str]) -> int:
    if len(args) >= 2 and args[0] == "serve":
        serve(args[1])
        return 0
    if len(args) >= 2 and args[0] == "call":
        address, rest = args[1], args[2:]
        netns, timeout, with_stdin = None, 5.0, False
        while rest and rest[0] != "--":
            if rest[0] == "--stdin":
                with_stdin, rest = True, rest[1:]
            elif rest[0] == "--netns" and len(rest) > 1:
                netns, rest = rest[1], rest[2:]
            elif rest[0] == "--timeout" and len(rest) > 1:
                timeout, rest = float(rest[1]), rest[2:]
            else:
                break
        if rest[:1] != ["--"]:
            sys.stderr.write("usage: vmguest.py call ADDR:PORT [--netns NS] -- ARGV...\n")
            return 2
        argv = rest[1:]
        data = sys.stdin.buffer.read() if with_stdin and argv else b""
        try:
            return call(address, argv, netns, data, timeout)
        except OSError as exc:
            sys.stderr.write(f"raven-vmguest: cannot reach the guest at {address}: {exc}\n")
            return 255
    sys.stderr.write("usage: vmguest.py serve ADDR:PORT | call ADDR:PORT [--netns NS] -- ARGV\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
