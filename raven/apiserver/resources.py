"""The resource types the server serves: built-ins plus the ones CustomResourceDefinitions add.

Rules kept:
- One `ResourceType` per served group/version/plural; all versions of a resource share one
  storage key (group, plural) and are stored at the storage version.
- Gateways (raven.openyurt.io) are always served, v1beta1 stored, v1alpha1 through conversion;
  a stored Gateway CRD only contributes its printer columns, short names and categories.
- Other CRDs are served as generic stored objects as soon as they are stored.
- A stored CRD this server cannot serve (written by an older version, or edited on disk) is
  reported in the log and skipped: it never stops the server from starting or other CRDs from
  being served. New CRDs are validated (raven.apiserver.crd) before they are stored.
- Types other than the ones needed by Raven (apps, RBAC, service accounts) are generic stored
  objects: no controllers act on them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from raven.constants import API_GROUP, API_VERSION, API_VERSION_ALPHA, GATEWAY_KIND, GATEWAY_PLURAL

log = logging.getLogger("raven.apiserver")

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    storage_version: str = ""
    has_status: bool = False
    # Nodes are registered with their status in one create; custom resources drop it.
    status_on_create: bool = False
    # metadata.generation counts changes of everything but metadata and status.
    tracks_generation: bool = False
    printer_columns: tuple[dict[str, Any], ...] = ()
    # The resource is a Raven Gateway: validated by raven.model and converted between versions.
    is_gateway: bool = False
    # Custom resources refuse a PUT without metadata.resourceVersion (like kube-apiserver).
    custom: bool = False
    # Create-only review resources answered from the request and never stored:
    # "access" (SelfSubjectAccessReview) or "self" (SelfSubjectReview).
    review: str = ""
    # A deprecated CRD version: sent to clients as a `Warning: 299` header (kubectl prints it).
    deprecation_warning: str = ""
    verbs: tuple[str, ...] = ALL_VERBS
    # Subresources answered by a kubelet (pods/log, pods/exec, nodes/proxy): the API server
    # dials the node and relays the bytes (raven.apiserver.kubeletproxy).
    connect_subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_api_version(self) -> str:
        version = self.storage_version or self.version
        return f"{self.group}/{version}" if self.group else version

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


def _core(plural: str, kind: str, namespaced: bool, **kw: Any) -> ResourceType:
    return ResourceType(group="", version="v1", plural=plural, kind=kind, namespaced=namespaced,
                        **kw)


def _grp(group: str, version: str, plural: str, kind: str, namespaced: bool, **kw: Any) -> ResourceType:  # noqa: E501
    return ResourceType(group=group, version=version, plural=plural, kind=kind, namespaced=namespaced, **kw)  # noqa: E501


RBAC = "rbac.authorization.k8s.io"

BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _core("namespaces", "Namespace", False, short_names=("ns",), has_status=True,
          status_on_create=True),
    _core("nodes", "Node", False, short_names=("no",), has_status=True, status_on_create=True,
          connect_subresources=("proxy",)),
    # Pods are stored as their kubelets report them (the lab's kubelet stand-in registers its
    # pods); there is no scheduler: spec.nodeName is written by whoever creates the pod.
    _core("pods", "Pod", True, short_names=("po",), has_status=True, status_on_create=True,
          categories=("all",), connect_subresources=("log", "exec", "attach")),
    _core("configmaps", "ConfigMap", True, short_names=("cm",)),
    _core("secrets", "Secret", True),
    _core("events", "Event", True, short_names=("ev",)),
    _core("serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    _core("services", "Service", True, short_names=("svc",), has_status=True,
          categories=("all",)),
    _grp("apps", "v1", "daemonsets", "DaemonSet", True, short_names=("ds",), has_status=True,
         tracks_generation=True, categories=("all",)),
    _grp("apps", "v1", "deployments", "Deployment", True, short_names=("deploy",),
         has_status=True, tracks_generation=True, categories=("all",)),
    _grp("coordination.k8s.io", "v1", "leases", "Lease", True),
    _grp("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",)),
    _grp(RBAC, "v1", "clusterroles", "ClusterRole", False),
    _grp(RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _grp(RBAC, "v1", "roles", "Role", True),
    _grp(RBAC, "v1", "rolebindings", "RoleBinding", True),
    _grp("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
         False, short_names=("crd", "crds"), has_status=True, tracks_generation=True),
    _grp("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview",
         False, review="access", verbs=("create",)),
    _grp("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False,
         review="self", verbs=("create",)),
    _grp(API_GROUP, API_VERSION, GATEWAY_PLURAL, GATEWAY_KIND, False, has_status=True,
         tracks_generation=True, is_gateway=True, storage_version=API_VERSION, custom=True,
         short_names=("gw",)),
    _grp(API_GROUP, API_VERSION_ALPHA, GATEWAY_PLURAL, GATEWAY_KIND, False, has_status=True,
         tracks_generation=True, is_gateway=True, storage_version=API_VERSION, custom=True,
         short_names=("gw",)),
)

# Group preference order in discovery (core first, as kube-apiserver lists them).
PREFERRED_VERSION = {API_GROUP: API_VERSION}


def _deprecation(group: str, kind: str, version: dict[str, Any]) -> str:
    if not version.get("deprecated"):
        return ""
    return str(version.get("deprecationWarning")
               or f"{group}/{version.get('name')} {kind} is deprecated")


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """Served types of one CRD; TypeError/ValueError when a field has the wrong type."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    if not group or not plural or not kind:
        return []
    for what, value in (("group", group), ("plural", plural), ("kind", kind),
                         ("singular", names.get("singular") or kind)):
        if not isinstance(value, str):
            raise TypeError(f"spec.names.{what} must be a string, got {value!r}")
    versions = [v for v in spec.get("versions") or [] if isinstance(v, dict)]
    storage = next((v.get("name") for v in versions if v.get("storage")), None)
    if storage is None and versions:
        storage = versions[0].get("name")
    out = []
    for ver in versions:
        if not ver.get("served", True) or not ver.get("name"):
            continue
        out.append(
            ResourceType(
                group=group, version=str(ver["name"]), plural=plural, kind=kind,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or kind.lower(),
                short_names=_strings(names.get("shortNames")),
                categories=_strings(names.get("categories")),
                storage_version=str(storage or ver["name"]),
                has_status="status" in (ver.get("subresources") or {}),
                tracks_generation=True, custom=True,
                printer_columns=_columns(ver.get("additionalPrinterColumns")),
                deprecation_warning=_deprecation(group, kind, ver),
            )
        )
    return out


