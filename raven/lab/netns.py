"""Thin helpers around `ip` for the lab harness: batches, namespace listing, processes inside.

Rules kept:
- Configuration goes through `ip [-n NS] -batch -` (one process per namespace, not per command).
- Processes inside a namespace are found by comparing /proc/PID/ns/net with the namespace's
  inode, never by name; a process inside a lab namespace belongs to that lab.
- Nothing here touches the root network namespace's links or routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from raven.errors import CommandError

NETNS_DIR = Path("/run/netns")
LAB_MARKER = "raven-lab:"  # alias of `lo` in every lab namespace: raven-lab:<lab>


def run(argv: list[str], stdin: str | None = None, check: bool = True,
        timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(f"`{' '.join(argv[:6])}` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def ip_batch(lines: Iterable[str], netns: str | None = None, force: bool = False) -> None:
    """Run `ip [-n NS] [-force] -batch -` with the given command lines."""
    text = "\n".join(lines) + "\n"
    argv = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + \
        ["-batch", "-"]
    proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and not force:
        where = f" in {netns}" if netns else ""
        raise CommandError(f"ip batch{where} failed: {(proc.stderr or proc.stdout).strip()}")


def list_netns() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir())


def lo_alias(netns: str) -> str:
    proc = run(["ip", "-n", netns, "-j", "link", "show", "lo"], check=False)
    if proc.returncode != 0:
        return ""
    with contextlib.suppress(ValueError, IndexError, KeyError):
        return json.loads(proc.stdout)[0].get("ifalias", "")
    return ""


def netns_inode(netns: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / netns).st_ino
    except OSError:
        return None


def pids_in(inodes: set[int]) -> list[int]:
    """Pids of every process whose network namespace is one of `inodes`."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino in inodes:
                found.append(int(entry.name))
        except OSError:
            continue
    return found
