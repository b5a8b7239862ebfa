"""The data directory holds Secrets: 0700, and store.sqlite, -wal and -shm 0600, whatever modes
they had before and whatever the umask. Oracle: os.stat on the files while the server runs,
and a Secret written through the official client found in the files.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from raven.apiserver.server import start
from raven.apiserver.settings import ApiServerSettings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def assert_private(data_dir: Path) -> None:
    assert mode(data_dir) == 0o700, oct(mode(data_dir))
    files = [data_dir / f"store.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]
    for path in files:
        assert path.exists(), f"{path.name} missing while the server runs"
        assert mode(path) == 0o600, f"{path.name}: {oct(mode(path))}"


def write_secret(kubeconfig: Path, name: str) -> None:
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        client.CoreV1Api(api_client).create_namespaced_secret("default", client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data={"password": "hunter2"}))
    finally:
        api_client.close()


def test_a_new_data_directory_is_private(tmp_path: Path, loose_umask: None) -> None:
    data_dir = tmp_path / "api"
    running = start(ApiServerSettings(data_dir=data_dir, port=0))
    try:
        write_secret(running.kubeconfig, "s1")
        assert_private(data_dir)
    finally:
        running.stop()


def test_an_existing_open_data_directory_is_made_private(
    tmp_path: Path, loose_umask: None,
) -> None:
    data_dir = tmp_path / "api"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    database = data_dir / "store.sqlite"
    # Another process holds the database open in WAL mode: -wal and -shm exist, all 0644.
    holder = sqlite3.connect(database)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("CREATE TABLE IF NOT EXISTS note (x TEXT)")
        holder.execute("INSERT INTO note VALUES ('left by an older version')")
        holder.commit()
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{database}{suffix}")
            assert path.exists()
            os.chmod(path, 0o644)
        running = start(ApiServerSettings(data_dir=data_dir, port=0))
        try:
            write_secret(running.kubeconfig, "s2")
            assert_private(data_dir)
        finally:
            running.stop()
    finally:
        holder.close()
    # The Secret is really in these files (what the modes protect).
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT data FROM objects WHERE resource='/secrets'").fetchall()
    assert any('"s2"' in row[0] for row in rows)
