"""What a request means, without HTTP: the modules the handler dispatches to (documents, verbs,
watch, connect, negotiation, exchange) take a `Request` and a context and answer or refuse,
with a real store underneath and no socket."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from raven.apiserver import connect, documents, negotiation, verbs, watch
from raven.apiserver.api import ResourceApi
from raven.apiserver.context import ServerContext
from raven.apiserver.exchange import (
    MAX_QUERY_FIELDS,
    Request,
    parse_query,
    percent_encode_raw,
)
from raven.apiserver.fanout import FanoutHealth
from raven.apiserver.resources import Registry
from raven.apiserver.routing import Endpoint, ResourceRoute, route
from raven.apiserver.settings import ApiServerSettings
from raven.apiserver.status import ApiError
from raven.apiserver.store import Store, WatchEvent


@pytest.fixture
def context(tmp_path: Path) -> Iterator[ServerContext]:
    store = Store(tmp_path / "store.sqlite")
    registry = Registry()
    api = ResourceApi(store, registry)
    api.bootstrap()
    yield ServerContext(settings=ApiServerSettings(data_dir=tmp_path), token="t",
                        registry=registry, api=api, store=store, address="127.0.0.1:1",
                        is_stopping=lambda: False,
                        watch_health=lambda: FanoutHealth(True, "", 0, 0))
    store.close()


def request(method: str, path: str, query: str = "", body: bytes = b"",
            headers: dict[str, str] | None = None, command: str | None = None) -> Request:
    message = Message()
    for key, value in (headers or {}).items():
        message[key] = value
    return Request(method=method, command=command or method, target=path, path=path,
                   raw_query=query, query=parse_query(query), headers=message, body=body)


def resource(context: ServerContext, req: Request) -> ResourceRoute:
    target = route(req.method, req.path, context.registry)
    assert target.endpoint is Endpoint.RESOURCE and target.resource is not None
    return target.resource


def serve(context: ServerContext, req: Request) -> tuple[int, Any]:
    response = verbs.serve(context, req, resource(context, req))
    return response.code, json.loads(response.payload)


CM = "/api/v1/namespaces/default/configmaps"


def test_create_get_list_delete_round_trip(context: ServerContext) -> None:
    body = json.dumps({"metadata": {"name": "a"}, "data": {"k": "v"}}).encode()
    code, created = serve(context, request("POST", CM, body=body))
    assert code == 201 and created["data"] == {"k": "v"}
    code, got = serve(context, request("GET", CM + "/a"))
    assert code == 200 and got["metadata"]["uid"] == created["metadata"]["uid"]
    listed = serve(context, request("GET", CM))[1]
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    assert listed["kind"] == "ConfigMapList"
    code, status = serve(context, request("DELETE", CM + "/a"))
    assert code == 200 and status["kind"] == "Status" and status["details"]["name"] == "a"
    with pytest.raises(ApiError) as err:
        serve(context, request("GET", CM + "/a"))
    assert err.value.code == 404


def test_a_dry_run_writes_nothing_and_other_dry_runs_are_refused(context: ServerContext) -> None:
    body = json.dumps({"metadata": {"name": "dry"}}).encode()
    assert serve(context, request("POST", CM, "dryRun=All", body))[0] == 201
    assert serve(context, request("GET", CM))[1]["items"] == []
    with pytest.raises(ApiError) as err:
        serve(context, request("POST", CM, "dryRun=Some", body))
    assert err.value.code == 400 and "use dryRun=All" in err.value.message


def test_bodies_of_the_wrong_shape_name_the_verb_and_object(context: ServerContext) -> None:
    with pytest.raises(ApiError) as err:
        serve(context, request("PUT", CM + "/x", body=b"[1]"))
    assert err.value.code == 400
    assert 'the body of a PUT of configmaps "x" must be a JSON object' in err.value.message
    with pytest.raises(ApiError) as err:
        serve(context, request("PATCH", CM + "/x", body=b"{}",
                               headers={"Content-Type": "application/json-patch+json"}))
    assert "must be a JSON array" in err.value.message


def test_table_and_metadata_forms_follow_the_accept_header(context: ServerContext) -> None:
    serve(context, request("POST", CM, body=b'{"metadata": {"name": "t"}}'))
    table = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    assert serve(context, request("GET", CM, headers=table))[1]["kind"] == "Table"
    meta = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
    listed = serve(context, request("GET", CM, headers=meta))[1]
    assert listed["kind"] == "PartialObjectMetadataList"
    assert "data" not in listed["items"][0]


def test_protobuf_only_clients_get_406() -> None:
    message = Message()
    message["Accept"] = "application/vnd.kubernetes.protobuf"
    with pytest.raises(ApiError) as err:
        negotiation.check_accept(message)
    assert err.value.code == 406
    message.replace_header("Accept", "application/vnd.kubernetes.protobuf, application/json")
    negotiation.check_accept(message)  # JSON is acceptable too: no error


def test_access_reviews_are_allowed_for_the_admin_token(context: ServerContext) -> None:
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    code, review = serve(context, request("POST", path, body=b'{"spec": {}}'))
    assert code == 201 and review["status"]["allowed"] is True


def test_delete_collection_refuses_all_when_one_may_not_go(context: ServerContext) -> None:
    namespaces = "/api/v1/namespaces"
    serve(context, request("POST", namespaces, body=b'{"metadata": {"name": "scratch"}}'))
    with pytest.raises(ApiError):
        serve(context, request("DELETE", namespaces))  # default/kube-system are protected
    names = [n["metadata"]["name"] for n in serve(context, request("GET", namespaces))[1]["items"]]
    assert "scratch" in names


def test_documents_answer_health_version_and_404(context: ServerContext) -> None:
    health = documents.serve(context, route("GET", "/healthz", context.registry))
    assert (health.code, health.payload, health.content_type) == \
        (200, b"ok", "text/plain; charset=utf-8")
    assert "gitVersion" in json.loads(
        documents.serve(context, route("GET", "/version", context.registry)).payload)
    with pytest.raises(ApiError) as err:
        documents.serve(context, route("GET", "/apis/no.such.group", context.registry))
    assert err.value.code == 404 and "/apis/no.such.group" in err.value.message


def test_watch_requests_are_checked_before_any_byte_is_sent(context: ServerContext) -> None:
    req = request("GET", CM, "watch=1&resourceVersion=abc")
    assert watch.requested(req, resource(context, req))
    head = request("GET", CM, "watch=1", command="HEAD")
    with socket.socket() as sock:
        with pytest.raises(ApiError) as err:
            watch.open_watch(context, req, resource(context, req), sock)
        assert err.value.code == 400
        assert "'abc' is not a valid resourceVersion" in err.value.message
        with pytest.raises(ApiError) as err:
            watch.open_watch(context, head, resource(context, head), sock)
        assert err.value.code == 405
    assert not watch.requested(request("GET", CM), resource(context, request("GET", CM)))


def test_a_watch_of_one_object_selects_it_by_name(context: ServerContext) -> None:
    serve(context, request("POST", CM, body=b'{"metadata": {"name": "one"}}'))
    serve(context, request("POST", CM, body=b'{"metadata": {"name": "two"}}'))
    req = request("GET", CM + "/two", "watch=true&timeoutSeconds=5")
    with socket.socket() as sock:
        opened = watch.open_watch(context, req, resource(context, req), sock)
        sub = opened.subscription
        stored, rv = context.store.list(sub.key, None)
        lines = [sub.format_event(WatchEvent(type="ADDED", rv=rv, key=sub.key,
                                             namespace="default", old=None, new=s.obj))
                 for s in stored]
    assert [json.loads(line)["object"]["metadata"]["name"] for line in lines if line] == ["two"]
    assert opened.since is None


def test_connect_without_kubelet_material_is_503(context: ServerContext) -> None:
    req = request("GET", "/api/v1/namespaces/default/pods/p/log")
    target = resource(context, req)
    assert connect.is_connect(target)
    with pytest.raises(ApiError) as err:
        connect.open_relay(context, req, target)
    assert err.value.code == 503 and "kubelet client certificate" in err.value.message


def test_upgrade_needs_both_headers() -> None:
    assert connect.wants_upgrade("keep-alive, Upgrade", "websocket")
    assert not connect.wants_upgrade("keep-alive", "websocket")
    assert not connect.wants_upgrade("upgrade", None)


def test_request_targets_and_queries() -> None:
    assert percent_encode_raw("/api/v1/x?y=1") == "/api/v1/x?y=1"
    assert percent_encode_raw("/a/\u00c3\u00bc") == "/a/%C3%BC"  # raw UTF-8 of ü, read as Latin-1
    assert parse_query("a=1&a=2&b=") == {"a": "2", "b": ""}
    with pytest.raises(ApiError) as err:
        parse_query("&".join(f"k{i}=v" for i in range(MAX_QUERY_FIELDS + 1)))
    assert err.value.code == 400
