"""The one YAML loader of the project: safe types only, no aliases, bounded nesting.

Every reader of YAML (the API server's `application/yaml` bodies, `raven validate`, `raven plan`,
lab topology files) goes through `load_yaml`, `load_yaml_all` or `load_yaml_documents`, so one
hostile file cannot cost more than its own size anywhere. Rules it keeps:
- only PyYAML's safe types are built (no Python objects);
- aliases (`*name`) are refused: a few hundred bytes of nested aliases expand to gigabytes
  (the "billion laughs"), and Kubernetes manifests have no need for them; anchors alone are fine;
- nesting deeper than `MAX_DEPTH` is refused before the composer recurses into it, so `[` x 50000
  is a clear error instead of a RecursionError;
- a NUL byte is reported with its offset (YAML text cannot contain one);
- every error is a `YamlError` (a ValueError) whose message names the source and the line.
"""

from __future__ import annotations

from typing import IO, Any, Protocol

import yaml

MAX_DEPTH = 200  # deeper than any real manifest or CRD schema; far below Python's recursion limit
MAX_FILE_BYTES = 64 << 20  # no manifest or topology file is this big; /dev/zero must end


class YamlError(ValueError):
    """A document that cannot be loaded; the message names the source, the line and the fix."""


class Openable(Protocol):
    def open(self, mode: str) -> IO[bytes]: ...


def read_yaml_file(path: Openable) -> bytes:
    """The bytes of a YAML file (a Path or an importlib.resources Traversable), read at most
    MAX_FILE_BYTES: `raven validate /dev/zero` or a runaway generated file ends with a clear
    error instead of reading for ever. OSError is left to the caller, who names the file."""
    with path.open("rb") as file:
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise YamlError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; no manifest or "
                        "topology file is this big (split it)")
    return raw


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
    """A YamlError that points at the line to fix (for an unclosed bracket or quote, the line
    that opened it rather than the end of the file)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return YamlError(f"{source}: not valid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    what = " ".join(p for p in (exc.context, exc.problem) if p)
    started = exc.context_mark
    if started is not None and mark is not None and started.line != mark.line:
        if "<stream end>" in (exc.problem or ""):
            what += f" (the file ends at line {mark.line + 1})"
            mark = started
        else:
            what += f" (the construct started at line {started.line + 1})"
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return YamlError(f"{where}: malformed YAML: {what}; fix the syntax there")


def load_yaml_documents(data: str | bytes, *, source: str = "<input>") -> list[tuple[int, Any]]:
    """Every non-empty document of a YAML stream with the line (1-based) where it starts."""
    text = _text(data, source)
    try:
        # The reader checks for unprintable characters as it is made: inside the try.
        loader = _BoundedLoader(text, source)
    except yaml.YAMLError as exc:
        raise _describe(exc, source) from exc
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            document = loader.construct_document(node)
            if document is not None:  # `---` followed by nothing, or only comments
                documents.append((node.start_mark.line + 1, document))
        return documents
    except yaml.YAMLError as exc:
        raise _describe(exc, source) from exc
    except RecursionError as exc:  # belt and braces: the depth bound should make this unreachable
        raise YamlError(f"{source}: nested too deeply; flatten the document") from exc
    finally:
        loader.dispose()


def load_yaml_all(data: str | bytes, *, source: str = "<input>") -> list[Any]:
    """Every non-empty document of a YAML stream."""
    return [document for _, document in load_yaml_documents(data, source=source)]


def load_yaml(data: str | bytes, *, source: str = "<input>") -> Any:
    """The single document of a YAML text (None when it is empty); several is an error."""
    documents = load_yaml_all(data, source=source)
    if len(documents) > 1:
        raise YamlError(f"{source}: holds {len(documents)} YAML documents where one is expected")
    return documents[0] if documents else None
