"""Choose the hook for a net-conf.json: shell commands, or a Python class via Backend.Hook.

``Backend.Hook`` takes three forms:

* ``"pkg.module:ClassName"``: imported from sys.path;
* ``"path/to/file.py:ClassName"``: a file, relative to the net-conf file's directory;
* ``"vxlan"``: a recipe name from the ``flannel_ext.recipes`` entry-point group, so a
  third-party package can ship a recipe by name.

Classes are validated at load time, as pluggy validates hook implementations: a typo'd
method (``subnet_added``) would otherwise never be called and fail silently. Every
problem is one `HookLoadError` line that names the hook and the fix.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import os
import sys
from pathlib import Path
from typing import Any

from flannel_ext._util.errors import HookLoadError
from flannel_ext._config.netconf import NetConf
from flannel_ext._hooks.base import HOOK_METHODS, Hook

RECIPE_GROUP = "flannel_ext.recipes"
# Public names a subclass may define without being mistaken for a misspelt hook.
_BASE_PUBLIC = {n for n in dir(Hook) if not n.startswith("_")}
_LOOKALIKE_PREFIXES = ("pre_", "post_", "subnet_", "shutdown", "on_")
_file_modules = itertools.count()


def load_hook(config: NetConf) -> Hook:
    """The Hook for `config`: a Python class when Backend.Hook is set, else the shell commands."""
    if config.hook:
        return load_python_hook(config.hook, dict(config.backend), source=config.source)
    from flannel_ext._hooks.shell import ShellHook
    return ShellHook.from_config(config)


def load_python_hook(spec: str, options: dict, *, source: str = "net-conf.json") -> Hook:
    """Import, validate and instantiate the Hook class named by `spec` with `options`."""
    cls = load_hook_class(spec, source=source)
    try:
        return cls(options)
    except Exception as exc:  # noqa: BLE001 - the user's __init__ may raise anything
        raise _error(source, spec, f"{cls.__name__}(options) failed: {type(exc).__name__}: {exc}",
                     "check the Backend options this hook reads") from exc


def load_hook_class(spec: str, *, source: str = "net-conf.json") -> type[Hook]:
    """The validated Hook subclass for `spec` (not instantiated)."""
    cls = import_object(spec, source=source)
    validate_hook_class(cls, spec=spec, source=source)
    return cls


def import_object(spec: str, *, group: str = RECIPE_GROUP, source: str = "net-conf.json",
                  what: str = "recipe") -> Any:
    """What `spec` names: an entry point of `group`, "module:Attr" or "file.py:Attr"."""
    spec = spec.strip()
    if ":" not in spec:
        target = _recipe_target(spec, source, group, what)
        module_name, _, attr = target.partition(":")
    else:
        module_name, _, attr = spec.rpartition(":")
    if not attr:
        raise _error(source, spec, "no class name", 'write "module:ClassName" or "file.py:ClassName"')
    module = _import(module_name, spec, source)
    cls = getattr(module, attr, None)
    if cls is None:
        raise _error(source, spec, f"{module_name} has no attribute {attr!r}",
                     "check the class name after the colon")
    return cls


def validate_hook_class(cls: Any, *, spec: str = "", source: str = "net-conf.json") -> None:
    """Raise HookLoadError unless `cls` is a Hook subclass with well-formed hook methods."""
    spec = spec or getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, Hook)) or cls is Hook:
        raise _error(source, spec, f"{cls!r} is not a subclass of flannel_ext.Hook",
                     "declare it as `class MyHook(flannel_ext.Hook):`")
    for name, member in _own_members(cls):
        if name not in _BASE_PUBLIC:
            close = difflib.get_close_matches(name, HOOK_METHODS, n=1, cutoff=0.75)
            if callable(member) and (close or name.startswith(_LOOKALIKE_PREFIXES)):
                hint = f"rename it to {close[0]!r}" if close else \
                    f"hook methods are {', '.join(HOOK_METHODS)}; prefix helpers with '_'"
                raise _error(source, spec, f"{cls.__name__}.{name} is not a hook method", hint)
            continue
        if name in HOOK_METHODS or name in ("parse_backend_data", "mtu"):
            _check_signature(cls, name, member, spec, source)
    _check_declarations(cls, spec, source)


def load_hook_file_paths(config: NetConf) -> list[Path]:
    """The source file(s) the configured Python hook comes from, for hot reload to watch.

    Empty for shell hooks (the net-conf file itself is the runtime's to watch).
    """
    spec = (config.hook or "").strip()
    if not spec:
        return []
    if ":" not in spec:
        spec = _recipe_target(spec, config.source)
    module_name = spec.rpartition(":")[0]
    if _is_path(module_name):
        return [_resolve(module_name, config.source)]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    return [Path(found.origin)] if found is not None and found.origin not in (None, "built-in") else []


def installed_recipes() -> dict[str, str]:
    """Recipe name → "module:Class" for every entry point in `flannel_ext.recipes`."""
    return entry_point_targets(RECIPE_GROUP)


def entry_point_targets(group: str) -> dict[str, str]:
    """Name → "module:Class" for every entry point in `group`."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}


# --- internals ---------------------------------------------------------------------
def _error(source: str, spec: str, problem: str, fix: str) -> HookLoadError:
    where = f"{source} {spec!r}" if source.startswith("--") else f"{source}: Backend.Hook {spec!r}"
    return HookLoadError(f"{where}: {problem}; {fix}")


def _is_path(module_name: str) -> bool:
    return module_name.endswith(".py") or "/" in module_name or os.sep in module_name


def _resolve(path: str, source: str) -> Path:
    return (Path(source or ".").parent / os.path.expanduser(path)).resolve()


def _recipe_target(name: str, source: str, group: str = RECIPE_GROUP, what: str = "recipe") -> str:
    recipes = installed_recipes() if group == RECIPE_GROUP else entry_point_targets(group)
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none installed"
        close = difflib.get_close_matches(name, recipes, n=1)
        raise _error(source, name, f"no such {what}",
                     (f"did you mean {close[0]!r}? " if close else "")
                     + f'{what}s: {known}; or write "module:ClassName" / "file.py:ClassName"')
    return recipes[name]


def _import(module_name: str, spec: str, source: str):
    if _is_path(module_name):
        path = _resolve(module_name, source)
        if not path.is_file():
            base = "the current" if source.startswith("--") else "the net-conf file's"
            raise _error(source, spec, f"file {path} not found",
                         f"relative paths are resolved against {base} directory")
        # A fresh module name per load: a hot reload must run the edited file, not a cache.
        name = f"flannel_ext_hook_{path.stem}_{next(_file_modules)}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        assert loader_spec is not None and loader_spec.loader is not None   # a .py path always has one
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any error in user code is a load error
            sys.modules.pop(name, None)
            raise _error(source, spec, f"importing {path} failed: {type(exc).__name__}: {exc}",
                         "fix the file so that `python3 FILE` runs") from exc
        return module
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001
        raise _error(source, spec, f"cannot import {module_name}: {type(exc).__name__}: {exc}",
                     "install the package or fix PYTHONPATH, or give a file path") from exc


def _own_members(cls: type):
    """Public attributes defined by `cls` or its bases below flannel_ext.Hook."""
    seen = set()
    for klass in cls.__mro__:
        if klass is Hook or klass is object or issubclass(Hook, klass):
            continue
        for name in vars(klass):
            if not name.startswith("_") and name not in seen:
                seen.add(name)
                yield name, inspect.getattr_static(cls, name)


def _check_signature(cls: type, name: str, member: Any, spec: str, source: str) -> None:
    func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
    if not callable(func):
        if name in HOOK_METHODS:
            raise _error(source, spec, f"{cls.__name__}.{name} is not a method",
                         f"define `def {name}{_signature(name)}:`")
        return
    if inspect.iscoroutinefunction(func) or inspect.isgeneratorfunction(func):
        raise _error(source, spec, f"{cls.__name__}.{name} is async or a generator",
                     f"hooks are called synchronously: use a plain `def {name}{_signature(name)}:`")
    args = list(inspect.signature(getattr(Hook, name)).parameters)   # self, lease, ctx
    attr = getattr(cls, name)
    if inspect.ismethod(attr) or isinstance(member, staticmethod):
        args = args[1:]                                 # no self to pass
    try:
        inspect.signature(attr).bind(*args)
    except (TypeError, ValueError):
        got = _safe_signature(func)
        raise _error(source, spec, f"{cls.__name__}.{name}{got} has the wrong signature",
                     f"the runtime calls `def {name}{_signature(name)}:`") from None


def _check_declarations(cls: type[Hook], spec: str, source: str) -> None:
    """The attributes the runtime reads (see `Hook`) must have usable values."""
    timeout = inspect.getattr_static(cls, "timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise _error(source, spec, f"{cls.__name__}.timeout is {timeout!r}",
                     "set it to a positive number of seconds, or None for run --hook-timeout")
    calls = inspect.getattr_static(cls, "max_concurrent_calls")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise _error(source, spec, f"{cls.__name__}.max_concurrent_calls is {calls!r}",
                     "set it to a whole number of at least 1 (1: one call at a time)")


def _signature(name: str) -> str:
    return "(" + ", ".join(inspect.signature(getattr(Hook, name)).parameters) + ")"


def _safe_signature(func: Any) -> str:
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(…)"
