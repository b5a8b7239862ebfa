"""The server starts on its own data whatever a row or the counter holds (issue 13, round two).

Found by corrupting one row (or the counter) of a real store and restarting:
- a row with resourceVersion 2**63-1 loaded, and every later write was a 500 (the next
  resourceVersion overflows SQLite's INTEGER): the server stopped accepting writes;
- a counter row `meta.rv` that is not a number stopped the start with a traceback;
- a row nested 100 000 levels deep stopped the start with a RecursionError traceback;
- a store file that is not a database stopped the start with a sqlite3 traceback (now the
  one-line `raven: cannot open the store ...` and exit status 1).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from apiserver_support import ROOT, start_apiserver_process
from kubernetes import client

DEEP = ('{"metadata":{"name":"deep","namespace":"default"},"a":'
        + "[" * 100_000 + "]" * 100_000 + "}")
CORRUPTIONS = {
    "row rv beyond int64": "UPDATE objects SET rv=9223372036854775807 WHERE name='victim'",
    "row rv negative": "UPDATE objects SET rv=-5 WHERE name='victim'",
    "counter not a number": "UPDATE meta SET value='abc' WHERE key='rv'",
    "counter beyond int64": "UPDATE meta SET value='9223372036854775807' WHERE key='rv'",
    "row nested too deep": f"UPDATE objects SET data='{DEEP}' WHERE name='victim'",
}


def _populate(data_dir: Path) -> int:
    server = start_apiserver_process(data_dir)
    try:
        with server.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            for name in ("victim", "keeper"):
                created = core.create_namespaced_config_map(
                    "default", {"metadata": {"name": name}, "data": {"k": name}})
            return int(created.metadata.resource_version)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_the_server_starts_and_writes_after_a_corrupted_row_or_counter(
    tmp_path: Path, corruption: str,
) -> None:
    data_dir = tmp_path / "data"
    last_rv = _populate(data_dir)
    with sqlite3.connect(data_dir / "store.sqlite") as db:
        db.execute(CORRUPTIONS[corruption])
    db.close()
    server = start_apiserver_process(data_dir)
    try:
        with server.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            assert core.read_namespaced_config_map("keeper", "default").data == {"k": "keeper"}
            created = core.create_namespaced_config_map(
                "default", {"metadata": {"name": "after"}, "data": {"k": "v"}})
            # resourceVersions still increase past every one a client has seen.
            assert int(created.metadata.resource_version) > last_rv
            core.patch_namespaced_config_map("after", "default", {"data": {"k": "w"}})
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log
    assert "ERROR" in log  # the bad row or counter is named in the log


def test_a_store_file_that_is_not_a_database_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "store.sqlite").write_bytes(b"this is not SQLite" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "raven.cli", "apiserver", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot open the store" in result.stderr and "not a database" in result.stderr
    assert result.stdout == ""
