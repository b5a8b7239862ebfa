"""Pure routing of API server paths (raven.apiserver.routing): no server, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.apiserver.resources import Registry
from raven.apiserver.routing import (
    Endpoint,
    ResourceRoute,
    Target,
    path_segment_problem,
    route,
    split_path,
)
from raven.apiserver.status import ApiError

REGISTRY = Registry()


def resource(method: str, path: str) -> ResourceRoute:
    target = route(method, path, REGISTRY)
    assert target.endpoint is Endpoint.RESOURCE and target.resource is not None
    return target.resource


def refused(method: str, path: str) -> ApiError:
    with pytest.raises(ApiError) as err:
        route(method, path, REGISTRY)
    return err.value


@pytest.mark.parametrize(("path", "endpoint"), [
    ("/healthz", Endpoint.HEALTH), ("/livez/", Endpoint.HEALTH), ("/readyz", Endpoint.HEALTH),
    ("/version", Endpoint.VERSION), ("/openapi/v3", Endpoint.OPENAPI_ROOT),
    ("/openapi/v3/", Endpoint.OPENAPI_ROOT), ("/api", Endpoint.CORE_VERSIONS),
    ("/apis", Endpoint.GROUP_LIST), ("/apis/raven.openyurt.io", Endpoint.GROUP),
    ("/api/v1", Endpoint.RESOURCE_LIST), ("/apis/raven.openyurt.io/v1beta1",
                                          Endpoint.RESOURCE_LIST),
])
def test_fixed_endpoints(path: str, endpoint: Endpoint) -> None:
    assert route("GET", path, REGISTRY).endpoint is endpoint


def test_openapi_documents_name_their_group_version() -> None:
    core = route("GET", "/openapi/v3/api/v1", REGISTRY)
    assert (core.endpoint, core.group, core.version) == (Endpoint.OPENAPI_DOC, "", "v1")
    gateways = route("GET", "/openapi/v3/apis/raven.openyurt.io/v1beta1", REGISTRY)
    assert (gateways.group, gateways.version) == ("raven.openyurt.io", "v1beta1")
    assert refused("GET", "/openapi/v3/apis/x").code == 404
    assert "no OpenAPI schema" in refused("GET", "/openapi/v2").message


def test_collections_objects_and_subresources() -> None:
    listed = resource("GET", "/api/v1/namespaces/default/configmaps")
    assert (listed.rtype.plural, listed.namespace, listed.name) == ("configmaps", "default", None)
    every = resource("GET", "/api/v1/configmaps")
    assert (every.namespace, every.name) == (None, None)
    obj = resource("GET", "/apis/raven.openyurt.io/v1beta1/gateways/gw-a/status")
    assert (obj.rtype.kind, obj.namespace, obj.name, obj.subresource) == (
        "Gateway", None, "gw-a", "status")
    watched = resource("GET", "/api/v1/watch/namespaces/kube-system/configmaps/c1")
    assert watched.watch_path and (watched.namespace, watched.name) == ("kube-system", "c1")


def test_namespace_subresources_are_not_namespaced_paths() -> None:
    finalize = resource("PUT", "/api/v1/namespaces/team-a/finalize")
    assert (finalize.rtype.plural, finalize.name, finalize.subresource) == (
        "namespaces", "team-a", "finalize")
    status = resource("GET", "/api/v1/namespaces/team-a/status")
    assert (status.namespace, status.subresource) == (None, "status")


@pytest.mark.parametrize("path", [
    "/", "/nope", "/api/v2/pods", "/api/v1/nosuchthings", "/api/v1/configmaps/x",
    "/api/v1/namespaces/default/nodes", "/api/v1/namespaces/default/configmaps/c/nosub",
    "/api/v1/namespaces/default/configmaps/c/status/extra", "/apis/nope.io/v1/things",
])
def test_unknown_paths_are_404(path: str) -> None:
    error = refused("GET", path)
    assert error.code == 404 and "could not find the requested resource" in error.message


def test_discovery_documents_only_allow_get() -> None:
    assert refused("POST", "/api/v1").code == 405


def test_names_are_percent_decoded_per_segment() -> None:
    spaced = resource("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/a%20b")
    assert spaced.name == "a b"
    umlaut = resource("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/r%C3%BCbe")
    assert umlaut.name == "rübe"
    colon = resource("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Aview")
    assert colon.name == "system:view"
    # Decoding after splitting: "%2F" cannot make a name into two segments.
    assert split_path("/a%2Fb/c") == ["a/b", "c"]


@pytest.mark.parametrize(("segment", "problem"), [
    ("a%2Fb", "may not contain '/'"), ("a%25b", "may not contain '%'"),
    ("%2E", "may not be '.'"), ("%2E%2E", "may not be '..'"),
])
def test_names_breaking_path_segment_rules_are_400(segment: str, problem: str) -> None:
    for path in (f"/api/v1/namespaces/default/configmaps/{segment}",
                 f"/api/v1/namespaces/{segment}/configmaps/c"):
        error = refused("GET", path)
        assert error.code == 400 and problem in error.message


def test_bad_percent_encoding_is_400() -> None:
    error = refused("GET", "/api/v1/namespaces/default/configmaps/%FF%FE")
    assert error.code == 400 and "UTF-8" in error.message


def test_path_segment_rules() -> None:
    assert path_segment_problem("gw-a") is None
    assert path_segment_problem("a b") is None
    assert path_segment_problem("system:node:n1") is None
    for bad in (".", "..", "a/b", "50%"):
        assert path_segment_problem(bad) is not None


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
       segments=st.lists(st.one_of(
           st.sampled_from(["api", "apis", "v1", "namespaces", "default", "configmaps",
                            "gateways", "raven.openyurt.io", "v1beta1", "watch", "status",
                            "openapi", "v3", "%2F", "%25", "%2E", "%FF", ".", "..", ""]),
           st.text(max_size=8)), max_size=7))
def test_routing_any_path_is_a_target_or_an_api_error(method: str,
                                                       segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    try:
        target = route(method, path, REGISTRY)
    except ApiError as error:
        assert error.code in (400, 404, 405)
        return
    assert isinstance(target, Target)
    if target.resource is not None:
        for name in (target.resource.name, target.resource.namespace):
            assert name is None or path_segment_problem(name) is None
