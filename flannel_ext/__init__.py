"""flannel-ext: prototype container-network dataplanes on flannel's extension contract.

The public API is this module. Everything under an underscore is internal.
"""
from flannel_ext._util.errors import (BatchError, CommandError, ConfigError, FlannelExtError, HookError,
                           HookLoadError, HookTimeout, PermanentError, StoreError, TemporaryError)
from flannel_ext._hooks.base import Hook, HookContext, RemoteLease
from flannel_ext._stores.lease import Lease, LeaseAttrs
from flannel_ext._policy.hook import PolicyHook
from flannel_ext._policy.state import Allow, PodPolicy, PolicyState, PortRange, RulePeers

from flannel_ext._version import __version__

__all__ = [
    "Hook", "HookContext", "RemoteLease", "Lease", "LeaseAttrs",
    "PolicyHook", "PolicyState", "PodPolicy", "Allow", "RulePeers", "PortRange",
    "FlannelExtError", "ConfigError", "HookLoadError", "StoreError", "HookError", "CommandError",
    "HookTimeout", "TemporaryError", "PermanentError", "BatchError", "__version__",
]
