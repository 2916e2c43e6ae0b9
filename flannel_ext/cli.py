"""The `flannel-ext` command line: one subcommand module per concept.

Each module in `_SUBCOMMANDS` defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed args, returns an exit code). Only the named
subcommand's module is imported: a daemon (`run`) does not load the lab, jinja2 or yaml,
which cost each of a 100-node lab's daemons memory and start-up CPU. A `FlannelExtError`
is printed as one line, never a traceback, and exits with the error's own code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from flannel_ext._version import __version__
from flannel_ext._commands import flags
from flannel_ext._util.errors import FlannelExtError

_SUBCOMMANDS = {name: f"flannel_ext._commands.{name}"
                for name in ("run", "hook", "recipes", "lab", "lint", "manifest", "leases", "doctor")}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` alone when it is a known subcommand, else for all of them
    (top-level help and errors list every command)."""
    parser = argparse.ArgumentParser(
        prog="flannel-ext",
        description="Prototype container-network dataplanes on flannel's extension contract.")
    parser.add_argument("--version", action="version", version=f"flannel-ext {__version__}")
    # CommandParser: a subcommand reports its own errors with its own usage.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=flags.CommandParser)
    names = [command] if command in _SUBCOMMANDS else list(_SUBCOMMANDS)
    for name in names:
        importlib.import_module(_SUBCOMMANDS[name]).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The top-level parser has no option that takes a value: the first word is the command.
    parser = build_parser(next((word for word in argv if not word.startswith("-")), None))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FlannelExtError as exc:
        print(f"flannel-ext: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