def _columns(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise TypeError(f"additionalPrinterColumns must be a list of objects, got {value!r}")
    return tuple(value)


@dataclass
class Registry:
    """Thread-safe lookup of served types; CRD writes call `set_crds` with all stored CRDs."""

    _types: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.set_crds([])

    @staticmethod
    def serving_problems(crd: dict[str, Any]) -> list[tuple[str, str]]:
        """Why this (already validated) CRD cannot be served; empty when it can."""
        try:
            _types_from_crd(crd)
        except (TypeError, ValueError, AttributeError) as exc:
            return [("spec", f"cannot be served: {exc}")]
        return []

    def set_crds(self, crds: Iterable[dict[str, Any]]) -> None:
        types = {(t.group, t.version, t.plural): t for t in BUILTIN_TYPES}
        for crd in crds:
            try:
                crd_types = _types_from_crd(crd)
            except (TypeError, ValueError, AttributeError) as exc:
                name = (crd.get("metadata") or {}).get("name") if isinstance(crd, dict) else None
                log.error("skipping CustomResourceDefinition %r: it cannot be served (%s); "
                          "fix or delete it (kubectl edit/delete crd %s)", name, exc, name)
                continue
            for crd_type in crd_types:
                key = (crd_type.group, crd_type.version, crd_type.plural)
                builtin = types.get(key)
                if builtin is not None and builtin.is_gateway:
                    # Keep our Gateway semantics; take presentation from the stored CRD.
                    types[key] = replace(
                        builtin,
                        printer_columns=crd_type.printer_columns,
                        short_names=crd_type.short_names or builtin.short_names,
                        categories=crd_type.categories,
                        singular=crd_type.singular,
                        deprecation_warning=crd_type.deprecation_warning,
                    )
                elif (crd_type.group, crd_type.plural) not in _BUILTIN_KEYS:
                    types[key] = crd_type
        with self._lock:
            self._types = types

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self._lock:
            return self._types.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions, preferred version first."""
        out: dict[str, list[str]] = {}
        for t in self.all():
            versions = out.setdefault(t.group, [])
            if t.version not in versions:
                versions.append(t.version)
        for group, versions in out.items():
            preferred = PREFERRED_VERSION.get(group)
            versions.sort(key=lambda v: (v != preferred, _version_priority(v)))
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return sorted(
            (t for t in self.all() if t.group == group and t.version == version),
            key=lambda t: t.plural,
        )


_BUILTIN_KEYS = {(t.group, t.plural) for t in BUILTIN_TYPES}


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first."""
    import re

    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (3, 0, 0)
    major = int(match.group(1))
    stage = {"alpha": 2, "beta": 1, None: 0}[match.group(2)]
    minor = int(match.group(3) or 0)
    return (stage, -major, -minor)
