"""metav1.Status errors: every refusal the server makes is an `ApiError` rendered as a Status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the server refuses; rendered as a metav1.Status with `code` and `reason`."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{_qualified(group, plural)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{_qualified(group, plural)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": {why}',
        {"name": name, "group": group, "kind": plural},
    )


def invalid(group: str, kind: str, name: str, problems: list[tuple[str, str]]) -> ApiError:
    """422 Invalid; `problems` are (field path, message) pairs, like kube-apiserver's causes."""
    joined = ", ".join(f"{field}: {msg}" if field else msg for field, msg in problems)
    return ApiError(
        422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {joined}',
        {
            "name": name, "group": group, "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": msg, "field": field}
                for field, msg in problems
            ],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:  # noqa: E501
    return ApiError(405, "MethodNotAllowed", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def forbidden(group: str, plural: str, name: str, why: str) -> ApiError:
    return ApiError(
        403, "Forbidden", f'{_qualified(group, plural)} "{name}" is forbidden: {why}',
        {"name": name, "group": group, "kind": plural},
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json (got {content_type!r})")  # noqa: E501


def too_large_resource_version(wanted: int, current: int, retry_after: int = 1) -> ApiError:
    """kube-apiserver's answer to a read or watch from a resourceVersion newer than its store:
    504 Timeout with the ResourceVersionTooLarge cause, which client-go's reflector recognises
    (IsTooLargeResourceVersion) and answers by relisting from scratch."""
    return ApiError(
        504, "Timeout",
        f"Timeout: Too large resource version: {wanted}, current: {current}",
        {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
         "retryAfterSeconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def watch_error_line(error: ApiError) -> bytes:
    """One watch stream line carrying `error` as an ERROR event (kube's way to end a watch)."""
    import json

    status = error.to_status()
    return json.dumps({"type": "ERROR", "object": status}, separators=(",", ":")).encode() + b"\n"
