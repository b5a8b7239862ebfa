"""Label selectors (equality- and set-based) and field selectors, as kube-apiserver parses them.

Rules kept: a selector that cannot be parsed is a 400 BadRequest naming the selector, never a
silent match-all; field selectors accept metadata.name and metadata.namespace on every type plus
the few per-type fields kube-apiserver supports for the types we serve.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raven.apiserver.status import ApiError, bad_request

_KEY = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")  # noqa: E501
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op in ("gt", "lt"):
            try:
                number = int(value or "")
            except ValueError:
                return False
            limit = int(self.values[0])
            return number > limit if self.op == "gt" else number < limit
        return False


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _check_key(selector: str, key: str) -> str:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(f'unable to parse requirement: invalid label key "{key}" in selector "{selector}"')  # noqa: E501
    return key


def _check_value(selector: str, value: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise bad_request(f'unable to parse requirement: invalid label value "{value}" in selector "{selector}"')  # noqa: E501
    return value


_SET = re.compile(r"^(?P<key>[^\s!=<>()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_BINARY = re.compile(r"^(?P<key>[^\s!=<>()]+)\s*(?P<op>==|=|!=|>|<)\s*(?P<value>[^\s!=<>()]*)$")


def parse_label_selector(selector: str | None) -> list[Requirement]:
    if not selector:
        return []
    requirements = []
    for part in _split_top_level(selector):
        if part.startswith("!"):
            requirements.append(Requirement(_check_key(selector, part[1:].strip()), "!"))
            continue
        match = _SET.match(part)
        if match:
            values = tuple(
                _check_value(selector, v.strip()) for v in match["values"].split(",") if v.strip()
            )
            if not values:
                raise bad_request(f'unable to parse requirement: for "{match["op"]}" operator, values set can\'t be empty in selector "{selector}"')  # noqa: E501
            key = _check_key(selector, match["key"])
            requirements.append(Requirement(key, match["op"], values))
            continue
        match = _BINARY.match(part)
        if match:
            key, op, value = match["key"], match["op"], match["value"]
            _check_key(selector, key)
            if op in (">", "<"):
                if not value.isdecimal():
                    raise bad_request(f'unable to parse requirement: for "{op}" operator the value must be an integer in selector "{selector}"')  # noqa: E501
                requirements.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
            else:
                requirements.append(
                    Requirement(key, "!=" if op == "!=" else "=", (_check_value(selector, value),))
                )
            continue
        if _KEY.match(part):
            requirements.append(Requirement(part, "exists"))
            continue
        raise bad_request(f'unable to parse requirement: "{part}" in label selector "{selector}"')
    return requirements


def labels_match(requirements: list[Requirement], obj: dict[str, Any]) -> bool:
    if not requirements:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


# Per-kind fields kube-apiserver accepts in field selectors beyond metadata.name/namespace.
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Event": (
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
        "regarding.kind", "regarding.name", "regarding.namespace",
    ),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
    "Node": ("spec.unschedulable",),
}


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str

    def matches(self, obj: dict[str, Any]) -> bool:
        current: Any = obj
        for part in self.path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if self.path == "source" and isinstance(current, dict):
            current = current.get("component")
        if isinstance(current, bool):
            current = "true" if current else "false"
        actual = "" if current is None else str(current)
        return (actual == self.value) != self.negate


def escape_field_value(value: str) -> str:
    """A value for a field selector term, escaped as client-go's fields.EscapeValue does."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_field_terms(selector: str) -> list[str]:
    """Terms split on commas that are not escaped with a backslash (escapes kept)."""
    terms, current, escaped = [], [], False
    for char in selector:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def _unescape_field_value(selector: str, value: str) -> str:
    out, escaped = [], False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise bad_request(f'invalid field selector "{selector}": invalid escape '
                                  f'sequence "\\{char}" (escape only \\, , and = with \\)')
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    if escaped:
        raise bad_request(f'invalid field selector "{selector}": the value ends with a lone "\\"')
    return "".join(out)


def parse_field_selector(selector: str | None, kind: str) -> list[FieldRequirement]:
    if not selector:
        return []
    allowed = ("metadata.name", "metadata.namespace", *EXTRA_FIELDS.get(kind, ()))
    out = []
    for part in _split_field_terms(selector):
        match = re.match(r"^([^=!\\]+?)\s*(==|=|!=)\s*(.*)$", part, re.DOTALL)
        if not match:
            raise bad_request(f'invalid field selector "{selector}": "{part}" is not key=value')
        path, op = match.group(1).strip(), match.group(2)
        value = _unescape_field_value(selector, match.group(3).strip())
        if path not in allowed:
            raise ApiError(
                400, "BadRequest",
                f'field label not supported: {path} (supported for {kind}: {", ".join(allowed)})',
            )
        out.append(FieldRequirement(path, op == "!=", value))
    return out


def fields_match(requirements: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    return all(r.matches(obj) for r in requirements)


def make_filter(
    label_selector: str | None, field_selector: str | None, kind: str
) -> Callable[[dict[str, Any]], bool] | None:
    """One predicate for both selectors, or None when there is nothing to filter."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, kind)
    if not labels and not fields:
        return None
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)
