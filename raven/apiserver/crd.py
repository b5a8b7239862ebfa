"""CustomResourceDefinition validation, as kube-apiserver validates apiextensions.k8s.io/v1.

Rules kept:
- A CRD is checked completely before it is stored: metadata.name, spec.group, spec.names,
  spec.scope, spec.versions (names, served/storage flags, exactly one storage version),
  the shape of every version's openAPIV3Schema, subresources and additionalPrinterColumns
  (type, format, jsonPath, priority an integer >= 0). Every problem is reported as a
  (field path, message) pair naming what to fix; nothing here raises on bad input.
- Whatever passes here can be turned into served resource types without error
  (raven.apiserver.resources relies on it, and still skips a CRD it cannot serve).
- Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from typing import Any

Problem = tuple[str, str]

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")
COLUMN_FORMATS = ("", "int32", "int64", "float", "double", "byte", "date", "date-time", "password")
SCHEMA_TYPES = ("object", "array", "string", "integer", "number", "boolean")
SCOPES = ("Namespaced", "Cluster")
MAX_SCHEMA_DEPTH = 64


def is_dns1035_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS1035.fullmatch(value))


def is_dns_subdomain(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 253 and bool(_SUBDOMAIN.fullmatch(value))


def _label(path: str, value: Any, required: bool = True) -> list[Problem]:
    if value is None or value == "":
        return [(path, "Required value")] if required else []
    if not isinstance(value, str):
        return [(path, f"Invalid value: {value!r}: must be a string")]
    if not is_dns1035_label(value):
        return [(path, f"Invalid value: {value!r}: a DNS-1035 label must consist of lower case "
                       "alphanumeric characters or '-', start with a letter and end with an "
                       "alphanumeric character (at most 63 characters)")]
    return []


def _names_problems(names: Any) -> list[Problem]:
    if not isinstance(names, dict):
        return [("spec.names", "Required value: an object with plural, singular and kind")]
    problems = _label("spec.names.plural", names.get("plural"))
    problems += _label("spec.names.singular", names.get("singular"), required=False)
    for field in ("kind", "listKind"):
        value = names.get(field)
        if value is None and field == "listKind":
            continue
        if not isinstance(value, str) or not value:
            problems.append((f"spec.names.{field}",
                             f"Required value: a string such as 'Widget' (got {value!r})"))
        elif not is_dns1035_label(value.lower()):
            problems.append((f"spec.names.{field}",
                             f"Invalid value: {value!r}: must start with a letter and contain "
                             "only letters, digits and '-'"))
    if names.get("listKind") is not None and names.get("listKind") == names.get("kind"):
        problems.append(("spec.names.listKind", "Invalid value: kind and listKind must differ"))
    for field in ("shortNames", "categories"):
        value = names.get(field)
        if value is None:
            continue
        if not isinstance(value, list):
            problems.append((f"spec.names.{field}",
                             f"Invalid value: {value!r}: must be a list of strings"))
            continue
        for index, item in enumerate(value):
            problems += _label(f"spec.names.{field}[{index}]", item)
    return problems


def schema_problems(schema: Any, path: str, depth: int = 0) -> list[Problem]:
    """The shape of an OpenAPI v3 schema node: types of the keywords kube-apiserver reads."""
    if depth > MAX_SCHEMA_DEPTH:
        return [(path, f"Invalid value: nested deeper than {MAX_SCHEMA_DEPTH} levels")]
    if not isinstance(schema, dict):
        return [(path, f"Invalid value: {type(schema).__name__}: must be an object")]
    problems: list[Problem] = []
    kind = schema.get("type")
    if kind is not None and kind not in SCHEMA_TYPES:
        problems.append((f"{path}.type", f"Unsupported value: {kind!r}: supported values: "
                                         + ", ".join(f'"{t}"' for t in SCHEMA_TYPES)))
    for key in ("description", "format", "pattern", "title"):
        if key in schema and not isinstance(schema[key], str):
            problems.append((f"{path}.{key}", f"Invalid value: {schema[key]!r}: must be a string"))
    for key in ("nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                "x-kubernetes-embedded-resource", "uniqueItems"):
        if key in schema and not isinstance(schema[key], bool):
            problems.append((f"{path}.{key}", f"Invalid value: {schema[key]!r}: must be a boolean"))
    for key in ("minimum", "maximum", "multipleOf"):
        if key in schema and (isinstance(schema[key], bool)
                              or not isinstance(schema[key], int | float)):
            problems.append((f"{path}.{key}", f"Invalid value: {schema[key]!r}: must be a number"))
    for key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                "maxProperties"):
        value = schema.get(key)
        if key in schema and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append((f"{path}.{key}",
                             f"Invalid value: {value!r}: must be a non-negative integer"))
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            problems.append((f"{path}.required",
                             f"Invalid value: {required!r}: must be a list of property names"))
    if "enum" in schema and not isinstance(schema["enum"], list):
        problems.append((f"{path}.enum", f"Invalid value: {schema['enum']!r}: must be a list"))
    if "properties" in schema:
        properties = schema["properties"]
        if not isinstance(properties, dict):
            problems.append((f"{path}.properties",
                             f"Invalid value: {properties!r}: must be an object"))
        else:
            for name, sub in properties.items():
                problems += schema_problems(sub, f"{path}.properties[{name}]", depth + 1)
    if "items" in schema:
        problems += schema_problems(schema["items"], f"{path}.items", depth + 1)
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], bool):
        problems += schema_problems(schema["additionalProperties"],
                                    f"{path}.additionalProperties", depth + 1)
    if "not" in schema:
        problems += schema_problems(schema["not"], f"{path}.not", depth + 1)
    for key in ("allOf", "anyOf", "oneOf"):
        if key not in schema:
            continue
        if not isinstance(schema[key], list):
            problems.append((f"{path}.{key}", f"Invalid value: {schema[key]!r}: must be a list"))
            continue
        for index, sub in enumerate(schema[key]):
            problems += schema_problems(sub, f"{path}.{key}[{index}]", depth + 1)
    return problems


def column_problems(column: Any, path: str) -> list[Problem]:
    """One additionalPrinterColumns entry."""
    if not isinstance(column, dict):
        return [(path, f"Invalid value: {column!r}: must be an object with name, type, jsonPath")]
    problems: list[Problem] = []
    name = column.get("name")
    if not isinstance(name, str) or not name:
        problems.append((f"{path}.name", f"Required value: a string (got {name!r})"))
    kind = column.get("type")
    if kind not in COLUMN_TYPES:
        problems.append((f"{path}.type", f"Unsupported value: {kind!r}: supported values: "
                                         + ", ".join(f'"{t}"' for t in COLUMN_TYPES)))
    fmt = column.get("format", "")
    if fmt not in COLUMN_FORMATS:
        problems.append((f"{path}.format", f"Unsupported value: {fmt!r}: supported values: "
                                           + ", ".join(f'"{f}"' for f in COLUMN_FORMATS if f)))
    json_path = column.get("jsonPath")
    if not isinstance(json_path, str) or not json_path:
        problems.append((f"{path}.jsonPath", f"Required value: a JSONPath such as '.spec.size' "
                                             f"(got {json_path!r})"))
    elif not json_path.startswith("."):
        problems.append((f"{path}.jsonPath",
                         f"Invalid value: {json_path!r}: must be a simple JSON path starting "
                         "with '.'"))
    priority = column.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        problems.append((f"{path}.priority",
                         f"Invalid value: {priority!r}: must be an integer >= 0 (0 shows the "
                         "column by default, higher numbers only with -o wide)"))
    description = column.get("description", "")
    if not isinstance(description, str):
        problems.append((f"{path}.description",
                         f"Invalid value: {description!r}: must be a string"))
    return problems


def _subresource_problems(subresources: Any, path: str) -> list[Problem]:
    if subresources is None:
        return []
    if not isinstance(subresources, dict):
        return [(path, f"Invalid value: {subresources!r}: must be an object")]
    problems: list[Problem] = []
    for key, value in subresources.items():
        if key not in ("status", "scale"):
            problems.append((f"{path}.{key}", 'Unsupported value: supported values: "status", '
                                              '"scale"'))
        elif not isinstance(value, dict):
            problems.append((f"{path}.{key}", f"Invalid value: {value!r}: must be an object"))
        elif key == "scale":
            for field in ("specReplicasPath", "statusReplicasPath"):
                if not isinstance(value.get(field), str):
                    problems.append((f"{path}.scale.{field}", "Required value: a JSON path"))
    return problems


def _version_problems(version: Any, path: str) -> list[Problem]:
    if not isinstance(version, dict):
        return [(path, f"Invalid value: {version!r}: must be an object with name, served, "
                       "storage and schema")]
    problems = _label(f"{path}.name", version.get("name"))
    for flag in ("served", "storage", "deprecated"):
        if flag in version and not isinstance(version[flag], bool):
            problems.append((f"{path}.{flag}", f"Invalid value: {version[flag]!r}: must be "
                                               "true or false"))
    for flag in ("served", "storage"):
        if flag not in version:
            problems.append((f"{path}.{flag}", "Required value: true or false"))
    warning = version.get("deprecationWarning")
    if warning is not None and not isinstance(warning, str):
        problems.append((f"{path}.deprecationWarning",
                         f"Invalid value: {warning!r}: must be a string"))
    schema = version.get("schema")
    if not isinstance(schema, dict) or "openAPIV3Schema" not in schema:
        problems.append((f"{path}.schema.openAPIV3Schema",
                         "Required value: schemas are required (use {type: object, "
                         "x-kubernetes-preserve-unknown-fields: true} to accept anything)"))
    else:
        root = schema["openAPIV3Schema"]
        problems += schema_problems(root, f"{path}.schema.openAPIV3Schema")
        if isinstance(root, dict) and root.get("type") != "object":
            problems.append((f"{path}.schema.openAPIV3Schema.type",
                             'Unsupported value: must be "object" at the root'))
    problems += _subresource_problems(version.get("subresources"), f"{path}.subresources")
    columns = version.get("additionalPrinterColumns")
    if columns is not None:
        if not isinstance(columns, list):
            problems.append((f"{path}.additionalPrinterColumns",
                             f"Invalid value: {columns!r}: must be a list"))
        else:
            for index, column in enumerate(columns):
                problems += column_problems(column, f"{path}.additionalPrinterColumns[{index}]")
    return problems


def crd_problems(crd: Any) -> list[Problem]:
    """Every reason kube-apiserver would refuse this CustomResourceDefinition (empty: valid)."""
    if not isinstance(crd, dict):
        return [("", "a CustomResourceDefinition must be an object")]
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value: an object with group, names, scope and versions")]
    problems: list[Problem] = []
    group = spec.get("group")
    if not isinstance(group, str) or not group:
        problems.append(("spec.group", f"Required value: a DNS subdomain such as "
                                       f"'example.com' (got {group!r})"))
    elif not is_dns_subdomain(group) or "." not in group:
        problems.append(("spec.group", f"Invalid value: {group!r}: should be a domain with at "
                                       "least one dot, of lower case alphanumerics, '-' and '.'"))
    names = spec.get("names")
    problems += _names_problems(names)
    scope = spec.get("scope")
    if scope not in SCOPES:
        problems.append(("spec.scope", f'Unsupported value: {scope!r}: supported values: '
                                       '"Cluster", "Namespaced"'))
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        problems.append(("spec.versions", "Required value: must have at least one version"))
    else:
        seen: set[str] = set()
        storage = 0
        for index, version in enumerate(versions):
            path = f"spec.versions[{index}]"
            problems += _version_problems(version, path)
            if isinstance(version, dict):
                name = version.get("name")
                if isinstance(name, str):
                    if name in seen:
                        problems.append((f"{path}.name", f"Duplicate value: {name!r}"))
                    seen.add(name)
                if version.get("storage") is True:
                    storage += 1
        if storage != 1:
            problems.append(("spec.versions",
                             f"Invalid value: must have exactly one version marked as storage "
                             f"version (found {storage})"))
    conversion = spec.get("conversion")
    if conversion is not None and (not isinstance(conversion, dict)
                                   or conversion.get("strategy") not in ("None", "Webhook")):
        problems.append(("spec.conversion.strategy",
                         'Unsupported value: supported values: "None", "Webhook"'))
    if isinstance(names, dict) and isinstance(names.get("plural"), str) and isinstance(group, str):
        expected = f"{names['plural']}.{group}"
        name = (crd.get("metadata") or {}).get("name")
        if name != expected:
            problems.append(("metadata.name",
                             f'Invalid value: {name!r}: must be spec.names.plural+"."+spec.group '
                             f"({expected})"))
    return problems
