"""wireguard-go supervision: started detached, tracked by a pid file, re-adopted, killed only by
cleanup.

Rules kept:
- the daemon runs in its own session (`start_new_session`), so SIGTERM to the agent or its
  process group leaves the tunnel up (hitless agent restart); the next agent re-adopts it from
  `<state_dir>/wireguard-go.<ifname>.pid` after checking /proc that the pid is still a
  wireguard-go for this interface (pids get reused);
- the UAPI socket is `/var/run/wireguard/<ifname>.sock`, shared by all network namespaces of a
  mount namespace. With `wireguard_run_dir` set, the daemon is started in a private mount
  namespace where that directory is bind-mounted on /var/run/wireguard, so its socket appears
  in our directory and nobody else's /var/run/wireguard is touched;
- only a process whose pid we recorded is ever signalled.

Scheduling: with kernel.sched_autogroup_enabled=1 the new session is also a new autogroup. That
is where the daemon belongs (on a real gateway it is apart from the workloads, as under systemd);
raising the group's weight (/proc/<pid>/autogroup nice -5 / -10) measured no gain in the lab
(docs/benchmarks.md, Throughput), so there is no setting for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from raven.dataplane import netns
from raven.dataplane.errors import DataplaneError
from raven.dataplane.wireguard.uapi import UapiClient

DEFAULT_RUN_DIR = Path("/var/run/wireguard")
USERSPACE_ENV = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"
_START_TIMEOUT = 10.0


class WireGuardGo:
    def __init__(self, *, netns_name: str | None, ifname: str, state_dir: Path,
                 run_dir: Path | None, binary: str) -> None:
        self.netns = netns_name
        self.ifname = ifname
        self.state_dir = state_dir
        self.private_run_dir = run_dir
        self.run_dir = run_dir or DEFAULT_RUN_DIR
        self.binary = binary
        self.pid_file = state_dir / f"wireguard-go.{ifname}.pid"
        self.log_file = state_dir / f"wireguard-go.{ifname}.log"
        self.uapi = UapiClient(self.run_dir / f"{ifname}.sock")
        self._child: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """Pid of our running daemon for this interface, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if self._child is not None and self._child.pid == pid and self._child.poll() is not None:
            return None  # our own child exited (reaped now)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        if state == "Z" or not any(a.endswith(b"wireguard-go") for a in cmdline):
            return None
        return pid if self.ifname.encode() in cmdline else None

    def argv(self) -> list[str]:
        daemon = ["env", f"{USERSPACE_ENV}=1", self.binary, "-f", self.ifname]
        if self.private_run_dir is None:
            return [*netns.command_prefix(self.netns), *daemon]
        self.private_run_dir.mkdir(parents=True, exist_ok=True)
        script = ('mkdir -p /var/run/wireguard && mount --bind "$0" /var/run/wireguard '
                  '&& exec "$@"')
        return [*netns.command_prefix(self.netns), "unshare", "--mount", "--propagation",
                "private", "sh", "-c", script, str(self.private_run_dir), *daemon]

    def ensure_running(self) -> bool:
        """Start the daemon unless ours is running and answering. True when started now."""
        if self.pid() is not None and self.uapi.alive():
            return False
        if self.uapi.alive():
            return False  # someone else's daemon for this socket: use it, never kill it
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            try:
                child = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                )
            except FileNotFoundError as exc:
                raise DataplaneError(
                    f"cannot start {self.binary}: {exc.strerror}; install wireguard-go or use the "
                    "kernel backend"
                ) from None
        self._child = child
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{child.pid}\n")
        tmp.replace(self.pid_file)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if child.poll() is not None:
                break
            if self.uapi.alive():
                return True
            time.sleep(0.02)
        tail = self.log_file.read_text(errors="replace")[-800:]
        self.stop()
        raise DataplaneError(
            f"wireguard-go for {self.ifname} did not come up (exit {child.poll()}); log "
            f"{self.log_file}:\n{tail}"
        )

    def stop(self) -> bool:
        """Terminate our daemon (pid file only). True when a process was stopped."""
        pid = self.pid()
        stopped = False
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                stopped = True
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 5
            while self.pid() is not None and time.monotonic() < deadline:
                if self._child is not None and self._child.pid == pid:
                    self._child.poll()
                time.sleep(0.02)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=5)
            self._child = None
        self.pid_file.unlink(missing_ok=True)
        return stopped
