"""What a request handler may use of its server: one narrow, read-only object.

Rules kept: the HTTP layer (handler.py) sees the server only through `ServerContext`; it never
imports server.py, so the two cannot form an import cycle and the handler's needs stay listed
in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from raven.apiserver.api import ResourceApi
from raven.apiserver.fanout import FanoutHealth
from raven.apiserver.kubeletproxy import KubeletProxy
from raven.apiserver.resources import Registry
from raven.apiserver.settings import ApiServerSettings
from raven.apiserver.store import Store


@dataclass(frozen=True)
class ServerContext:
    settings: ApiServerSettings
    token: str  # the bearer token every request must carry
    registry: Registry  # the served resource types (changes as CRDs are stored)
    api: ResourceApi  # Kubernetes semantics over the store
    store: Store  # for watches: resume checks and subscriptions
    address: str  # host:port clients use, for discovery's serverAddressByClientCIDRs
    is_stopping: Callable[[], bool]  # the server is shutting down: start no new watch
    watch_health: Callable[[], FanoutHealth]  # for /healthz, /livez, /readyz
    kubelets: KubeletProxy | None = None  # pods/log, pods/exec, nodes/proxy; None: not set up
