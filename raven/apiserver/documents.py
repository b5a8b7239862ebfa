"""The endpoints that name no resource: health, version, OpenAPI and discovery documents.

Rules kept: `/healthz`, `/livez` and `/readyz` answer in kube-apiserver's text format from the
watch fan-out's health; every other document is JSON, and a document that does not exist (an
unknown group or version) is a 404 naming the path. Reads the server only through its context.
"""

from __future__ import annotations

from typing import Any

from raven.apiserver import discovery, openapi
from raven.apiserver.context import ServerContext
from raven.apiserver.exchange import Response, json_response
from raven.apiserver.fanout import health_report
from raven.apiserver.routing import Endpoint, Target, page_not_found


def serve(context: ServerContext, target: Target) -> Response:
    """The answer for a target that is not Endpoint.RESOURCE."""
    registry = context.registry
    endpoint = target.endpoint
    if endpoint is Endpoint.HEALTH:
        code, text = health_report(context.watch_health())
        return Response(code, text, "text/plain; charset=utf-8")
    doc: Any = None
    if endpoint is Endpoint.VERSION:
        doc = discovery.version_info()
    elif endpoint is Endpoint.OPENAPI_ROOT:
        doc = openapi.root(registry)
    elif endpoint is Endpoint.OPENAPI_DOC:
        doc = openapi.group_version_doc(registry, target.group, target.version)
    elif endpoint is Endpoint.CORE_VERSIONS:
        doc = discovery.core_versions(context.address)
    elif endpoint is Endpoint.GROUP_LIST:
        doc = discovery.group_list(registry)
    elif endpoint is Endpoint.GROUP:
        doc = discovery.group(registry, target.group)
    elif endpoint is Endpoint.RESOURCE_LIST:
        doc = discovery.resource_list(registry, target.group, target.version)
    else:
        raise ValueError(f"{endpoint} names a resource; serve it with raven.apiserver.verbs")
    if doc is None:
        raise page_not_found(target.path)
    return json_response(200, doc)
