"""On-disk cache of the last good API inputs, so a node can rebuild its overlay while offline.

Rules kept: the file is replaced atomically (write a temporary file in the same directory,
fsync, rename), so a crash leaves either the old or the new copy, never a torn one; a missing
cache is None, silently; a cache that is unreadable or fails the schema check (bad JSON, an
unknown format, wrong types such as "gateways": ["a", 5]) is None too, with ONE warning naming
the file, the first problem and the fix, and is never handed to the planner; nothing here raises
for any file content.

Schema (format 1): {"format": 1, "savedAt": <number>, "node": <object or null>,
"gateways": [<object with "metadata": {"name": <string>}>, ...]}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class CachedInputs:
    saved_at: float  # unix seconds when these inputs were last confirmed by the API
    node: JSON | None
    gateways: tuple[JSON, ...]


def atomic_write_json(path: Path, data: object, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class InputCache:
    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, inputs: CachedInputs) -> None:
        atomic_write_json(self.path, {
            "format": CACHE_FORMAT,
            "savedAt": inputs.saved_at,
            "node": inputs.node,
            "gateways": list(inputs.gateways),
        })

    def load(self) -> CachedInputs | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            return self._ignored(f"unreadable ({exc})")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return self._ignored(f"not JSON ({str(exc)[:120]})")
        problem = schema_problem(data)
        if problem is not None:
            return self._ignored(problem)
        return CachedInputs(
            saved_at=float(data["savedAt"]),
            node=data["node"],
            gateways=tuple(data["gateways"]),
        )

    def _ignored(self, problem: str) -> None:
        log.warning("input cache %s ignored, not applied: %s; the agent waits for the API "
                    "server and rewrites it (to start clean, delete the file)", self.path,
                    problem)
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _object_problem(where: str, value: object) -> str | None:
    if not isinstance(value, dict):
        return f"{where} is {type(value).__name__}, not an object"
    meta = value.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return f"{where} has no metadata.name string"
    return None


def schema_problem(data: object) -> str | None:
    """The first way `data` is not a format-1 cache document, or None."""
    if not isinstance(data, dict):
        return f"the document is {type(data).__name__}, not an object"
    if data.get("format") != CACHE_FORMAT:
        return f"format is {data.get('format')!r}, this agent reads {CACHE_FORMAT}"
    if not _is_number(data.get("savedAt")):
        return f"savedAt is {data.get('savedAt')!r}, not a number"
    node = data.get("node")
    if node is not None:
        problem = _object_problem("node", node)
        if problem:
            return problem
    gateways = data.get("gateways")
    if not isinstance(gateways, list):
        return f"gateways is {type(gateways).__name__}, not a list"
    for index, gateway in enumerate(gateways):
        problem = _object_problem(f"gateways[{index}]", gateway)
        if problem:
            return problem
    return None
