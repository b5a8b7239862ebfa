"""Kubernetes time formats (RFC 3339 Time and MicroTime) to and from unix seconds.

Pure conversions of times given as arguments; never reads the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime


def to_micro_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    """Unix seconds of a Time/MicroTime string; None when absent or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
