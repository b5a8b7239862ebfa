"""What the agent checks before it relies on its tunnel namespace (docs/tunnel-namespace.md,
"Privileges"), against real mounts: a read-only /var/run/netns is named as the problem (the
agent's fallback on a problem, and the capability half, are unit-tested:
tests/unit/test_tunnel_privilege.py). Run in a private mount namespace (`unshare --mount`) so
the machine's own mounts are never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")

CHECK = """
import sys
from pathlib import Path
from raven.dataplane.netns import privilege_problem
print(privilege_problem(run_dir=Path(sys.argv[1]) / "netns"))
"""


def check_under(tmp_path: Path, read_only: bool) -> str:
    base = tmp_path / "run"
    base.mkdir()
    remount = f"mount --bind {base} {base} && mount -o remount,bind,ro {base} && " \
        if read_only else ""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{remount}exec "$0" -c "$1" "$2"', sys.executable, CHECK, str(base)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_read_only_run_directory_is_named(tmp_path: Path) -> None:
    out = check_under(tmp_path, read_only=True)
    assert out.endswith("is not writable: a named network namespace is bound under "
                        f"{tmp_path / 'run' / 'netns'}"), out


def test_a_writable_run_directory_is_fine(tmp_path: Path) -> None:
    assert check_under(tmp_path, read_only=False) == "None"
