"""Supervisor process identity: a recorded pid is signalled only if its start time still matches.

Uses plain child processes (no namespaces); the oracle is /proc.
"""

from __future__ import annotations

import subprocess

from raven.lab import runtime


def test_record_with_another_start_time_is_never_signalled() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        start = runtime.proc_start_time(proc.pid)
        assert start is not None
        # A stale record: same pid, different start time (the pid was recycled).
        runtime.terminate_record({"pid": proc.pid, "start_time": start - 1}, timeout=0.2)
        assert proc.poll() is None
        assert runtime.proc_start_time(proc.pid) == start
        runtime.terminate_record({"pid": proc.pid, "start_time": start}, timeout=2)
        assert runtime.proc_start_time(proc.pid) is None  # gone (and reaped by the supervisor)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_process_ignoring_sigterm_is_killed() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; sleep 60 & wait"],
                            start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        start = runtime.proc_start_time(proc.pid)
        runtime.terminate_record({"pid": proc.pid, "start_time": start}, timeout=0.3)
        assert runtime.proc_start_time(proc.pid) is None  # TERM was ignored: KILL did it
    finally:
        if proc.poll() is None:
            proc.kill()


def test_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    for _ in range(500):
        if runtime.proc_start_time(proc.pid) is None:
            break
        subprocess.run(["sleep", "0.01"])
    assert runtime.proc_start_time(proc.pid) is None  # exited, not yet reaped: a zombie
    proc.wait()
