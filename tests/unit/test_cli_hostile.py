"""The CLI under hostile files (issue 13, round two): an answer and a status, never a traceback
or a hang.

- `raven validate /dev/zero` (and `raven plan --gateways /dev/zero`) read without bound: the
  process grew until killed. Files are now read up to safeyaml.MAX_FILE_BYTES.
- `raven status` on a damaged agent-status.json (a JSON list, a timestamp that is text, nesting
  deeper than the JSON decoder recurses) ended in a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def raven(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raven.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [
    ("validate", "/dev/zero"),
    ("plan", "--gateways", "/dev/zero", "--node", "n1"),
])
def test_an_endless_file_is_refused_not_read_forever(args: tuple[str, ...]) -> None:
    result = raven(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "larger than" in result.stdout + result.stderr


@pytest.mark.parametrize("content", [
    "[]",
    "5",
    '{"appliedAt": "x"}',
    '{"appliedAt": [1], "inputsConfirmedAt": "yesterday", "observedAt": true}',
    '{"appliedAt": 1e999, "observedAt": "nan", "drift": [1]}',
    "[" * 100_000 + "]" * 100_000,
])
@pytest.mark.parametrize("as_json", [False, True])
def test_status_on_a_damaged_status_file_has_no_traceback(
    tmp_path: Path, content: str, as_json: bool,
) -> None:
    (tmp_path / "agent-status.json").write_text(content)
    result = raven("status", "--state-dir", str(tmp_path), "--netns", "raven-no-such-ns",
                   *(["--json"] if as_json else []))
    assert "Traceback" not in result.stderr, result.stderr
    if content.startswith("{"):
        assert result.returncode == 0, result.stderr
        if as_json:
            report = json.loads(result.stdout)
            assert report["agent"] == json.loads(content)
    else:
        assert result.returncode != 0
        assert "agent-status.json" in result.stderr
