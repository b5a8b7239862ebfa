"""core/v1 Events about our objects (ActiveEndpointElected, ActiveEndpointLost, ...).

Rules kept: events are best effort — a failure to record one is logged and never stops the
caller; events about cluster-scoped objects go to the `default` namespace, as Kubernetes does.
"""

from __future__ import annotations

import logging
import os

from raven.kube.client import EVENTS, JSON, Kube
from raven.kube.errors import KubeError
from raven.timefmt import to_micro_time, to_time

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(self, kube: Kube, component: str, host: str = "") -> None:
        self.kube = kube
        self.component = component
        self.host = host
        self.recorded = 0

    def record(self, obj: JSON, reason: str, message: str, now: float,
               event_type: str = "Normal") -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        name = f"{meta.get('name')}.{int(now * 1e9):x}{os.urandom(2).hex()}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", ""),
                "kind": obj.get("kind", ""),
                "name": meta.get("name", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": to_time(now),
            "lastTimestamp": to_time(now),
            "eventTime": to_micro_time(now),
            "count": 1,
            "action": reason,
        }
        if not meta.get("namespace"):
            event["involvedObject"].pop("namespace", None)
        try:
            self.kube.create(EVENTS, event, namespace)
            self.recorded += 1
        except KubeError as exc:
            log.warning("event %s on %s/%s not recorded: %s", reason, obj.get("kind"),
                        meta.get("name"), exc)
