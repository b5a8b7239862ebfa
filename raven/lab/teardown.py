"""`lab down`: remove every process, namespace (with its links) and run-directory file of a lab.

Rules kept:
- Works from whatever is left: the plan in state.json (written before anything was created) AND
  the naming convention `<lab>.<target>` of namespaces, so a crashed or SIGKILLed `up` is cleaned.
- `down --all` finds labs by their run directories and by namespaces whose `lo` carries the
  marker alias `raven-lab:<lab>`; it never guesses from other people's namespace names.
- Processes: first the supervised ones (by recorded pid + start time, SIGTERM then SIGKILL), then
  any process still inside one of the lab's namespaces (found by namespace inode, not by name).
- Links die with their namespaces: every lab link lives inside a lab namespace.
- Idempotent: running it twice, or on a lab that half exists, is fine.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

from raven.lab import netns as nsutil
from raven.lab import runtime
from raven.lab.plan import plan_from_json
from raven.lab.topology import DNS_LABEL


def lab_namespaces(lab: str) -> list[str]:
    """Namespaces of `lab`: those in its plan plus every `<lab>.*` namespace."""
    wanted: set[str] = set()
    state = runtime.read_state(lab)
    if state is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            wanted.update(plan_from_json(state["plan"]).netns_names())
    existing = nsutil.list_netns()
    return sorted(n for n in existing if n in wanted or n.startswith(lab + "."))


def discover_labs() -> list[str]:
    """Every lab with a run directory or with a marked namespace."""
    labs = set(runtime.list_labs())
    for name in nsutil.list_netns():
        prefix = name.split(".", 1)[0]
        if "." not in name or prefix in labs or not DNS_LABEL.match(prefix):
            continue
        if nsutil.lo_alias(name) == nsutil.LAB_MARKER + prefix:
            labs.add(prefix)
    return sorted(labs)


def down(lab: str) -> list[str]:
    """Remove lab `lab`; return the namespaces removed."""
    if not re.fullmatch(r"[a-z0-9-]+", lab):
        return []
    runtime.terminate_records(runtime.supervised(lab), timeout=3.0)
    removed: list[str] = []
    # Several passes: `ip` children of a SIGKILLed `up` may still be adding namespaces.
    for attempt in range(4):
        namespaces = lab_namespaces(lab)
        if not namespaces:
            if attempt:
                break
            time.sleep(0.02)
            continue
        _kill_inside(namespaces)
        nsutil.ip_batch((f"netns del {n}" for n in namespaces), force=True)
        removed += namespaces
        time.sleep(0.02)
    runtime.remove_run_dir(lab)
    return sorted(set(removed))


def down_all() -> list[str]:
    labs = discover_labs()
    for lab in labs:
        down(lab)
    return labs


def _kill_inside(namespaces: list[str], grace: float = 2.0) -> None:
    inodes = {i for i in map(nsutil.netns_inode, namespaces) if i is not None}
    if not inodes:
        return
    # and every process of the lab hosts' mount namespaces (an agent's tunnel-namespace probe
    # responder is in none of the lab's network namespaces)
    mounts = nsutil.private_mounts_of(nsutil.pids_in(inodes))
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = sorted(set(nsutil.pids_in(inodes)) | set(nsutil.pids_in(mounts, "mnt")))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            if not [p for p in pids if runtime.proc_start_time(p) is not None]:
                break
            time.sleep(0.005)
