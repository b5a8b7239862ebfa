"""Content negotiation from the Accept header. Pure.

Rules kept:
- Responses are JSON; a client that accepts only protobuf gets 406 naming the media types served.
- `as=Table` asks for kubectl's table form, `as=PartialObjectMetadata(List)` for metadata only;
  the first entry that names one of them, or plain JSON, decides.
"""

from __future__ import annotations

from email.message import Message

from raven.apiserver.status import ApiError

TABLE = "Table"
METADATA = "PartialObjectMetadata"


def check_accept(headers: Message) -> None:
    """406 when the client accepts nothing but protobuf."""
    accept = headers.get("Accept") or "*/*"
    kinds = [a.split(";")[0].strip() for a in accept.split(",")]
    if all(k == "application/vnd.kubernetes.protobuf" for k in kinds):
        raise ApiError(406, "NotAcceptable", "only the following media types are accepted: application/json, application/yaml")  # noqa: E501


def wanted_form(headers: Message) -> str:
    """TABLE, METADATA or '' (plain objects) from the Accept header."""
    for entry in (headers.get("Accept") or "").split(","):
        params = dict(
            p.strip().split("=", 1) for p in entry.split(";")[1:] if "=" in p
        )
        wanted = params.get("as", "")
        if wanted == "Table":
            return TABLE
        if wanted in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return METADATA
        if entry.split(";")[0].strip() in ("application/json", "*/*", "application/*"):
            return ""
    return ""
