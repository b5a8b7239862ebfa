"""Settings of the API client (no kubernetes import: cheap to use in settings dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raven.kube.backoff import BackoffSettings


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: Path | None = None  # None: $KUBECONFIG, then in-cluster, then ~/.kube/config
    context: str | None = None
    request_timeout: float = 10.0  # seconds, per request (connect and read)
    watch_timeout: int = 60  # server-side timeoutSeconds of one watch request
    backoff: BackoffSettings = field(default_factory=BackoffSettings)
    user_agent: str = "raven"
