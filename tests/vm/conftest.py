"""VM tests: a real kernel (qemu + virtme-ng) for what this machine's kernel cannot run.

They are part of the default suite and skip, with the reason, where qemu, a kernel with the
wireguard module or vng is missing (scripts/setup.sh installs all three).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: boots a kernel in qemu through virtme-ng (tests/vm; one boot per module)")
