"""flanneld's command-line conventions on top of argparse.

flanneld parses its flags with Go's `flag` package and fills unset flags from the
environment (coreos/pkg/flagutil). A command line or a systemd EnvironmentFile copied
from flanneld must work here unchanged:

- ``-flag value``, ``-flag=value``, ``--flag value`` and ``--flag=value`` are the same;
- a boolean flag is ``--flag`` or ``--flag=true|false`` (Go's ParseBool spellings);
- every name of a flag reads ``FLANNELD_<NAME>`` (upper case, ``-``/``.`` become ``_``)
  when the flag is not on the command line; an empty variable is ignored;
- flanneld flags with no meaning here are accepted with one warning each.

Every subcommand's parser is a `CommandParser`, so a bad or unknown argument is reported
with the subcommand's own usage, never the top-level one.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ENV_PREFIX = "FLANNELD_"
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def env_name(flag: str) -> str:
    """``--subnet-lease-renew-margin`` -> ``FLANNELD_SUBNET_LEASE_RENEW_MARGIN``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_").replace(".", "_")


def go_bool(value: str) -> bool:
    """Go's strconv.ParseBool: the only spellings flanneld accepts."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}: use true or false")


class GoBool(argparse.Action):
    """A boolean flag: ``--flag`` sets it, ``--flag=true|false`` says which."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = False, **kwargs: Any):
        kwargs.setdefault("metavar", "BOOL")
        super().__init__(option_strings, dest, nargs="?", const=True, default=default,
                         type=go_bool, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)


class IgnoredFlag(argparse.Action):
    """A flanneld flag that means nothing here: accepted, warned about once, dropped."""

    def __init__(self, option_strings: Sequence[str], dest: str, reason: str = "",
                 boolean: bool = False, **kwargs: Any):
        self.reason = reason
        kwargs.setdefault("help", f"accepted and ignored: {reason}")
        super().__init__(option_strings, dest, nargs="?" if boolean else None,
                         const="true" if boolean else None, default=argparse.SUPPRESS,
                         metavar="BOOL" if boolean else "VALUE", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        warned = parser.__dict__.setdefault("warned", set())
        if self.dest not in warned:
            warned.add(self.dest)
            print(f"{parser.prog}: warning: {self.option_strings[-1]} is ignored: {self.reason}",
                  file=sys.stderr)


def choice(*allowed: str, fold: Callable[[str], str] = str.upper) -> Callable[[str], str]:
    """A type accepting `allowed` in any case; the error lists them."""
    def parse(value: str) -> str:
        if fold(value) in allowed:
            return fold(value)
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: use one of {', '.join(allowed)}")
    parse.__name__ = "choice"
    return parse


def number(kind: type, low: float | None = None, high: float | None = None, *,
           unit: str = "", positive: bool = False) -> Callable[[str], Any]:
    """An int or float type within [low, high] (or > 0); the error names the range."""
    what = ("an integer" if kind is int else "a number") + (f" of {unit}" if unit else "")
    if positive:
        what += " > 0"
    elif low is not None and high is not None:
        what += f" from {low:g} to {high:g}"
    elif low is not None:
        what += f" >= {low:g}"

    def parse(value: str) -> Any:
        try:
            result = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: must be {what}") from None
        if ((positive and not result > 0) or (low is not None and result < low)
                or (high is not None and result > high)):
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: must be {what}")
        return result
    parse.__name__ = kind.__name__
    return parse


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: reports its own errors (with its own usage) and, once
    `flanneld_style()` was called on it, reads flanneld's flag syntax and environment."""

    go_flags = False
    environ: Mapping[str, str] | None = None   # None: os.environ at parse time

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        if self.go_flags:
            argv = self._from_environment(self._double_dashed(argv)) + self._double_dashed(argv)
        parsed, extra = super().parse_known_args(argv, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra

    def _double_dashed(self, argv: list[str]) -> list[str]:
        """Go's ``-flag``/``-flag=v`` (and ``--v``) become argparse's spelling of that flag."""
        known = {opt for action in self._actions for opt in action.option_strings}
        out: list[str] = []
        for i, arg in enumerate(argv):
            if arg == "--":
                return out + argv[i:]
            if arg.startswith("-") and arg not in known:
                name, sep, value = arg.lstrip("-").partition("=")
                for spelling in ("--" + name, "-" + name):
                    if spelling in known:
                        arg = spelling + sep + value
                        break
            out.append(arg)
        return out

    def _from_environment(self, argv: list[str]) -> list[str]:
        """``--name=value`` for each flag absent from `argv` whose FLANNELD_<NAME> is set."""
        environ = os.environ if self.environ is None else self.environ
        given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
        injected = []
        for action in self._actions:
            names = [o for o in action.option_strings if o.startswith("--")] or action.option_strings
            if not names or action.dest in ("help", "version") or given & set(action.option_strings):
                continue
            for name in names:
                value = environ.get(env_name(name), "")
                if value:
                    injected += self._env_values(action, name, env_name(name), value)
                    break
        return injected

    def _env_values(self, action: argparse.Action, flag: str, var: str, value: str) -> list[str]:
        """Check a variable's value now, so an error names the variable, not a flag
        that is nowhere on the command line."""
        values = value.split(",") if isinstance(action, argparse._AppendAction) else [value]
        for item in values:
            try:
                converted = action.type(item) if callable(action.type) else item
            except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
                self.error(f"${var} (for {flag}): {exc}")
            if action.choices is not None and converted not in action.choices:
                self.error(f"${var} (for {flag}): invalid value {item!r}: use one of "
                           + ", ".join(map(str, action.choices)))
        return [f"{flag}={item}" for item in values]


def flanneld_style(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Make `parser` (a CommandParser) read Go flag syntax and FLANNELD_<NAME> variables."""
    if not isinstance(parser, CommandParser):
        raise TypeError("flanneld_style needs a CommandParser (cli.build_parser makes them)")
    parser.go_flags, parser.environ, parser.allow_abbrev = True, environ, False
    # dozens of flags: errors show a one-line usage, -h the full list
    parser.usage = "%(prog)s [FLAG ...]  (see: %(prog)s -h)"
    parser.description = ((parser.description or "") + " Flags take flanneld's syntax too "
                          "(-flag value, -flag=value); every flag not given reads "
                          "FLANNELD_<NAME> from the environment.").strip()
