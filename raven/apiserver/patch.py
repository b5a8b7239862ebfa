"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge follows the Kubernetes rules for the list fields that matter for the types we
serve (containers, env, volumes, ports, volumeMounts, conditions, ...: merged by their merge key)
and understands the directives kubectl sends ($patch, $setElementOrder, $retainKeys,
$deleteFromPrimitiveList). Every other list is replaced, every map is merged: for custom resources
kube-apiserver refuses strategic merge, for our built-ins this is what their Go types declare.

Rules kept: a patch of any shape gets an answer, never a crash. Wrong types in a patch (a JSON
patch path that is not a string, a directive whose value is not the list or string the
directive needs) are 400 BadRequest naming the operation or directive; a patch that is well
formed but does not apply (a path that does not exist, a failed test) is 422 Invalid.
"""

from __future__ import annotations

import copy
from typing import Any

from raven.apiserver.status import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------- JSON patch (RFC 6902)


def _pointer(path: Any, field: str = "path") -> list[str]:
    if not isinstance(path, str):
        raise bad_request(f"json patch: {field} {path!r} must be a string (a JSON pointer such "
                          'as "/metadata/labels/app")')
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f'json patch: path "{path}" must start with "/"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    current = doc
    for part in parts[:-1]:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdecimal() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise ApiError(422, "Invalid", f'json patch: path "{path}" does not exist')
    return current


def _get(doc: Any, path: Any, field: str = "path") -> Any:
    parts = _pointer(path, field)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdecimal() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, "Invalid", f'json patch: path "{path}" does not exist')


def _remove(doc: Any, path: Any, field: str = "path") -> Any:
    parts = _pointer(path, field)
    if not parts:
        raise bad_request("json patch: cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdecimal() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, "Invalid", f'json patch: cannot remove "{path}": it does not exist')


def _add(doc: Any, path: str, value: Any, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, "Invalid", f'json patch: cannot replace "{path}": it does not exist')  # noqa: E501
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdecimal() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f'json patch: index in "{path}" is out of range')
    else:
        raise ApiError(422, "Invalid", f'json patch: path "{path}" does not exist')
    return doc


# A JSON patch can grow an object without a bigger body: each `copy` of a value into itself
# doubles it (60 operations: 2**60 nodes) and nests it one level deeper. Values a patch inserts
# are therefore measured before they are copied: at most MAX_INSERTED_NODES in all, and no
# deeper than MAX_DEPTH (the bound request bodies have) where they land.
MAX_INSERTED_NODES = 250_000
MAX_DEPTH = 200


def _measure(value: Any, budget: int, path: str) -> tuple[int, int]:
    """(nodes, depth) of `value`, walking at most `budget` nodes (422 beyond)."""
    nodes = depth = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        nodes += 1
        if nodes > budget:
            raise ApiError(422, "Invalid", f'json patch: the operations insert more than '
                           f'{MAX_INSERTED_NODES} values (at "{path}"); an object this large '
                           "cannot be stored")
        depth = max(depth, level)
        if level > MAX_DEPTH:
            break
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return nodes, depth


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise bad_request("json patch: the body must be a JSON array of operations")
    doc = copy.deepcopy(target)
    budget = MAX_INSERTED_NODES

    def checked(path: Any, value: Any) -> Any:
        nonlocal budget
        nodes, depth = _measure(value, budget, str(path))
        budget -= nodes
        if len(_pointer(path)) + depth > MAX_DEPTH:
            raise ApiError(422, "Invalid", f'json patch: the value at "{path}" would be nested '
                           f"more than {MAX_DEPTH} levels deep")
        return value

    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"json patch: operation {op!r} needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(checked(path, op.get("value"))))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(checked(path, op.get("value"))), replace=True)
        elif kind == "move":
            _pointer(path)
            value = _remove(doc, op.get("from", ""), "from")
            doc = _add(doc, path, checked(path, value))
        elif kind == "copy":
            _pointer(path)
            source = checked(path, _get(doc, op.get("from", ""), "from"))
            doc = _add(doc, path, copy.deepcopy(source))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(422, "Invalid", f'json patch: test failed at "{path}"')
        else:
            raise bad_request(f"json patch: unknown operation {kind!r}; use add, remove, "
                              "replace, move, copy or test")
    return doc


# ---------------------------------------------------------------- strategic merge patch

# field name -> merge key(s) tried in order (the first one present in the elements wins).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "imagePullSecrets": ("name",),
    "secrets": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "hostAliases": ("ip",),
    "ownerReferences": ("uid",),
    "addresses": ("type",),
    "taints": ("key",),
}
PRIMITIVE_MERGE_LISTS = {"finalizers"}


def _merge_key(field: str, items: list[Any]) -> str | None:
    candidates = MERGE_KEYS.get(field)
    if not candidates:
        return None
    for key in candidates:
        if all(isinstance(i, dict) and key in i for i in items if i is not None):
            return key
    return None


def _merge_list(field: str, original: list[Any], patch: list[Any], order: list[Any] | None) -> list[Any]:  # noqa: E501
    key = _merge_key(field, [*original, *patch])
    if key is None:
        if field in PRIMITIVE_MERGE_LISTS and all(not isinstance(v, dict) for v in patch):
            merged = list(original) + [v for v in patch if v not in original]
        else:
            return [strategic_merge(None, v) if isinstance(v, dict) else v for v in patch]
    else:
        merged = [copy.deepcopy(i) for i in original]
        for item in patch:
            if not isinstance(item, dict):
                continue
            directive = item.get("$patch")
            if directive is not None and directive not in ("replace", "delete", "merge"):
                raise bad_request(f"strategic merge patch: $patch {directive!r} in {field} is "
                                  'not supported; use "replace", "delete" or "merge"')
            index = next((n for n, e in enumerate(merged)
                          if isinstance(e, dict) and e.get(key) == item.get(key)), None)
            if directive == "delete":
                if index is not None:
                    merged.pop(index)
                continue
            if directive == "replace":
                clean = {k: v for k, v in item.items() if k != "$patch"}
                if index is None:
                    merged.append(clean)
                else:
                    merged[index] = clean
                continue
            if index is None:
                merged.append(strategic_merge(None, item))
            else:
                merged[index] = strategic_merge(merged[index], item)
    if order:
        def position(element: Any) -> int:
            ident = element.get(key) if key and isinstance(element, dict) else element
            return order.index(ident) if ident in order else len(order)

        merged.sort(key=position)
    return merged


def _directive_problem(patch: dict[str, Any]) -> str | None:
    """Why the directives of this patch map have the wrong types (None: they are fine)."""
    directive = patch.get("$patch")
    if directive is not None and directive not in ("replace", "delete", "merge"):
        return (f"$patch {directive!r} is not supported; use \"replace\", \"delete\" or "
                "\"merge\"")
    retain = patch.get("$retainKeys")
    if retain is not None and (not isinstance(retain, list)
                               or not all(isinstance(k, str) for k in retain)):
        return f"$retainKeys must be a list of field names, not {retain!r}"
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") and not isinstance(value, list):
            return f"{key} must be a list, not {value!r}"
        if key.startswith("$deleteFromPrimitiveList/") and not isinstance(value, list):
            return f"{key} must be a list, not {value!r}"
    return None


def strategic_merge(original: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    problem = _directive_problem(patch)
    if problem:
        raise bad_request(f"strategic merge patch: {problem}")
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = list(value)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            current = result.get(key)
            result[key] = _merge_list(
                key, current if isinstance(current, list) else [], value, orders.get(key)
            )
        else:
            result[key] = value
    for field, order in orders.items():
        if field not in patch and isinstance(result.get(field), list):
            result[field] = _merge_list(field, result[field], [], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def apply_patch(content_type: str, target: dict[str, Any], body: Any) -> Any:
    """The patched object, or an ApiError (415 for unknown patch types)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MERGE_PATCH:
        if not isinstance(body, dict):
            raise bad_request("merge patch: the body must be a JSON object")
        return merge_patch(target, body)
    if media == STRATEGIC_MERGE_PATCH:
        if not isinstance(body, dict):
            raise bad_request("strategic merge patch: the body must be a JSON object")
        return strategic_merge(target, body)
    if media == JSON_PATCH:
        return json_patch(target, body)
    if media == APPLY_PATCH:
        raise ApiError(
            415, "UnsupportedMediaType",
            "server-side apply is not supported by this API server; use client-side "
            "`kubectl apply` (without --server-side)",
        )
    raise ApiError(
        415, "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH} (got {content_type!r})",
    )
