"""On-disk cache of the last good API inputs, so a node can rebuild its overlay while offline.

Rules kept: the file is replaced atomically (write a temporary file in the same directory,
fsync, rename), so a crash leaves either the old or the new copy, never a torn one; a missing or
unreadable cache is reported as None (the agent then waits for the API), never an exception.
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
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("input cache %s unreadable, ignored: %s", self.path, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            log.warning("input cache %s has an unknown format, ignored", self.path)
            return None
        return CachedInputs(
            saved_at=float(data.get("savedAt") or 0.0),
            node=data.get("node"),
            gateways=tuple(data.get("gateways") or ()),
        )
