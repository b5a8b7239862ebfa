"""Request routing: a URL path -> what it names. Pure: no socket, no store, no clock.

Rules kept:
- The path is split on "/" first and each segment is then percent-decoded (UTF-8, strict), so an
  encoded "%2F" can never split a name in two and a name with spaces or unicode is reachable by
  the same (encoded) path every client sends.
- Namespace and object names in a path follow kube-apiserver's path-segment rules: never "." or
  "..", never containing "/" or "%". A name that breaks them is a 400 naming the segment.
- Empty segments are ignored (a trailing "/" or "//" changes nothing), as before.
- Every refusal is an `ApiError` (404 for an unknown path, 400 for a bad segment, 405 for a
  method a discovery document does not allow); the handler renders it as a Status.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from raven.apiserver.resources import ResourceType
from raven.apiserver.status import ApiError, bad_request, method_not_allowed

NAMESPACE_SUBRESOURCES = ("status", "finalize")
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")


class Endpoint(enum.Enum):
    HEALTH = "health"
    VERSION = "version"
    OPENAPI_ROOT = "openapi-root"
    OPENAPI_DOC = "openapi-doc"  # group/version: the OpenAPI v3 document of one group version
    CORE_VERSIONS = "core-versions"  # /api
    GROUP_LIST = "group-list"  # /apis
    GROUP = "group"  # /apis/<group>
    RESOURCE_LIST = "resource-list"  # /api/v1, /apis/<group>/<version>
    RESOURCE = "resource"  # a collection, an object or a subresource


@dataclass(frozen=True)
class ResourceRoute:
    """A resource URL: collection (name None), object, or object subresource."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str
    watch_path: bool  # the legacy /watch/ prefix
    # nodes/NAME/proxy/PATH: the decoded segments after "proxy" (the kubelet path), else ().
    proxy_segments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    endpoint: Endpoint
    path: str  # the decoded path, for messages
    group: str = ""
    version: str = ""
    resource: ResourceRoute | None = None


class TypeLookup(Protocol):
    def get(self, group: str, version: str, plural: str) -> ResourceType | None: ...


def page_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})",
                    {})


def path_segment_problem(name: str) -> str | None:
    """Why `name` cannot be a path segment (kube's IsValidPathSegmentName), or None."""
    if name in (".", ".."):
        return f"may not be {name!r}"
    for bad in ("/", "%"):
        if bad in name:
            return f"may not contain {bad!r}"
    return None


def split_path(path: str) -> list[str]:
    """The non-empty, percent-decoded segments of a URL path; 400 for bad encodings."""
    segments = []
    for raw in path.split("/"):
        if not raw:
            continue
        try:
            segments.append(unquote(raw, encoding="utf-8", errors="strict"))
        except UnicodeDecodeError as exc:
            raise bad_request(
                f"the path segment {raw!r} is not percent-encoded UTF-8; encode names as "
                "UTF-8 before percent-encoding them") from exc
    return segments


def _checked(what: str, value: str) -> str:
    problem = path_segment_problem(value)
    if problem is not None:
        raise bad_request(f"the {what} {value!r} in the path {problem}; names are DNS labels or "
                          'subdomains such as "my-gateway"')
    return value


def route(method: str, path: str, types: TypeLookup) -> Target:
    """What `path` (the URL path without the query) names, for `method`."""
    parts = split_path(path)
    shown = "/" + "/".join(parts)
    if shown in HEALTH_PATHS:
        return Target(Endpoint.HEALTH, shown)
    if shown == "/version":
        return Target(Endpoint.VERSION, shown)
    if parts[:1] == ["openapi"]:
        return _openapi(parts, shown)
    if parts[:1] == ["api"]:
        if len(parts) == 1:
            return Target(Endpoint.CORE_VERSIONS, shown)
        if parts[1] != "v1":
            raise page_not_found(shown)
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"]:
        if len(parts) == 1:
            return Target(Endpoint.GROUP_LIST, shown)
        if len(parts) == 2:
            return Target(Endpoint.GROUP, shown, group=parts[1])
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise page_not_found(shown)
    if not rest:
        if method != "GET":
            raise method_not_allowed()
        return Target(Endpoint.RESOURCE_LIST, shown, group=group, version=version)
    resource = _resource(group, version, rest, shown, types)
    return Target(Endpoint.RESOURCE, shown, group=group, version=version, resource=resource)


def _openapi(parts: list[str], shown: str) -> Target:
    if parts[1:2] == ["v3"]:
        gv = parts[2:]
        if not gv:
            return Target(Endpoint.OPENAPI_ROOT, shown)
        if gv[0] == "api" and len(gv) == 2:
            return Target(Endpoint.OPENAPI_DOC, shown, group="", version=gv[1])
        if gv[0] == "apis" and len(gv) == 3:
            return Target(Endpoint.OPENAPI_DOC, shown, group=gv[1], version=gv[2])
        raise page_not_found(shown)
    raise ApiError(404, "NotFound", f"the server could not find the requested resource ({shown}); "
                   "this server publishes no OpenAPI schema but /openapi/v3")


def _resource(group: str, version: str, rest: list[str], shown: str,
              types: TypeLookup) -> ResourceRoute:
    watch_path = False
    if rest[0] == "watch":
        watch_path, rest = True, rest[1:]
    namespace = None
    if (
        len(rest) >= 3 and rest[0] == "namespaces"
        and not (group == "" and rest[2] in NAMESPACE_SUBRESOURCES and len(rest) == 3)
    ):
        namespace, rest = _checked("namespace", rest[1]), rest[2:]
    if not rest:
        raise page_not_found(shown)
    rtype = types.get(group, version, rest[0])
    if rtype is None:
        raise page_not_found(shown)
    # Only nodes/NAME/proxy/... may go deeper than a subresource: the rest is the kubelet path.
    deep = len(rest) > 3 and rest[2] == "proxy" and "proxy" in rtype.connect_subresources
    if len(rest) > 3 and not deep:
        raise page_not_found(shown)
    if rtype.namespaced and namespace is None and len(rest) > 1:
        raise page_not_found(shown)
    if not rtype.namespaced and namespace is not None:
        raise page_not_found(shown)
    name = _checked("name", rest[1]) if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else ""
    served = subresource == "status" and rtype.has_status
    finalize = rtype.plural == "namespaces" and subresource == "finalize"
    connect = subresource in rtype.connect_subresources and not watch_path
    if subresource and not served and not finalize and not connect:
        raise page_not_found(shown)
    return ResourceRoute(rtype, namespace, name, subresource, watch_path, tuple(rest[3:]))
