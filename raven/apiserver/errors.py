"""Errors the API server library raises to the code that starts it (never HTTP answers).

HTTP refusals are `raven.apiserver.status.ApiError` (rendered as a metav1.Status); an
`ApiServerError` means the server cannot start as configured: the message names the setting or
resource and the fix. The CLI turns it into its own CommandError; the library never raises
CLI errors itself.
"""

from __future__ import annotations

from raven.errors import ApiServerError  # defined with the settings root's other errors

__all__ = ["ApiServerError"]
