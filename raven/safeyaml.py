"""The one YAML loader of the project: safe types only, no aliases, bounded nesting.

Every reader of YAML (the API server's `application/yaml` bodies, `raven validate`, `raven plan`,
lab topology files) goes through `load_yaml` / `load_yaml_all`, so one hostile file cannot cost
more than its own size anywhere. Rules it keeps:
- only PyYAML's safe types are built (no Python objects);
- aliases (`*name`) are refused: a few hundred bytes of nested aliases expand to gigabytes
  (the "billion laughs"), and Kubernetes manifests have no need for them; anchors alone are fine;
- nesting deeper than `MAX_DEPTH` is refused before the composer recurses into it, so `[` x 50000
  is a clear error instead of a RecursionError;
- a NUL byte is reported with its offset (YAML text cannot contain one);
- every error is a `YamlError` (a ValueError) whose message names the source and the line.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 200  # deeper than any real manifest or CRD schema; far below Python's recursion limit


class YamlError(ValueError):
    """A document that cannot be loaded; the message names the source, the line and the fix."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and excessive nesting while composing the node graph."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self._source = source
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlError(
                f"{self._source}: line {event.start_mark.line + 1}: YAML aliases "
                f"(*{event.anchor}) are not accepted; write the value out in full")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlError(
                    f"{self._source}: line {mark.line + 1}: nested more than {MAX_DEPTH} levels "
                    "deep; flatten the document")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _text(data: str | bytes, source: str) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(
                f"{source}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    nul = data.find("\x00")
    if nul >= 0:
        line = data.count("\n", 0, nul) + 1
        raise YamlError(f"{source}: line {line}: contains a NUL byte (offset {nul}); "
                        "YAML text cannot contain one")
    return data


def _describe(exc: yaml.YAMLError, source: str) -> YamlError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return YamlError(f"{source}: {where}not valid YAML: {problem}")


def load_yaml_all(data: str | bytes, *, source: str = "<input>") -> list[Any]:
    """Every document of a YAML stream (empty documents are None)."""
    text = _text(data, source)
    try:  # the reader checks the characters while the loader is made (e.g. a control byte)
        loader = _BoundedLoader(text, source)
    except yaml.YAMLError as exc:
        raise _describe(exc, source) from exc
    try:
        documents = []
        while loader.check_node():
            documents.append(loader.construct_document(loader.get_node()))
        return documents
    except yaml.YAMLError as exc:
        raise _describe(exc, source) from exc
    except RecursionError as exc:  # belt and braces: the depth bound should make this unreachable
        raise YamlError(f"{source}: nested too deeply; flatten the document") from exc
    finally:
        loader.dispose()


def load_yaml(data: str | bytes, *, source: str = "<input>") -> Any:
    """The single document of a YAML text (None when it is empty); several is an error."""
    documents = load_yaml_all(data, source=source)
    if len(documents) > 1:
        raise YamlError(f"{source}: holds {len(documents)} YAML documents where one is expected")
    return documents[0] if documents else None
