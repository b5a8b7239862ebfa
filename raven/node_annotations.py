"""The agent's writes to its own Node: annotations only (raven.openyurt.io/public-key, the pool's
gateway as this node decided it, the path facts), never the spec or another object.

Rules kept:
- an annotation is written only when the Node as the agent's informer last saw it says
  something else (one merge patch for every annotation that differs; `None` removes one);
- nothing raises: the outcome says whether there was a Node to write to, whether it already
  said so, and whether the API server took the write (`Write`); failures are logged naming the
  node and counted (`raven_agent_errors_total{phase="publish"}`); when to try again is the
  caller's schedule (`raven.publisher`).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING

from prometheus_client import Counter

from raven.kube.errors import Conflict, KubeError

if TYPE_CHECKING:
    from raven.kube.client import Kube
    from raven.kube.informer import Informer

log = logging.getLogger(__name__)


class Write(Enum):
    NO_NODE = "no-node"  # no API client or our Node not listed yet: nothing written
    SAME = "same"  # the Node already says so
    WRITTEN = "written"
    FAILED = "failed"  # the API server did not take the write
    CONFLICT = "conflict"  # it answered: our view of the Node is older than its own

    @property
    def ok(self) -> bool:
        return self in (Write.SAME, Write.WRITTEN)


class NodeAnnotations:
    """Annotations of the Node `node`, read from `informer`, written through `kube` (both set
    by the agent once it connects)."""

    def __init__(self, node: str, errors: Counter) -> None:
        self.node = node
        self.errors = errors
        self.kube: Kube | None = None
        self.informer: Informer | None = None

    def ensure(self, want: dict[str, str | None], what: str,
               timeout: float | None = None, conditional: bool = False) -> Write:
        """Make our Node's annotations `want` (None: absent); `what` names them in logs.
        `conditional`: the write applies only to the Node as we last saw it (its
        resourceVersion), so an attempt that timed out on our side but reaches the API server
        late cannot overwrite a newer write (it gets CONFLICT instead)."""
        if self.informer is None or self.kube is None:
            return Write.NO_NODE
        from raven.kube.client import NODES

        obj = self.informer.get(self.node)
        if obj is None:
            return Write.NO_NODE
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if all(annotations.get(k) == v for k, v in want.items()):
            return Write.SAME
        patch: dict[str, dict[str, object]] = {"metadata": {"annotations": want}}
        if conditional and meta.get("resourceVersion"):
            patch["metadata"]["resourceVersion"] = meta["resourceVersion"]
        try:
            self.kube.merge_patch(NODES, self.node, patch, timeout=timeout)
        except Conflict:
            log.info("node %s: publishing %s: the Node changed meanwhile; trying again",
                     self.node, what)
            return Write.CONFLICT
        except KubeError as exc:
            self.errors.labels("publish").inc()
            log.warning("node %s: cannot publish %s: %s", self.node, what, exc)
            return Write.FAILED
        log.info("node %s: published %s", self.node, what)
        return Write.WRITTEN
