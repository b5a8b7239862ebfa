"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_support import Http

from raven.apiserver.server import RunningApiServer, start
from raven.apiserver.settings import ApiServerSettings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningApiServer]:
    """An embedded API server on a free loopback port, in this process, gone after the test."""
    running = start(ApiServerSettings(data_dir=tmp_path / "api", port=0))
    try:
        yield running
    finally:
        running.stop()



@pytest.fixture
def http_api(server: RunningApiServer) -> Iterator[Http]:
    api = Http(server)
    try:
        yield api
    finally:
        api.close()
