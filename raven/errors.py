"""Error types shared across packages. Messages name the object and the fix."""

from __future__ import annotations


class RavenError(Exception):
    """Base of every error Raven raises on purpose."""


class CommandError(RavenError):
    """A problem the operator can fix; the CLI prints it without a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ValidationError(RavenError):
    """Input that is not valid; `problems` lists every problem found, each naming its object."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DataplaneError(RavenError):
    """The kernel or a tool refused a change, or the environment lacks something we need
    (defined here, not in raven.dataplane, so the settings root can refuse a bad data-plane
    section without importing the kernel code; `raven.dataplane.errors` re-exports it)."""


class ApiServerError(RavenError):
    """The API server cannot start (or run) as configured; the message says what to change
    (defined here, not in raven.apiserver, so the settings root can refuse a bad API server
    section; `raven.apiserver.errors` re-exports it)."""
