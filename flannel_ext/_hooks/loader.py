"""Choose the hook for a net-conf.json: shell commands, or a Python class via "Hook".

(Python loading is filled in by the hooks/recipes work.)
"""
from __future__ import annotations

from .._cogs.errors import HookLoadError
from .._config.netconf import NetConf
from .base import Hook


def load_hook(config: NetConf) -> Hook:
    """The Hook for `config`: a Python class when Backend.Hook is set, else the shell commands."""
    spec = config.backend_option("Hook")
    if spec:
        return load_python_hook(str(spec), dict(config.backend), source=config.source)
    from .shell import ShellHook
    return ShellHook.from_config(config)


def load_python_hook(spec: str, options: dict, *, source: str = "net-conf.json") -> Hook:
    raise HookLoadError(f"{source}: Backend.Hook: Python hooks are not implemented yet ({spec!r})")
