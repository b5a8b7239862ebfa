"""Fixtures shared by the API server tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_support import ApiServerProcess


@pytest.fixture(scope="module")
def api(apiserver_module: ApiServerProcess) -> Iterator[Any]:
    """A kubernetes ApiClient for the module's API server subprocess (the test module imports
    the `apiserver_module` fixture from apiserver_support)."""
    api_client = apiserver_module.api_client()
    try:
        yield api_client
    finally:
        api_client.close()
