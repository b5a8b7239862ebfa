"""Lab fixtures for end-to-end tests.

- `lab_factory(topology)` builds a lab (topology = path, file name in test-topologies/, or dict)
  under a unique name `rvt-lab-<6 hex>` and ALWAYS tears it down at the end of the test.
- `module_lab_factory` does the same once per module (labs shared by a module's tests).
- `three_pools_lab` is a ready three-pools lab shared by a module.
Tests using them need root; mark them `@pytest.mark.root` (they are skipped otherwise).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raven.lab import build, teardown
from raven.lab.plan import LabPlan
from raven.lab.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "test-topologies"

LabFactory = Callable[..., LabPlan]


def unique_lab_name(area: str = "lab") -> str:
    return f"rvt-{area}-{secrets.token_hex(3)}"


def _factory() -> tuple[LabFactory, list[str]]:
    made: list[str] = []

    def make(topology: str | Path | dict, name: str | None = None) -> LabPlan:
        lab = name or unique_lab_name()
        made.append(lab)  # recorded first: torn down even if up fails half way
        if isinstance(topology, dict):
            return build.up(parse_topology(topology), lab)
        path = Path(topology)
        if not path.is_absolute() and not path.exists():
            path = TOPOLOGIES / path
        return build.up(load_topology(path), lab, source=str(path))

    return make, made


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    make, made = _factory()
    try:
        yield make
    finally:
        for lab in made:
            teardown.down(lab)


@pytest.fixture(scope="module")
def module_lab_factory() -> Iterator[LabFactory]:
    make, made = _factory()
    try:
        yield make
    finally:
        for lab in made:
            teardown.down(lab)


@pytest.fixture(scope="module")
def three_pools_lab(module_lab_factory: LabFactory) -> LabPlan:
    return module_lab_factory("three-pools.yaml")
