"""The project's own promises: the README's commands, CI, style and the CLI entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block == [
        "bash scripts/setup.sh && .venv/bin/raven lab demo",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    out = subprocess.run(
        ["grep", "-m1", "-E", "^bash scripts/setup.sh && .*pytest", "README.md"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out.endswith("pytest -q")
    assert "grep -m1 -E '^bash scripts/setup.sh && .*pytest' README.md" in (
        ROOT / ".ci" / "run"
    ).read_text()


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "raven", "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_lists_its_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "raven.cli", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "version" in result.stdout


def test_test_modules_have_unique_basenames() -> None:
    """The test directories are not packages, so pytest imports each test file by its basename:
    two files of one name in different directories stop the whole run at collection."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]}: rename one"
        seen[path.name] = path
