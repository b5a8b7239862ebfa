"""Structure of the API server's HTTP layer: who imports whom, and which errors the library
raises (ApiServerError) versus what the CLI prints (CommandError)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from raven.apiserver.errors import ApiServerError
from raven.apiserver.server import ApiServer
from raven.apiserver.settings import ApiServerSettings
from raven.commands.apiserver import parse_listen
from raven.errors import CommandError

PACKAGE = Path(__file__).resolve().parents[2] / "raven" / "apiserver"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_handler_reaches_the_server_only_through_its_context() -> None:
    for module in ("handler.py", "routing.py", "bodies.py", "connections.py", "context.py",
                   "exchange.py", "negotiation.py", "documents.py", "verbs.py", "watch.py",
                   "connect.py"):
        imports = imported_modules(PACKAGE / module)
        assert "raven.apiserver.server" not in imports, module
    assert "raven.apiserver.context.ServerContext" in imported_modules(PACKAGE / "handler.py")


def test_the_handler_frames_and_dispatches_only() -> None:
    """Relays, watches and resource semantics live in their own modules (issue 10, item 5):
    the handler imports none of the machinery they use."""
    imports = imported_modules(PACKAGE / "handler.py")
    for module in ("kubeletproxy", "nodedial", "ravenproxy", "fanout", "store", "api",
                   "selectors", "tables", "paging", "discovery", "openapi", "watchlines"):
        assert f"raven.apiserver.{module}" not in imports, module
    assert not imports & {"random", "urllib.parse.parse_qs", "urllib.parse.quote"}


def test_routing_and_bodies_are_pure() -> None:
    for module in ("routing.py", "bodies.py", "paging.py", "exchange.py", "negotiation.py"):
        imports = imported_modules(PACKAGE / module)
        assert not imports & {"socket", "ssl", "threading", "time", "sqlite3", "http.server"}


def test_the_library_raises_no_cli_errors() -> None:
    for path in PACKAGE.glob("*.py"):
        assert "raven.errors.CommandError" not in imported_modules(path), path.name


def test_settings_refuse_nonsense_with_the_setting_named() -> None:
    with pytest.raises(ApiServerError) as err:
        ApiServerSettings(data_dir=Path("/nonexistent"), max_body_bytes=0, idle_timeout=-1)
    assert "max_body_bytes must be at least 1" in str(err.value)
    assert "idle_timeout must be more than 0" in str(err.value)


def test_plain_http_off_loopback_is_an_api_server_error(tmp_path: Path) -> None:
    with pytest.raises(ApiServerError) as err:
        ApiServer(ApiServerSettings(data_dir=tmp_path, host="192.0.2.1", plain_http=True))
    assert "only allowed on loopback" in str(err.value)


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1:²", "127.0.0.1:70000", "127.0.0.1:"])
def test_listen_addresses_are_checked_by_the_cli(text: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_listen(text)
    assert "HOST:PORT" in str(err.value)
