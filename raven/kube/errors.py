"""Typed errors for every Kubernetes API call, so callers never see a client exception.

Rules kept:
- every failure of the API (HTTP status, refused connection, timeout, TLS) becomes one subclass of
  `KubeError`; callers branch on the type, never on a status number or exception text;
- `retryable` says whether trying the same call again later can succeed (server down, conflict
  lost, throttled); a rejection of the request itself (NotFound, Invalid, Forbidden) is not;
- messages keep the server's own `Status.message`, which names the object and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

# The kubernetes client is imported lazily (inside translate/typed): these error classes are
# used by code that must start fast without it, e.g. an agent applying its cached plan offline.


class KubeError(Exception):
    """A Kubernetes API call failed. `status` is the HTTP code (0 when no answer came)."""

    retryable = True

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Unavailable(KubeError):
    """No answer: connection refused, timeout, TLS failure, 5xx, 429 (try again later)."""


class NotFound(KubeError):
    retryable = False


class AlreadyExists(KubeError):
    retryable = False


class Conflict(KubeError):
    """Optimistic concurrency lost (stale resourceVersion): re-read and retry."""


class Expired(KubeError):
    """410 Gone: the resourceVersion is too old to watch from; list again. Also 504 "Too large
    resource version" (the server's store is older than what we saw, e.g. restored from a
    backup): client-go relists from scratch then, and so do we."""


def is_too_large_resource_version(status: Any) -> bool:
    """A Status saying the requested resourceVersion is newer than the server's store."""
    if not isinstance(status, dict) or status.get("code") != 504:
        return False
    causes = (status.get("details") or {}).get("causes") or []
    return any(isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge"
               for c in causes)


class Invalid(KubeError):
    """422: the object was refused by validation; the message names the field."""

    retryable = False


class Forbidden(KubeError):
    """401/403: credentials or RBAC are wrong; retrying will not help until they are fixed."""

    retryable = False


class ConfigError(KubeError):
    """No usable kubeconfig or in-cluster service account."""

    retryable = False


def from_api_exception(exc: Any) -> KubeError:
    """KubeError for a kubernetes.client ApiException (status, reason, Status body)."""
    status = int(exc.status or 0)
    reason, message, body = str(exc.reason or ""), "", None
    if exc.body:
        try:
            body = json.loads(exc.body)
            message = str(body.get("message", ""))
            reason = str(body.get("reason", reason))
        except (ValueError, AttributeError):
            message = str(exc.body)[:300]
    text = f"API {status} {reason}: {message}".strip()
    if is_too_large_resource_version(body):
        return Expired(text, status, reason)
    if status == 404:
        return NotFound(text, status, reason)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(text, status, reason)
        return Conflict(text, status, reason)
    if status == 410:
        return Expired(text, status, reason)
    if status == 422:
        return Invalid(text, status, reason)
    if status in (401, 403):
        return Forbidden(text, status, reason)
    if status == 0 or status == 429 or status >= 500:
        return Unavailable(text, status, reason)
    error = KubeError(text, status, reason)
    error.retryable = False
    return error


def translate(exc: BaseException) -> KubeError:
    """Map any exception raised by the kubernetes client or urllib3 to a KubeError."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        return from_api_exception(exc)
    if isinstance(exc, ConfigException):
        return ConfigError(f"kubeconfig: {exc}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError):
        return Unavailable(f"API server unreachable: {type(exc).__name__}: {exc}")
    raise exc


P = ParamSpec("P")
R = TypeVar("R")


def typed(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: the wrapped call raises only KubeError subclasses for API failures."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except KubeError:
            raise
        except Exception as exc:
            try:
                error = translate(exc)
            except Exception:
                raise exc from None  # not an API failure: a bug, keep its traceback
            raise error from exc

    return wrapper
