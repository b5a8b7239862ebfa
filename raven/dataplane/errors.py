"""Errors of the data plane. Messages name the kernel object and what to do about it.

`DataplaneError` is defined in `raven.errors` (the settings root raises it for a bad data-plane
section, and must not import this package) and re-exported here, the same class.
"""

from __future__ import annotations

from raven.errors import DataplaneError

__all__ = ["DataplaneError"]
