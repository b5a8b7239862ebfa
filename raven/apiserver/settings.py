"""Settings of the embedded API server: `ApiServerSettings`, the API server's section of the
settings root (`raven.settings`), where its defaults are written once; re-exported here, the
same class. One frozen dataclass, passed in by the entry points; a bad value is refused when it
is made (`ApiServerError`, naming the setting and the fix).
"""

from __future__ import annotations

from raven.settings import ApiServerSettings, apiserver_problems

__all__ = ["ApiServerSettings", "apiserver_problems"]
