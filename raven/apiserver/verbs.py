"""The verbs on resources that answer with one document: get, list, create, update, patch,
delete, delete a collection, and the access reviews. No socket: a `Request` in, a `Response` out.

Rules kept:
- Bodies are decoded by `bodies.decode` (JSON or YAML, depth-bounded) and must be the JSON
  shape the verb needs (an object; a JSON patch is an array); anything else is a 400 naming the
  verb, the resource and the object.
- `dryRun` is `All` or absent (kubectl also sends it in the DeleteOptions body); nothing is
  written in a dry run.
- A deleted object is answered with a Status (a namespace, which terminates, with itself).
- Deleting a collection checks every delete (dry) before making any: one item that may not be
  deleted refuses the whole collection.
- The bearer token is cluster-admin: every access review is allowed and the user is admin.
- Lists are assembled from the stored JSON without decoding it again when no conversion is due.
"""

from __future__ import annotations

from typing import Any

from raven.apiserver import bodies, negotiation, paging, tables
from raven.apiserver.api import ResourceApi, delete_options_dry_run
from raven.apiserver.context import ServerContext
from raven.apiserver.exchange import Request, Response, json_response
from raven.apiserver.routing import ResourceRoute
from raven.apiserver.selectors import make_filter
from raven.apiserver.status import ApiError, bad_request, method_not_allowed
from raven.apiserver.store import encode

JSON_PATCH = "application/json-patch+json"
META_V1 = "meta.k8s.io/v1"


def serve(context: ServerContext, request: Request, route: ResourceRoute) -> Response:
    """Answer one request on a collection or object (not a watch, not a connect subresource)."""
    method = request.method
    dry_run = dry_run_requested(request.query)
    if route.rtype.review:
        return _review(context, request, route)
    if route.name is None:
        if method == "GET":
            return _list(context, request, route)
        if method == "POST":
            what = f"the body of a {method} of {route.rtype.plural}"
            obj = context.api.create(route.rtype, route.namespace,
                                     _decode_object(context, request, what), dry_run)
            return json_response(201, obj)
        if method == "DELETE":
            return _delete_collection(context, request, route)
        raise method_not_allowed()
    if method == "GET":
        obj = context.api.get(route.rtype, route.namespace, route.name)
        return _one_object(request, route, obj)
    return json_response(200, _write_object(context, request, route, dry_run))


def _write_object(context: ServerContext, request: Request, route: ResourceRoute,
                  dry_run: bool) -> dict[str, Any]:
    """PUT, PATCH or DELETE of one named object: what the answer carries."""
    api, rtype, method = context.api, route.rtype, request.method
    assert route.name is not None
    what = f'the body of a {method} of {rtype.plural} "{route.name}"'
    if method == "PUT":
        return api.update(rtype, route.namespace, route.name,
                          _decode_object(context, request, what),
                          "status" if route.subresource == "status" else "", dry_run)
    if method == "PATCH":
        content_type = request.headers.get("Content-Type") or ""
        patch = _decode(context, request)
        if bodies.media_type(content_type) == JSON_PATCH:
            bodies.require_array(patch, f"{what} ({JSON_PATCH})")
        else:
            bodies.require_object(patch, what)
        return api.patch(rtype, route.namespace, route.name, content_type, patch,
                         route.subresource, dry_run)
    if method == "DELETE":
        options = _delete_options(context, request)
        # kubectl sends dryRun in the DeleteOptions body.
        dry_run = dry_run or delete_options_dry_run(options)
        obj = api.delete(rtype, route.namespace, route.name, options, dry_run)
        if rtype.plural == "namespaces":
            return obj
        # Deleted at once: kube-apiserver answers a Status (namespaces: the object).
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": route.name, "group": rtype.group, "kind": rtype.plural,
                            "uid": obj["metadata"].get("uid")}}
    raise method_not_allowed()


def dry_run_requested(query: Any) -> bool:
    if "dryRun" not in query:
        return False
    if query["dryRun"] != "All":
        raise bad_request(f'dryRun {query["dryRun"]!r} is not supported; use dryRun=All')
    return True


def _decode(context: ServerContext, request: Request) -> Any:
    return bodies.decode(request.body, request.headers.get("Content-Type"),
                         context.settings.max_body_depth)


