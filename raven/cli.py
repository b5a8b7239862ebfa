"""The `raven` command: parse, then delegate to the command group that owns the verb.

Each module in `raven.commands` owns one top-level verb (lab, apiserver, agent, ...) and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the handler.
Handlers raise `CommandError` for problems the operator can fix; those are printed without a
traceback and exit with the error's code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from raven import __version__, commands
from raven.errors import CommandError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raven", description="Raven overlay: pod networking across edge node pools."
    )
    parser.add_argument("--version", action="version", version=f"raven {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"raven: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
