"""Shape checks of object fields, as kube-apiserver's decoders and validators refuse them.

Rules kept:
- Every check returns (field path, message) problems and never raises: a body of any shape gets
  a 422 naming the field, never a 500.
- metadata: name and generateName strings; labels and annotations maps of strings to strings
  (keys included, which a YAML body can make numbers); namespace, resourceVersion, uid strings.
- Object names follow the rule of their kind (kube-apiserver's ValidateObjectMeta): Namespaces
  and Services are DNS labels (Services DNS-1035: starting with a letter), RBAC objects are path
  segment names, everything else is a DNS subdomain. Checked with fullmatch: a trailing newline,
  spaces or non-ASCII letters are refused.
- Built-in kinds whose data the server reads (ConfigMap, Secret, Namespace, Node) get the field
  types their Go structs have; custom resources only need a JSON object (no schema validation).
- Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

Problem = tuple[str, str]

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")

SUBDOMAIN_RULE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric "
                  "character (at most 253 characters)")
LABEL_RULE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
              "'-', and must start and end with an alphanumeric character (at most 63 "
              "characters)")
DNS1035_RULE = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character "
                "(at most 63 characters)")
PATH_SEGMENT_RULE = "may not be '.' or '..' and may not contain '/' or '%'"


def name_problem(group: str, kind: str, name: str) -> str | None:
    """Why `name` is not a valid name for an object of this kind (None: it is)."""
    if group == "rbac.authorization.k8s.io":
        if name in (".", "..") or "/" in name or "%" in name:
            return PATH_SEGMENT_RULE
        return None
    if group == "" and kind == "Namespace":
        return None if len(name) <= 63 and _LABEL.fullmatch(name) else LABEL_RULE
    if group == "" and kind == "Service":
        return None if len(name) <= 63 and _DNS1035.fullmatch(name) else DNS1035_RULE
    return None if len(name) <= 253 and _SUBDOMAIN.fullmatch(name) else SUBDOMAIN_RULE


def _string_map(value: Any, path: str, what: str = "strings") -> list[Problem]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [(path, f"Invalid value: {type(value).__name__}: must be a map of strings to "
                       f"{what}")]
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        return [(f"{path}[{bad[0]}]", f"Invalid value: must be a map of strings to {what}")]
    return []


def metadata_problems(metadata: dict[str, Any]) -> list[Problem]:
    """Types of the metadata fields the server reads."""
    problems: list[Problem] = []
    for key in ("name", "generateName", "namespace", "resourceVersion", "uid"):
        value = metadata.get(key)
        if value is not None and not isinstance(value, str):
            problems.append((f"metadata.{key}",
                             f"Invalid value: {value!r}: must be a string"))
    for key in ("labels", "annotations"):
        problems += _string_map(metadata.get(key), f"metadata.{key}")
    for key in ("finalizers",):
        value = metadata.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, str) for v in value)):
            problems.append((f"metadata.{key}", "Invalid value: must be a list of strings"))
    for key in ("ownerReferences", "managedFields"):
        value = metadata.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, dict) for v in value)):
            problems.append((f"metadata.{key}", "Invalid value: must be a list of objects"))
    return problems


def _data_keys(data: Any, path: str) -> list[Problem]:
    if not isinstance(data, dict):
        return []
    return [
        (f"{path}[{key}]", f"Invalid value: {key!r}: a valid config key must consist of "
                           "alphanumeric characters, '-', '_' or '.'")
        for key in data
        if isinstance(key, str) and (len(key) > 253 or not _CONFIG_KEY.fullmatch(key)
                                     or key in (".", ".."))
    ]


def _object_field(obj: dict[str, Any], key: str) -> list[Problem]:
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        return [(key, f"Invalid value: {type(value).__name__}: must be an object")]
    return []


def kind_problems(group: str, kind: str, obj: dict[str, Any]) -> list[Problem]:
    """Field types of the built-in kinds whose fields the server reads or prints."""
    problems: list[Problem] = []
    if group != "":
        if group in ("apps", "coordination.k8s.io"):
            problems += _object_field(obj, "spec") + _object_field(obj, "status")
        return problems
    if kind == "ConfigMap":
        problems += _string_map(obj.get("data"), "data")
        problems += _string_map(obj.get("binaryData"), "binaryData", "base64 strings")
        problems += _data_keys(obj.get("data"), "data")
        problems += _data_keys(obj.get("binaryData"), "binaryData")
    elif kind == "Secret":
        problems += _string_map(obj.get("data"), "data", "base64 strings")
        problems += _string_map(obj.get("stringData"), "stringData")
        problems += _data_keys(obj.get("data"), "data")
        problems += _data_keys(obj.get("stringData"), "stringData")
        if obj.get("type") is not None and not isinstance(obj.get("type"), str):
            problems.append(("type", f"Invalid value: {obj.get('type')!r}: must be a string"))
    elif kind in ("Namespace", "Node", "Service", "ServiceAccount"):
        problems += _object_field(obj, "spec") + _object_field(obj, "status")
        spec = obj.get("spec")
        if kind == "Namespace" and isinstance(spec, dict):
            finalizers = spec.get("finalizers")
            if finalizers is not None and (not isinstance(finalizers, list) or not all(
                    isinstance(f, str) for f in finalizers)):
                problems.append(("spec.finalizers", "Invalid value: must be a list of strings"))
    elif kind == "Event":
        problems += _object_field(obj, "involvedObject")
    return problems
