"""Shared pytest configuration: tests marked `root` skip with a reason when not run as root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces; run the suite as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
