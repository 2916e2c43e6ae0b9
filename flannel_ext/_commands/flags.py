"""flanneld's flag convention: a flag not given falls back to FLANNELD_<FLAG> in the environment."""
from __future__ import annotations

import argparse
import os


def env_name(flag: str) -> str:
    return "FLANNELD_" + flag.lstrip("-").upper().replace("-", "_").replace(".", "_")


def apply_env_defaults(parser: argparse.ArgumentParser, environ=os.environ) -> None:
    """Set each option's default from FLANNELD_<FLAG> when that is set and non-empty."""
    for action in parser._actions:
        long_flags = [f for f in action.option_strings if f.startswith("--")]
        if not long_flags or action.dest in ("help", "version"):
            continue
        value = environ.get(env_name(long_flags[0]))
        if not value:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            action.default = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):
            action.default = value.split(",")
        else:
            action.default = action.type(value) if action.type else value
        action.help = (action.help or "") + f" [from ${env_name(long_flags[0])}]"
