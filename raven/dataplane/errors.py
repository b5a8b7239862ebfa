"""Errors of the data plane. Messages name the kernel object and what to do about it."""

from __future__ import annotations

from raven.errors import RavenError


class DataplaneError(RavenError):
    """The kernel or a tool refused a change, or the environment lacks something we need."""
