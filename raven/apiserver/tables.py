"""meta.k8s.io/v1 Table responses, which `kubectl get` asks for (Accept: ...;as=Table).

Custom resources (Gateways included) get NAME plus the CRD's additionalPrinterColumns, or NAME
and AGE when the CRD declares none, as kube-apiserver does. Built-in types get the columns kubectl
users know for them (a subset of kube-apiserver's printers).

Rules kept: rendering never raises. A cell that cannot be computed from an object (a field of
the wrong type, say "data": 5) is shown as "<invalid>", a CRD column whose definition has the
wrong types (stored before CRDs were validated) falls back to safe values; kubectl still lists
every other object and column.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from raven.apiserver.resources import ResourceType

Column = tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]
INVALID_CELL = "<invalid>"

log = logging.getLogger("raven.apiserver")


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short human duration (e.g. 5s, 3m12s, 4h, 2d)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    return f"{days}d" if days < 365 * 2 else f"{days // 365}y"


_TOKEN = re.compile(
    r"\.(?P<name>[^.\[\]]+)"
    r"|\[(?P<index>\*|-?\d+|'[^']*'|\"[^\"]*\")\]"
    r"|\[\?\(@(?P<fpath>(?:\.[^.\[\]=!<>)\s]+)+)\s*(?:(?P<op>==|!=)\s*(?P<fvalue>'[^']*'|\"[^\"]*\"|[^)\s]+))?\s*\)\]"
)


def _unquote(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dig(value: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.strip(".").split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def json_path_values(obj: Any, path: str) -> list[Any]:
    """Every value a kubectl-style JSONPath selects: `.a.b`, `[0]`, `[*]`, `['k']`,
    `[?(@.type=="Ready")]` and `[?(@.field)]`."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    path = path.lstrip("$")
    values = [obj]
    for match in _TOKEN.finditer(path):
        name, index, fpath = match["name"], match["index"], match["fpath"]
        found: list[Any] = []
        for value in values:
            if name is not None:
                if isinstance(value, dict) and name in value:
                    found.append(value[name])
            elif index == "*":
                if isinstance(value, list):
                    found.extend(value)
                elif isinstance(value, dict):
                    found.extend(value.values())
            elif index is not None and index.lstrip("-").isdigit():
                if isinstance(value, list) and -len(value) <= int(index) < len(value):
                    found.append(value[int(index)])
            elif index is not None:
                key = index[1:-1]
                if isinstance(value, dict) and key in value:
                    found.append(value[key])
            elif fpath is not None and isinstance(value, list):
                for item in value:
                    present, got = _dig(item, fpath)
                    if match["op"] is None:
                        keep = present
                    else:
                        equal = present and str(got) == str(_unquote(match["fvalue"]))
                        keep = equal if match["op"] == "==" else not equal
                    if keep:
                        found.append(item)
        values = found
    return values


def json_path(obj: Any, path: str) -> Any:
    """One value (the first) for a JSONPath, or None when it selects nothing."""
    values = json_path_values(obj, path)
    return values[0] if values else None


def _cell(value: Any, column_type: str, column_format: str = "") -> Any:
    if value is None:
        return None
    if column_type == "date":
        return age(str(value))
    if isinstance(value, (dict, list)):
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            return ",".join(str(v) for v in value)
        return json.dumps(value, separators=(",", ":"))
    if column_type in ("integer", "number", "boolean"):
        return value
    return str(value)


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "",
         description: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": description,
            "priority": priority}


NAME = _col("Name", fmt="name", description="Name must be unique within a namespace.")
AGE = _col("Age", "string", description="CreationTimestamp is a timestamp representing the server time when this object was created.")  # noqa: E501


def _meta(obj: dict[str, Any], key: str) -> Any:
    return (obj.get("metadata") or {}).get(key)


def _node_status(obj: dict[str, Any]) -> str:
    ready = next((c for c in (obj.get("status") or {}).get("conditions") or []
                  if c.get("type") == "Ready"), None)
    state = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")  # noqa: E501
    if (obj.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    return state


def _node_roles(obj: dict[str, Any]) -> str:
    roles = sorted(
        k.split("/", 1)[1] for k in (_meta(obj, "labels") or {})
        if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1]
    )
    return ",".join(roles) or "<none>"


def _pod_ready(obj: dict[str, Any]) -> str:
    containers = (obj.get("spec") or {}).get("containers") or []
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return f"{sum(bool(s.get('ready')) for s in statuses)}/{len(containers)}"


