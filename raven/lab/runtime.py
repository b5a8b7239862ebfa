"""Run directory, per-host mount namespaces and the process supervisor of a lab.

Layout of `/run/raven-lab/<lab>/` (RAVEN_LAB_RUN_ROOT overrides the root):
  state.json               {"phase": "building"|"ready", "plan": <plan_to_json>}; written BEFORE
                           the first namespace exists, so `down` always knows what to remove
  logs/<target>.<name>.log one log per supervised process
  pids/<target>.<name>.json {"pid", "start_time", "argv"}: identity of a supervised process
  hosts/<target>/wireguard, hosts/<target>/raven   bound on /run/wireguard and /run/raven
                           inside the host's private mount namespace

Rules kept:
- Every node and the control plane ("hosts") have a holder process started as
  raven.lab.netns.holder_argv (`ip netns exec` + `unshare --mount`, then `sleep infinity`),
  which keeps a private mount namespace alive with the host's own /run/wireguard and
  /run/raven. Commands enter it with raven.lab.netns.nsenter_argv (network + mount namespace).
- A process is ours only if its pid AND its start time (field 22 of /proc/PID/stat) match the
  record: a recycled pid is never signalled. Nothing is ever found or killed by name pattern.
- Each supervised process is a session leader, so its whole process group is signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from raven.errors import CommandError
from raven.lab import guard
from raven.lab import netns as nsutil
from raven.lab.plan import LabPlan, plan_from_json

HOLDER = "holder"  # supervisor name of the mount-namespace holder of a host


def run_root() -> Path:
    return Path(os.environ.get("RAVEN_LAB_RUN_ROOT", "/run/raven-lab"))


def run_dir(lab: str) -> Path:
    return run_root() / lab


def log_path(lab: str, target: str, name: str) -> Path:
    return run_dir(lab) / "logs" / f"{target}.{name}.log"


def pid_path(lab: str, target: str, name: str) -> Path:
    return run_dir(lab) / "pids" / f"{target}.{name}.json"


def host_dir(lab: str, target: str) -> Path:
    return run_dir(lab) / "hosts" / target


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_state(lab: str) -> dict | None:
    try:
        return json.loads((run_dir(lab) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def load_plan(lab: str) -> LabPlan:
    """The plan of a lab that exists; CommandError naming the fix otherwise."""
    state = read_state(lab)
    if state is None:
        known = ", ".join(list_labs()) or "none"
        raise CommandError(f"lab {lab!r} does not exist (labs: {known}); "
                           "start it with `raven lab up FILE`")
    return plan_from_json(state["plan"])


def list_labs() -> list[str]:
    root = run_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir())


# --- process identity -------------------------------------------------------------------------

def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after "pid (comm)" (state first); None when the process is
    gone. comm may hold spaces and parentheses: split after its last ")"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def proc_start_time(pid: int, allow_zombie: bool = False) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None if gone."""
    fields = _stat_fields(pid)
    if fields is None or (fields[0] in ("Z", "X") and not allow_zombie):
        return None
    return int(fields[19])


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (stat's ppid field)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(record: dict) -> bool:
    return proc_start_time(int(record["pid"])) == record["start_time"]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate_record(record: dict, timeout: float = 5.0) -> None:
    """SIGTERM the recorded process group, SIGKILL after `timeout`; only if identity matches."""
    terminate_records([record], timeout)


def terminate_records(records: list[dict], timeout: float = 5.0) -> None:
    """terminate_record for many processes at once (one shared grace period)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 1.0)):
        alive = [r for r in records if _alive(r)]
        for record in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(record["pid"]), sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            for record in alive:
                _reap(int(record["pid"]))
            alive = [r for r in alive if _alive(r)]
            if alive:
                time.sleep(0.005)
        if not alive:
            break
    for record in records:
        _reap(int(record["pid"]))


# --- entering a target --------------------------------------------------------------------------

def _plan_target_netns(lab: str, target: str) -> tuple[LabPlan, str]:
    plan = load_plan(lab)
    targets = plan.targets()
    if target not in targets:
        raise CommandError(f"lab {lab!r} has no target {target!r}; targets: "
                           f"{', '.join(sorted(targets))}")
    return plan, targets[target]


def exec_argv(lab: str, target: str) -> list[str]:
    """Prefix that runs a command in `target`: a host (node, control-plane) gets its netns AND
    private mount namespace; pods and routers get their netns (with /sys remounted)."""
    plan, netns = _plan_target_netns(lab, target)
    from raven.lab import vm

    if vm.node_of(plan, target) is not None:  # a VM node or its pod: through the guest channel
        return vm.exec_argv(lab, plan, target)
    if target in plan.hosts():
        return node_exec_argv(lab, target)
    return nsutil.netns_exec_argv(netns)


def node_exec_argv(lab: str, node: str) -> list[str]:
    """Prefix to run a command inside `node`'s network namespace and private mount namespace."""
    record = _read_record(pid_path(lab, node, HOLDER))
    if record is None or not _alive(record):
        raise CommandError(f"lab {lab!r}: host {node!r} has no running mount-namespace holder; "
                           f"is the lab up? (`raven lab status {lab}`)")
    return nsutil.nsenter_argv(int(record["pid"]))


def tunnel_netns(lab: str, node: str) -> str:
    """The tunnel namespace of a lab node's agent (docs/tunnel-namespace.md): under the lab's
    prefix, as labs share /var/run/netns, so `lab down` removes it with the lab's other
    namespaces."""
    return f"{lab}.{node}-tun"


def device_netns(lab: str, node: str) -> str | None:
    """The namespace that holds the node's raven0 and raven-wg0 now: its tunnel namespace while
    the node is an active gateway with one (docs/tunnel-namespace.md), else None (the node's
    own). The agent names it inside the node's mount namespace (as in a pod without
    Bidirectional propagation of /var/run/netns), so it is looked up through the holder's
    root: a namespace is mounted there when the name is on nsfs."""
    record = _read_record(pid_path(lab, node, HOLDER))
    if record is None or not _alive(record):
        return None
    name = tunnel_netns(lab, node)
    try:
        mounted = os.stat(f"/proc/{int(record['pid'])}/root{nsutil.NETNS_DIR}/{name}").st_dev
    except OSError:
        return None
    return name if mounted == os.stat("/proc/self/ns/net").st_dev else None


def devices_exec_argv(lab: str, node: str) -> list[str]:
    """Prefix to run a command where the node's overlay devices are (`device_netns`): inside
    the node's mount namespace, then its tunnel namespace with /sys remounted for it."""
    where = device_netns(lab, node)
    return node_exec_argv(lab, node) + (nsutil.netns_exec_argv(where) if where else [])


# --- supervisor ----------------------------------------------------------------------------------

def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or any(c.isspace() for c in name):
        raise CommandError(f"process name {name!r} is not valid: use letters, digits, '-', '_'")


def start_process(lab: str, target: str, name: str, argv: list[str],
                  env: dict[str, str] | None = None, umask: int = -1,
                  host_side: bool = False) -> int:
    """Start `argv` in `target` (node: netns + mount ns) as a daemon logging to
    logs/<target>.<name>.log; return its pid. It is stopped by stop_process or `raven lab down`.
    `umask` (e.g. 0o077) applies to everything the process creates. On a VM node a command
    runs in the guest (raven.lab.vm), unless `host_side` (the VM's own qemu)."""
    _check_name(name)
    if not argv:
        raise CommandError(f"lab {lab!r}: start_process {target}/{name}: empty command")
    _, netns = _plan_target_netns(lab, target)
    prefix = node_exec_argv(lab, target) if host_side else exec_argv(lab, target)
    existing = _read_record(pid_path(lab, target, name))
    if existing is not None and _alive(existing):
        raise CommandError(f"lab {lab!r}: process {name!r} already runs in {target!r} "
                           f"(pid {existing['pid']}); stop it first")
    log = log_path(lab, target, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    # RAVEN_LAB / RAVEN_LAB_TARGET: every lab process carries its lab's name (/proc/PID/environ).
    full_env = {**os.environ, **(env or {}), "RAVEN_LAB": lab, "RAVEN_LAB_TARGET": target}
    # A stop signal must not fall between the start and the record: `down` needs the record.
    with guard.deferred(), open(log, "ab") as out:
        proc = nsutil.spawn(prefix + list(argv), out, full_env, umask=umask)
        # Not reaped yet, so /proc/PID exists even if it already exited.
        start = proc_start_time(proc.pid, allow_zombie=True)
        write_json_atomic(pid_path(lab, target, name), {
            "pid": proc.pid, "start_time": start, "argv": list(argv), "target": target,
            "name": name,
        })
    _wait_entered(lab, target, name, proc, nsutil.netns_inode(netns), log)
    return proc.pid


def _wait_entered(lab: str, target: str, name: str, proc: subprocess.Popen,
                  inode: int | None, log: Path, timeout: float = 10.0) -> None:
    """Return once the process runs inside the target's network namespace (so `down` finds it
    by namespace as well as by record); a start that fails is reported with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            if code != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise CommandError(f"lab {lab!r}: process {name!r} in {target!r} exited with "
                                   f"code {code}: {' | '.join(tail)} (log {log})")
            return
        try:
            if inode is not None and os.stat(f"/proc/{proc.pid}/ns/net").st_ino == inode:
                return
        except OSError:
            pass
        time.sleep(0.002)


def stop_process(lab: str, target: str, name: str, timeout: float = 5.0) -> bool:
    """Stop a supervised process (SIGTERM, then SIGKILL). True if it was running."""
    path = pid_path(lab, target, name)
    record = _read_record(path)
    if record is None:
        return False
    was_running = _alive(record)
    terminate_record(record, timeout)
    path.unlink(missing_ok=True)
    return was_running


def process_running(lab: str, target: str, name: str) -> bool:
    record = _read_record(pid_path(lab, target, name))
    return record is not None and _alive(record)


def process_pid(lab: str, target: str, name: str) -> int | None:
    record = _read_record(pid_path(lab, target, name))
    return int(record["pid"]) if record is not None and _alive(record) else None


def supervised(lab: str) -> list[dict]:
    """Every process record of the lab, with `running` filled in."""
    folder = run_dir(lab) / "pids"
    out = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            record = _read_record(path)
            if record is not None:
                out.append({**record, "running": _alive(record)})
    return out


# --- hosts' mount namespaces ------------------------------------------------------------------

def start_holder(lab: str, target: str, netns: str) -> subprocess.Popen:
    """Start the mount-namespace holder of a host (not waited for; see wait_holder)."""
    folder = host_dir(lab, target)
    (folder / "wireguard").mkdir(parents=True, exist_ok=True)
    (folder / "raven").mkdir(parents=True, exist_ok=True)
    log = log_path(lab, target, HOLDER)
    log.parent.mkdir(parents=True, exist_ok=True)
    with guard.deferred(), open(log, "ab") as out:
        proc = nsutil.spawn(nsutil.holder_argv(netns, folder), out,
                            {**os.environ, "RAVEN_LAB": lab, "RAVEN_LAB_TARGET": target})
        start = proc_start_time(proc.pid)
        if start is not None:
            write_json_atomic(pid_path(lab, target, HOLDER), {
                "pid": proc.pid, "start_time": start, "argv": ["sleep", "infinity"],
                "target": target, "name": HOLDER,
            })
    return proc


def wait_holder(lab: str, target: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Wait until the holder has set up its mounts (it then execs `sleep`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path(lab, target, HOLDER)
            text = log.read_text(errors="replace").strip() if log.exists() else ""
            raise CommandError(f"lab {lab!r}: mount namespace of {target!r} failed "
                               f"(exit {proc.returncode}): {text}")
        try:
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == nsutil.HOLDER_COMM:
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise CommandError(f"lab {lab!r}: mount namespace of {target!r} not ready after {timeout}s")


def remove_run_dir(lab: str) -> None:
    shutil.rmtree(run_dir(lab), ignore_errors=True)
