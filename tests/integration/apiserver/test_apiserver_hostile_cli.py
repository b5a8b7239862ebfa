"""`raven graph -o` onto a path it cannot write is one line and status 1, not a traceback
(issue 13, round two: /dev/full, a missing directory and a directory all gave tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from apiserver_support import ROOT, ApiServerProcess, apiserver_module  # noqa: F401


@pytest.mark.parametrize("target", ["/dev/full", "missing-dir/graph.dot", "a-directory"])
def test_graph_output_that_cannot_be_written_is_one_line(
    apiserver_module: ApiServerProcess, tmp_path: Path, target: str,  # noqa: F811
) -> None:
    (tmp_path / "a-directory").mkdir()
    output = target if target.startswith("/") else str(tmp_path / target)
    result = subprocess.run(
        [sys.executable, "-m", "raven.cli", "graph", "--kubeconfig",
         str(apiserver_module.kubeconfig), "-o", output],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot write {output}" in result.stderr