def _builtin_columns(rtype: ResourceType) -> list[Column]:
    def created(o: dict[str, Any]) -> str:
        return age(_meta(o, "creationTimestamp"))

    columns: list[Column] = [(NAME, lambda o: _meta(o, "name"))]
    kind = rtype.kind
    if kind == "Node":
        columns += [
            (_col("Status"), _node_status),
            (_col("Roles"), _node_roles),
            (AGE, created),
            (_col("Version"), lambda o: ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")),  # noqa: E501
            (_col("Internal-IP", priority=1), lambda o: next((a.get("address") for a in (o.get("status") or {}).get("addresses") or [] if a.get("type") == "InternalIP"), "<none>")),  # noqa: E501
        ]
    elif kind == "Pod" and rtype.group == "":
        columns += [
            (_col("Ready"), _pod_ready),
            (_col("Status"), lambda o: (o.get("status") or {}).get("phase", "")),
            (_col("Restarts", "integer"), lambda o: sum(
                int(c.get("restartCount") or 0)
                for c in (o.get("status") or {}).get("containerStatuses") or [])),
            (AGE, created),
            (_col("IP", priority=1), lambda o: (o.get("status") or {}).get("podIP") or "<none>"),
            (_col("Node", priority=1), lambda o: (o.get("spec") or {}).get("nodeName") or "<none>"),
        ]
    elif kind == "Namespace":
        columns += [(_col("Status"), lambda o: (o.get("status") or {}).get("phase", "")),
                    (AGE, created)]
    elif kind == "ConfigMap":
        columns += [(_col("Data", "integer"), lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),  # noqa: E501
                    (AGE, created)]
    elif kind == "Secret":
        columns += [(_col("Type"), lambda o: o.get("type", "")),
                    (_col("Data", "integer"), lambda o: len(o.get("data") or {})),
                    (AGE, created)]
    elif kind == "Lease":
        columns += [(_col("Holder"), lambda o: (o.get("spec") or {}).get("holderIdentity", "")),
                    (AGE, created)]
    elif kind == "Event" and rtype.group == "":
        columns = [
            (_col("Last Seen"), lambda o: age(o.get("lastTimestamp") or o.get("eventTime") or _meta(o, "creationTimestamp"))),  # noqa: E501
            (_col("Type"), lambda o: o.get("type", "")),
            (_col("Reason"), lambda o: o.get("reason", "")),
            (_col("Object"), lambda o: f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/{(o.get('involvedObject') or {}).get('name', '')}"),  # noqa: E501
            (_col("Message"), lambda o: o.get("message", "")),
            (NAME | {"priority": 1}, lambda o: _meta(o, "name")),
        ]
    elif kind == "CustomResourceDefinition":
        columns.append((_col("Created At", fmt="date-time"), lambda o: _meta(o, "creationTimestamp")))  # noqa: E501
    elif kind in ("DaemonSet", "Deployment"):
        columns += [(_col("Generation", "integer", 1), lambda o: _meta(o, "generation")),
                    (AGE, created)]
    else:
        columns.append((AGE, created))
    return columns


def _crd_columns(rtype: ResourceType) -> list[Column]:
    columns: list[Column] = [(NAME, lambda o: _meta(o, "name"))]
    if not rtype.printer_columns:
        columns.append((AGE, lambda o: age(_meta(o, "creationTimestamp"))))
        return columns
    for spec in rtype.printer_columns:
        column_type = str(spec.get("type", "string"))
        path = str(spec.get("jsonPath", ""))
        fmt = str(spec.get("format", ""))

        def value(o: dict[str, Any], p: str = path, t: str = column_type, f: str = fmt) -> Any:
            found = json_path_values(o, p)
            if not found:
                return None
            if len(found) == 1:
                return _cell(found[0], t, f)
            return ",".join(str(_cell(v, "string", f)) for v in found)

        # A "date" column is shown as an age string, as kube-apiserver does.
        definition = _col(str(spec.get("name", path)), "string" if column_type == "date" else column_type,  # noqa: E501
                          _priority(spec.get("priority", 0)), fmt,
                          str(spec.get("description", "")))
        columns.append((definition, value))
    return columns


def _priority(value: Any) -> int:
    """A column's priority; a stored CRD may carry one of the wrong type (shown as wide)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 1


def _safe_cell(fn: Callable[[dict[str, Any]], Any], obj: dict[str, Any]) -> Any:
    try:
        value = fn(obj)
    except Exception as exc:  # one bad field must not hide the other objects
        log.debug("cannot render a table cell of %r: %s", _meta_name(obj), exc)
        return INVALID_CELL
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _meta_name(obj: Any) -> Any:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    return metadata.get("name") if isinstance(metadata, dict) else None


def columns_for(rtype: ResourceType) -> list[Column]:
    if rtype.group in ("", "apps", "coordination.k8s.io", "events.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io") and not rtype.is_gateway:  # noqa: E501
        return _builtin_columns(rtype)
    return _crd_columns(rtype)


def row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def table(
    rtype: ResourceType, objects: Iterable[dict[str, Any]], include: str,
    list_meta: dict[str, Any], headers: bool = True,
) -> dict[str, Any]:
    columns = columns_for(rtype)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [_safe_cell(fn, obj) for _, fn in columns]}
        embedded = row_object(obj, include)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    out: dict[str, Any] = {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "rows": rows,
    }
    out["columnDefinitions"] = [c for c, _ in columns] if headers else []
    return out
