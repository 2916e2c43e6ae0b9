"""flannel-ext: prototype container-network dataplanes on flannel's extension contract.

The public API is this module. Everything under an underscore is internal.

The names load on first use (PEP 562): every entry point (`flannel-ext-cni` runs once per
pod) imports this package first, and most need none of the hook or policy machinery.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flannel_ext._version import __version__

if TYPE_CHECKING:
    from flannel_ext._util.errors import (BatchError, CommandError, ConfigError, FlannelExtError, HookError,
                                          HookLoadError, HookTimeout, PermanentError, StoreError,
                                          TemporaryError)
    from flannel_ext._hooks.base import Hook, HookContext, RemoteLease
    from flannel_ext._stores.lease import Lease, LeaseAttrs
    from flannel_ext._policy.hook import PolicyHook
    from flannel_ext._policy.state import Allow, PodPolicy, PolicyState, PortRange, RulePeers

_HOME = {
    "flannel_ext._util.errors": ("BatchError", "CommandError", "ConfigError", "FlannelExtError", "HookError",
                                 "HookLoadError", "HookTimeout", "PermanentError", "StoreError",
                                 "TemporaryError"),
    "flannel_ext._hooks.base": ("Hook", "HookContext", "RemoteLease"),
    "flannel_ext._stores.lease": ("Lease", "LeaseAttrs"),
    "flannel_ext._policy.hook": ("PolicyHook",),
    "flannel_ext._policy.state": ("Allow", "PodPolicy", "PolicyState", "PortRange", "RulePeers"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [
    "Hook", "HookContext", "RemoteLease", "Lease", "LeaseAttrs",
    "PolicyHook", "PolicyState", "PodPolicy", "Allow", "RulePeers", "PortRange",
    "FlannelExtError", "ConfigError", "HookLoadError", "StoreError", "HookError", "CommandError",
    "HookTimeout", "TemporaryError", "PermanentError", "BatchError", "__version__",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'flannel_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
