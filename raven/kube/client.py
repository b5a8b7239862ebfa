"""The one Kubernetes client Raven uses: built from a kubeconfig or the in-cluster service account.

Rules kept:
- every request goes through the official `kubernetes` client's ApiClient (its TLS, auth and
  kubeconfig handling); we only choose the path, so one small generic layer serves core, lease,
  event and Gateway resources alike and always returns plain JSON dicts (the model parses them);
- every failure surfaces as a `raven.kube.errors.KubeError` subclass;
- every request has a timeout, so a silent server never hangs a loop; watches use a read timeout
  longer than the server-side `timeoutSeconds`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from raven import constants
from raven.kube.errors import ConfigError, KubeError, translate, typed
from raven.settings import KubeSettings

JSON = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API. group '' is the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
SECRETS = Resource("", "v1", "secrets", "Secret", namespaced=True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
SERVICES = Resource("", "v1", "services", "Service", namespaced=True)
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints", namespaced=True)
GATEWAYS = Resource(
    constants.API_GROUP, constants.API_VERSION, constants.GATEWAY_PLURAL, "Gateway", False
)




def _load_configuration(settings: KubeSettings) -> k8s.Configuration:
    cfg = k8s.Configuration()
    path = settings.kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get(
        "KUBECONFIG") else None)
    try:
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"kubeconfig {path} does not exist: pass --kubeconfig PATH")
            k8s_config.load_kube_config(
                config_file=str(path), context=settings.context, client_configuration=cfg
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=cfg)
        else:
            default = Path.home() / ".kube" / "config"
            if not default.is_file():
                raise ConfigError(
                    "no kubeconfig: pass --kubeconfig PATH, set KUBECONFIG, or run in a pod"
                )
            k8s_config.load_kube_config(
                config_file=str(default), context=settings.context, client_configuration=cfg
            )
    except KubeError:
        raise
    except Exception as exc:
        raise ConfigError(f"kubeconfig {path or 'in-cluster'}: {exc}") from exc
    cfg.retries = 0  # our own backoff decides; urllib3 must not hide failures for minutes
    return cfg


class WatchStream:
    """One open watch request: iterate decoded events; `close()` from any thread ends it."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[JSON]:
        buffer = b""
        try:
            for chunk in self._response.stream(4096, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except Exception as exc:
            if self._closed:
                return
            raise translate(exc) from exc

    def close(self) -> None:
        self._closed = True
        # The socket may be gone already; closing is best effort. shutdown() (urllib3 2.3+)
        # unblocks a reader sitting in another thread, which close() alone does not.
        with contextlib.suppress(Exception):
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.release_conn()
            self._response.close()


class Kube:
    """Generic JSON access to the API server. Every method raises only KubeError on failure."""

    def __init__(self, settings: KubeSettings | None = None) -> None:
        self.settings = settings or KubeSettings()
        self.configuration = _load_configuration(self.settings)
        self.api = k8s.ApiClient(self.configuration)
        self.api.user_agent = self.settings.user_agent

    def close(self) -> None:
        self.api.close()

    @property
    def host(self) -> str:
        return str(self.configuration.host)

    # -- raw request ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        stream: bool = False,
        timeout: Any = None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=body, post_params=post,
                _request_timeout=timeout or (self.settings.request_timeout,
                                             self.settings.request_timeout),
            )
        except ApiException:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        if not 200 <= response.status < 300:
            response.read()
            raise translate(ApiException(http_resp=response))
        if stream:
            return response.response
        data = response.read()
        return json.loads(data) if data else {}

    # -- verbs ---------------------------------------------------------------------------------

    @typed
    def get(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return self._request("GET", res.path(namespace, name))

    @typed
    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[JSON], str]:
        """All objects and the list's resourceVersion (to start a watch from)."""
        query: list[tuple[str, Any]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        data = self._request("GET", res.path(namespace), query)
        items = data.get("items") or []
        for item in items:  # list items carry no kind/apiVersion; restore them for the model
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return items, str((data.get("metadata") or {}).get("resourceVersion", ""))

    @typed
    def watch(
        self,
        res: Resource,
        resource_version: str,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int | None = None,
    ) -> WatchStream:
        seconds = timeout_seconds or self.settings.watch_timeout
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", seconds),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if label_selector:
            query.append(("labelSelector", label_selector))
        response = self._request(
            "GET", res.path(namespace), query, stream=True,
            timeout=(self.settings.request_timeout, seconds + 15),
        )
        return WatchStream(response)

    @typed
    def create(self, res: Resource, obj: JSON, namespace: str | None = None) -> JSON:
        return self._request("POST", res.path(namespace), body=obj)

    @typed
    def replace(self, res: Resource, obj: JSON, namespace: str | None = None) -> JSON:
        """PUT with the object's resourceVersion: Conflict when someone wrote in between."""
        return self._request("PUT", res.path(namespace, obj["metadata"]["name"]), body=obj)

    @typed
    def replace_status(self, res: Resource, obj: JSON, namespace: str | None = None) -> JSON:
        return self._request(
            "PUT", res.path(namespace, obj["metadata"]["name"], "status"), body=obj
        )

    @typed
    def merge_patch(
        self, res: Resource, name: str, patch: JSON, namespace: str | None = None, sub: str = "",
        timeout: float | None = None,
    ) -> JSON:
        return self._request(
            "PATCH", res.path(namespace, name, sub), body=patch,
            content_type="application/merge-patch+json",
            timeout=(timeout, timeout) if timeout else None,
        )

    @typed
    def delete(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return self._request("DELETE", res.path(namespace, name))
