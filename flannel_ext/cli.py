"""The `flannel-ext` command line: one subcommand module per concept.

Each module in `_SUBCOMMANDS` defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed args, returns an exit code). A `FlannelExtError`
is printed as one line, never a traceback, and exits with the error's own code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from flannel_ext._version import __version__
from flannel_ext._commands import flags
from flannel_ext._util.errors import FlannelExtError

_SUBCOMMANDS = [
    "flannel_ext._commands.run",
    "flannel_ext._commands.hook",
    "flannel_ext._commands.recipes",
    "flannel_ext._commands.lab",
    "flannel_ext._commands.lint",
    "flannel_ext._commands.manifest",
    "flannel_ext._commands.leases",
    "flannel_ext._commands.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flannel-ext",
        description="Prototype container-network dataplanes on flannel's extension contract.")
    parser.add_argument("--version", action="version", version=f"flannel-ext {__version__}")
    # CommandParser: a subcommand reports its own errors with its own usage.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=flags.CommandParser)
    for name in _SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