def _decode_object(context: ServerContext, request: Request, what: str) -> dict[str, Any]:
    return bodies.require_object(_decode(context, request), what)


def _delete_options(context: ServerContext, request: Request) -> dict[str, Any]:
    options = _decode(context, request) if request.body.strip() else {}
    return bodies.require_object(options, "DeleteOptions")


def _review(context: ServerContext, request: Request, route: ResourceRoute) -> Response:
    """The token is cluster-admin: every access review is allowed, the user is admin."""
    if request.method != "POST" or route.name is not None:
        raise method_not_allowed()
    review = _decode_object(context, request, f"a {route.rtype.kind}")
    review.update(apiVersion=route.rtype.api_version, kind=route.rtype.kind)
    metadata = review.get("metadata")
    if not isinstance(metadata, dict):
        metadata = review["metadata"] = {}
    metadata["creationTimestamp"] = None
    if route.rtype.review == "access":
        review["status"] = {"allowed": True, "reason": "the raven API server's bearer token is cluster-admin (no RBAC)"}  # noqa: E501
    else:
        review["status"] = {"userInfo": {"username": "admin",
                                         "groups": ["system:masters", "system:authenticated"]}}
    return json_response(201, review)


def _one_object(request: Request, route: ResourceRoute, obj: dict[str, Any]) -> Response:
    """One object in the form the Accept header asks for."""
    wants = negotiation.wanted_form(request.headers)
    if wants == negotiation.TABLE:
        meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
        include = request.query.get("includeObject", "PartialObjectMetadata")
        return json_response(200, tables.table(route.rtype, [obj], include, meta))
    if wants == negotiation.METADATA:
        return json_response(200, {"kind": "PartialObjectMetadata", "apiVersion": META_V1,
                                   "metadata": obj["metadata"]})
    return json_response(200, obj)


def _list(context: ServerContext, request: Request, route: ResourceRoute) -> Response:
    api: ResourceApi = context.api
    rtype, query = route.rtype, request.query
    limit = bodies.query_int(query, "limit") or 0
    keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rtype.kind)
    context.store.check_read_at(query.get("resourceVersion"))
    items, rv = api.list(rtype, route.namespace, keep)
    items, meta = paging.page(items, rv, limit, query.get("continue"))
    wants = negotiation.wanted_form(request.headers)
    if wants == negotiation.TABLE:
        objs = [api.to_version(rtype, s.obj) for s in items]
        include = query.get("includeObject", "PartialObjectMetadata")
        return json_response(200, tables.table(rtype, objs, include, meta))
    if wants == negotiation.METADATA:
        return json_response(200, {
            "kind": "PartialObjectMetadataList", "apiVersion": META_V1, "metadata": meta,
            "items": [{"kind": "PartialObjectMetadata", "apiVersion": META_V1,
                       "metadata": s.obj["metadata"]} for s in items],
        })
    if api.needs_conversion(rtype):
        raws = [encode(api.to_version(rtype, s.obj)) for s in items]
    else:
        raws = [s.raw for s in items]
    head = encode({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta})
    return Response(200, head[:-1] + b',"items":[' + b",".join(raws) + b"]}")


def _delete_collection(context: ServerContext, request: Request,
                       route: ResourceRoute) -> Response:
    api: ResourceApi = context.api
    query = request.query
    keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), route.rtype.kind)
    items, _ = api.list(route.rtype, route.namespace, keep)
    options = _delete_options(context, request)
    dry_run = dry_run_requested(query) or delete_options_dry_run(options)
    deleted = []
    # Every delete is checked (dry run) before any is made: an item that may not be deleted
    # (a protected namespace, a failed precondition) refuses the whole collection, instead
    # of answering an error after the items sorted before it were deleted.
    for check in ((True, False) if not dry_run else (True,)):  # check: this pass is dry
        for stored in items:
            meta = stored.obj["metadata"]
            try:
                result = api.delete(route.rtype, meta.get("namespace"), meta["name"],
                                    options, check)
            except ApiError as error:
                if error.code != 404:
                    raise
                continue
            if check == dry_run:
                deleted.append(result)
    return json_response(200, {"kind": route.rtype.list_kind,
                               "apiVersion": route.rtype.api_version,
                               "metadata": {}, "items": deleted})
