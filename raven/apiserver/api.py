"""Request semantics of the API server on plain dicts: create, update, patch, delete, get, list.

Rules kept (Kubernetes API conventions):
- POST 201 or 409 AlreadyExists; PUT 404 on a missing object and 409 Conflict on a stale
  resourceVersion; an update that changes nothing writes nothing (same resourceVersion).
- Status subresource: writes to the main resource keep the stored status, writes to /status keep
  everything but status. Custom resources and workloads drop status on create; Nodes keep it.
- metadata.uid and creationTimestamp are set once; metadata.generation starts at 1 and is
  bumped only when something outside metadata and status changes.
- Namespaced objects need an existing namespace (404 `namespaces "x" not found`); deleting a
  namespace deletes what it contains; default, kube-system and kube-public cannot be deleted.
- Gateways are stored at v1beta1, validated with raven.model.gateway_problems (422 Invalid) and
  converted with raven.model.convert_gateway for v1alpha1 clients.
- Every write is checked completely before anything is stored, and stores nothing when refused:
  metadata and built-in field types (raven.apiserver.objects), names by the rule of their kind,
  CRDs as kube-apiserver validates them (raven.apiserver.crd); a body of any shape gets 400/422,
  never 500. A refused namespace delete keeps the namespace's contents.
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from raven import model
from raven.apiserver.crd import crd_problems
from raven.apiserver.objects import kind_problems, metadata_problems, name_problem
from raven.apiserver.patch import apply_patch
from raven.apiserver.resources import Registry, ResourceType
from raven.apiserver.status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    invalid,
    not_found,
)
from raven.apiserver.store import Store, StoredObject
from raven.errors import ValidationError

NAMESPACES = ("", "namespaces")
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = ("default", "kube-system", "kube-public")
STALE = "the object has been modified; please apply your changes to the latest version and try again"  # noqa: E501

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What metadata.generation tracks: everything except metadata, status and type info."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ResourceApi:
    """Kubernetes semantics over a Store; every method raises ApiError for refusals."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.registry.set_crds(s.obj for s in store.list(CRDS)[0])

    def bootstrap(self) -> None:
        ns_type = self.registry.get("", "v1", "namespaces")
        assert ns_type is not None
        for name in BOOTSTRAP_NAMESPACES:
            if self.store.get(NAMESPACES, "", name) is None:
                self.create(ns_type, None, {"metadata": {"name": name}})

    # ------------------------------------------------------------------ versions

    def to_storage(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        if rtype.is_gateway and rtype.version != rtype.storage_version:
            try:
                return model.convert_gateway(obj, rtype.storage_api_version)
            except ValidationError as exc:
                raise invalid(rtype.group, rtype.kind, _name(obj), _causes(exc.problems)) from exc
        obj["apiVersion"] = rtype.storage_api_version
        return obj

    def to_version(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as the client's version (a new dict when it differs)."""
        if obj.get("apiVersion") == rtype.api_version:
            return obj
        if rtype.is_gateway:
            return model.convert_gateway(obj, rtype.api_version)
        out = dict(obj)
        out["apiVersion"] = rtype.api_version
        return out

    def needs_conversion(self, rtype: ResourceType) -> bool:
        return rtype.version != (rtype.storage_version or rtype.version)

    # ------------------------------------------------------------------ reads

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(rtype.storage_key, namespace or "", name)
        if obj is None:
            raise not_found(rtype.group, rtype.plural, name)
        return self.to_version(rtype, obj)

    def list(
        self, rtype: ResourceType, namespace: str | None,
        keep: Callable[[dict[str, Any]], bool] | None,
    ) -> tuple[list[StoredObject], int]:
        items, rv = self.store.list(rtype.storage_key, namespace)
        if keep is not None:
            items = [s for s in items if keep(s.obj)]
        return items, rv

    # ------------------------------------------------------------------ checks

    def _check_body(self, rtype: ResourceType, body: Any, namespace: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"the body of a {rtype.kind} must be a JSON or YAML object")
        kind = body.get("kind")
        if kind is not None and kind != rtype.kind:
            raise bad_request(
                f"the kind of the provided object ({kind}) does not match the resource "
                f"{rtype.plural} ({rtype.kind}); send it to the right URL"
            )
        version = body.get("apiVersion")
        if version is not None and version != rtype.api_version:
            raise bad_request(
                f"the API version in the data ({version}) does not match the expected API "
                f"version ({rtype.api_version})"
            )
        body["apiVersion"] = rtype.api_version
        body["kind"] = rtype.kind
        metadata = body.get("metadata")
        if metadata is None:
            metadata = body["metadata"] = {}
        if not isinstance(metadata, dict):
            raise bad_request(f"{rtype.kind}.metadata must be an object")
        problems = metadata_problems(metadata)
        if problems:
            name = metadata.get("name")
            raise invalid(rtype.group, rtype.kind, name if isinstance(name, str) else "",
                          problems)
        if rtype.namespaced:
            given = metadata.get("namespace")
            if given and given != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        problems = _label_problems(metadata.get("labels") or {}, metadata.get("annotations") or {})
        if problems:
            raise invalid(rtype.group, rtype.kind, str(metadata.get("name", "")), problems)
        metadata.pop("managedFields", None)
        return body

    def _check_namespace(self, rtype: ResourceType, namespace: str | None) -> None:
        if rtype.namespaced and self.store.get(NAMESPACES, "", namespace or "") is None:
            raise not_found("", "namespaces", namespace or "")
        # Under the write lock, as the CRD delete and its cascade: a create routed just before
        # its CRD was deleted must not store an object that outlives the CRD (and comes back
        # when a CRD of that name is made again).
        group, plural = rtype.storage_key
        if not self._is_builtin(rtype.storage_key) and self.store.get(
                CRDS, "", f"{plural}.{group}") is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                           f"({plural}.{group}): its CustomResourceDefinition was deleted")

    def _check_input(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        """Field types, before defaults read them: 422 naming the field, never a 500."""
        problems = kind_problems(rtype.group, rtype.kind, obj)
        if rtype.storage_key == CRDS:
            problems += crd_problems(obj)
        if problems:
            raise invalid(rtype.group, rtype.kind, _name(obj), problems)

    def _validate(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        name = _name(obj)
        if rtype.is_gateway:
            problems = model.gateway_problems(obj)
            if problems:
                raise invalid(rtype.group, rtype.kind, name, _causes(problems))
        if rtype.storage_key == CRDS:
            problems = crd_problems(obj) or self.registry.serving_problems(obj)
            if problems:
                raise invalid(rtype.group, rtype.kind, name, problems)

    def _defaults(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype.storage_key == NAMESPACES:
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = _name(obj)
        elif rtype.kind == "Secret":
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {}) or {}
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
                obj["data"] = data
            obj.setdefault("type", "Opaque")
        elif rtype.storage_key == CRDS:
            spec = obj.get("spec") or {}
            versions = [v for v in spec.get("versions") or [] if isinstance(v, dict)]
            storage = [v.get("name") for v in versions if v.get("storage")]
            previous = (obj.get("status") or {}).get("storedVersions") or []
            stamps = {c.get("type"): c.get("lastTransitionTime")
                      for c in (obj.get("status") or {}).get("conditions") or []}
            stamp = now_rfc3339()
            obj["status"] = {
                "acceptedNames": copy.deepcopy(spec.get("names") or {}),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found",
                     "lastTransitionTime": stamps.get("NamesAccepted") or stamp},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted",
                     "lastTransitionTime": stamps.get("Established") or stamp},
                ],
                "storedVersions": sorted(set(previous) | set(storage)),
            }

    # ------------------------------------------------------------------ writes

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Any, dry_run: bool = False
    ) -> dict[str, Any]:
        obj = self._check_body(rtype, body, namespace)
        metadata = obj["metadata"]
        if metadata.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        name = metadata.get("name")
        if not name:
            prefix = metadata.get("generateName")
            if not prefix:
                raise invalid(rtype.group, rtype.kind, "", [
                    ("metadata.name", "Required value: name or generateName is required")
                ])
            name = prefix + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            metadata["name"] = name
        if problem := name_problem(rtype.group, rtype.kind, name):
            raise invalid(rtype.group, rtype.kind, name, [
                ("metadata.name", f"Invalid value: {name!r}: {problem}")
            ])
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_rfc3339()
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            metadata.pop(key, None)
        if rtype.tracks_generation:
            metadata["generation"] = 1
        else:
            metadata.pop("generation", None)
        if rtype.has_status and not rtype.status_on_create:
            obj.pop("status", None)
        obj = self.to_storage(rtype, obj)
        self._check_input(rtype, obj)
        self._defaults(rtype, obj)
        self._validate(rtype, obj)

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is not None:
                raise already_exists(rtype.group, rtype.plural, name)
            self._check_namespace(rtype, namespace)
            return obj

        _, stored = self.store.mutate(rtype.storage_key, namespace or "", name, change, dry_run)
        assert stored is not None
        if not dry_run:
            self._after_write(rtype)
        return self.to_version(rtype, stored)

    def update(
        self, rtype: ResourceType, namespace: str | None, name: str, body: Any,
        subresource: str = "", dry_run: bool = False,
    ) -> dict[str, Any]:
        obj = self._check_body(rtype, body, namespace)
        given_name = obj["metadata"].get("name")
        if given_name != name:
            raise bad_request(
                f"the name of the object ({given_name}) does not match the name on the URL "
                f"({name})"
            )
        wanted_rv = obj["metadata"].get("resourceVersion")
        if rtype.custom and not wanted_rv:
            raise invalid(rtype.group, rtype.kind, name, [
                ("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")
            ])
        obj = self.to_storage(rtype, obj)

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise not_found(rtype.group, rtype.plural, name)
            if wanted_rv and str(wanted_rv) != current["metadata"].get("resourceVersion"):
                raise conflict(rtype.group, rtype.plural, name, STALE)
            return self._merge_update(rtype, current, obj, subresource)

        old, stored = self.store.mutate(rtype.storage_key, namespace or "", name, change, dry_run)
        assert stored is not None
        if stored is not old and not dry_run:
            self._after_write(rtype)
        return self.to_version(rtype, stored)

    def _merge_update(
        self, rtype: ResourceType, current: dict[str, Any], new: dict[str, Any],
        subresource: str,
    ) -> dict[str, Any]:
        if subresource == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            self._check_input(rtype, result)
        else:
            result = new
            self._check_input(rtype, result)
            if rtype.storage_key == CRDS:
                _check_crd_scope_kept(current, result)
            meta, old_meta = result["metadata"], current["metadata"]
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            meta.pop("selfLink", None)
            if rtype.has_status and rtype.storage_key != CRDS:
                if "status" in current:
                    result["status"] = current["status"]
                else:
                    result.pop("status", None)
            if rtype.kind == "Secret" or rtype.storage_key == NAMESPACES:
                self._defaults(rtype, result)
                if rtype.storage_key == NAMESPACES and "status" in current:
                    result["status"] = current["status"]
            elif rtype.storage_key == CRDS:
                result["status"] = current.get("status")
                self._defaults(rtype, result)
            if rtype.tracks_generation and _spec_part(result) != _spec_part(current):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        result["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
        if result != current:
            self._validate(rtype, result)
        return result

    def patch(
        self, rtype: ResourceType, namespace: str | None, name: str, content_type: str,
        body: Any, subresource: str = "", dry_run: bool = False,
    ) -> dict[str, Any]:
        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise not_found(rtype.group, rtype.plural, name)
            before = self.to_version(rtype, copy.deepcopy(current))
            patched = apply_patch(content_type, before, body)
            patched = self._check_body(rtype, patched, namespace)
            if patched["metadata"].get("name") != name:
                raise bad_request(f"a patch may not change metadata.name ({name})")
            wanted_rv = patched["metadata"].get("resourceVersion")
            if wanted_rv and str(wanted_rv) != current["metadata"].get("resourceVersion"):
                raise conflict(rtype.group, rtype.plural, name, STALE)
            return self._merge_update(rtype, current, self.to_storage(rtype, patched), subresource)

        old, stored = self.store.mutate(rtype.storage_key, namespace or "", name, change, dry_run)
        assert stored is not None
        if stored is not old and not dry_run:
            self._after_write(rtype)
        return self.to_version(rtype, stored)

    def delete(
        self, rtype: ResourceType, namespace: str | None, name: str,
        options: dict[str, Any] | None = None, dry_run: bool = False,
    ) -> dict[str, Any]:
        dry_run = delete_options_dry_run(options or {}) or dry_run
        preconditions = (options or {}).get("preconditions") or {}
        if rtype.storage_key == NAMESPACES and name in UNDELETABLE_NAMESPACES:
            raise forbidden("", "namespaces", name, "this namespace may not be deleted")

        def change(current: dict[str, Any] | None) -> None:
            if current is None:
                raise not_found(rtype.group, rtype.plural, name)
            meta = current["metadata"]
            if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
                raise conflict(rtype.group, rtype.plural, name,
                               f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                               f"UID in object meta: {meta.get('uid')}")
            wanted = preconditions.get("resourceVersion")
            if wanted and str(wanted) != meta.get("resourceVersion"):
                raise conflict(rtype.group, rtype.plural, name,
                               f"Precondition failed: ResourceVersion in precondition: {wanted}, "
                               f"ResourceVersion in object meta: {meta.get('resourceVersion')}")
            return None

        if dry_run:
            _, last = self.store.mutate(rtype.storage_key, namespace or "", name, change, True)
            assert last is not None
            return self.to_version(rtype, last)
        with self._write_lock():
            if rtype.storage_key == NAMESPACES and self.store.get(NAMESPACES, "", name):
                # Preconditions first: a refused delete must not have emptied the namespace.
                self.store.mutate(NAMESPACES, "", name, change, dry_run=True)
                self._delete_namespace_contents(name)
            old, last = self.store.mutate(rtype.storage_key, namespace or "", name, change)
            if rtype.storage_key == CRDS and old is not None:
                self._delete_custom_resources(old)
        assert last is not None
        self._after_write(rtype)
        return self.to_version(rtype, last)

    def _write_lock(self) -> Any:
        return self.store._lock  # one lock: cascades are atomic with the delete

    def _delete_namespace_contents(self, namespace: str) -> None:
        for key in self.store.resource_keys():
            if key == NAMESPACES:
                continue
            for stored in self.store.list(key, namespace)[0]:
                meta = stored.obj["metadata"]
                self.store.mutate(key, namespace, meta["name"], lambda _c: None)

    def _delete_custom_resources(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        if self._is_builtin(key):
            return  # Gateways stay: this server always serves them
        for stored in self.store.list(key, None)[0]:
            meta = stored.obj["metadata"]
            self.store.mutate(key, meta.get("namespace", ""), meta["name"], lambda _c: None)

    @staticmethod
    def _is_builtin(key: tuple[str, str]) -> bool:
        from raven.apiserver.resources import BUILTIN_TYPES

        return any(t.storage_key == key for t in BUILTIN_TYPES)

    def _after_write(self, rtype: ResourceType) -> None:
        if rtype.storage_key == CRDS:
            self.registry.set_crds(s.obj for s in self.store.list(CRDS)[0])


def delete_options_dry_run(options: dict[str, Any]) -> bool:
    """Whether DeleteOptions ask for a dry run; 400 for fields of the wrong type (as decoding
    fails in kube-apiserver), 422 for an unsupported dryRun value."""
    if not isinstance(options, dict):
        raise bad_request("DeleteOptions must be a JSON object")
    dry_run = options.get("dryRun")
    if dry_run is not None and (not isinstance(dry_run, list)
                                or not all(isinstance(v, str) for v in dry_run)):
        raise bad_request(f'DeleteOptions.dryRun must be a list of strings such as ["All"], '
                          f"not {dry_run!r}")
    if any(v != "All" for v in dry_run or []):
        raise invalid("meta.k8s.io", "DeleteOptions", "", [
            ("dryRun", f'Unsupported value: {dry_run!r}: supported values: "All"')])
    preconditions = options.get("preconditions")
    if preconditions is not None:
        if not isinstance(preconditions, dict):
            raise bad_request("DeleteOptions.preconditions must be an object with uid and/or "
                              f"resourceVersion, not {preconditions!r}")
        for key in ("uid", "resourceVersion"):
            value = preconditions.get(key)
            if value is not None and not isinstance(value, str):
                raise bad_request(f"DeleteOptions.preconditions.{key} must be a string, "
                                  f"not {value!r}")
    for key in ("gracePeriodSeconds",):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad_request(f"DeleteOptions.{key} must be an integer, not {value!r}")
    policy = options.get("propagationPolicy")
    if policy is not None and not isinstance(policy, str):
        raise bad_request(f"DeleteOptions.propagationPolicy must be a string, not {policy!r}")
    return bool(dry_run)


def parse_continue_token(token: str) -> tuple[str, str, int]:
    """(namespace, name, resourceVersion) of a continue token this server issued; 400 for
    anything else (a token from another server, truncated or edited)."""
    import base64
    import json

    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, TypeError) as exc:
        raise bad_request("the continue token is not valid; start the list again") from exc
    if (not isinstance(decoded, list) or len(decoded) != 3
            or not all(isinstance(part, str) for part in decoded)
            or not re.fullmatch(r"[0-9]{1,19}", decoded[2])):
        raise bad_request("the continue token is not valid; start the list again")
    return decoded[0], decoded[1], int(decoded[2])


_QUALIFIED = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
# fullmatch, not match with "$": "$" also matches before a trailing newline.
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _qualified_name_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(_QUALIFIED.fullmatch(key)) and len(name) <= 63 and len(prefix) <= 253


def _label_problems(labels: dict[str, str], annotations: dict[str, str]) -> list[tuple[str, str]]:
    """kube-apiserver's rules: qualified-name keys; label values at most 63 characters of
    alphanumerics, '-', '_' and '.', starting and ending alphanumeric."""
    problems = []
    for key, value in labels.items():
        if not _qualified_name_ok(key):
            problems.append((f"metadata.labels: Invalid value: {key!r}",
                             "a label key must be an optional DNS prefix and '/' plus a name of "
                             "at most 63 alphanumerics, '-', '_' or '.'"))
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            problems.append((f"metadata.labels: Invalid value: {value!r}",
                             "a label value must be at most 63 alphanumerics, '-', '_' or '.', "
                             "starting and ending with an alphanumeric (or empty)"))
    for key in annotations:
        if not _qualified_name_ok(key):
            problems.append((f"metadata.annotations: Invalid value: {key!r}",
                             "an annotation key must be an optional DNS prefix and '/' plus a "
                             "name of at most 63 alphanumerics, '-', '_' or '.'"))
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        problems.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    return problems


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _causes(problems: list[str]) -> list[tuple[str, str]]:
    """Split model messages "Gateway x: field.path: text" into (field path, message) causes."""
    causes = []
    for problem in problems:
        parts = problem.split(": ", 2)
        if len(parts) == 3 and re.match(r"^[A-Za-z][\w.\[\]]*$", parts[1]):
            causes.append((parts[1], parts[2]))
        else:
            causes.append(("", problem))
    return causes


def _check_crd_scope_kept(current: dict[str, Any], new: dict[str, Any]) -> None:
    """spec.scope of a CRD is immutable (kube-apiserver): objects stored under one scope would
    become unreachable by name under the other (a namespaced object has no cluster-scoped path)."""
    old_scope = (current.get("spec") or {}).get("scope")
    new_scope = new["spec"].get("scope")
    if new_scope != old_scope:
        raise invalid("apiextensions.k8s.io", "CustomResourceDefinition", _name(new),
                      [("spec.scope", f"Invalid value: {new_scope!r}: field is immutable "
                                      f"(it is {old_scope!r}); delete and recreate the CRD")])
