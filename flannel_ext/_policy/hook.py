"""The policy hook protocol, and how `run --policy HOOK` finds the class.

A policy hook enforces a node's `PolicyState`, as a connectivity hook programs leases:

* ``apply(state)``: make the dataplane enforce exactly `state` (called first, and after
  any failure), replacing whatever an earlier process left behind;
* ``update(old, new)``: optional; move from `old` (the state last applied successfully)
  to `new` incrementally. The default calls ``apply(new)``;
* ``clear()``: remove all enforcement (the base does nothing).

HOOK is loaded like a recipe: a name from the ``flannel_ext.policies`` entry-point group
(``nftables``, ``log``), ``module:Class`` or ``file.py:Class``.
"""
from __future__ import annotations

import inspect
import logging

from flannel_ext._hooks.loader import import_object
from flannel_ext._policy.state import PolicyState
from flannel_ext._util.errors import HookLoadError

POLICY_GROUP = "flannel_ext.policies"
POLICY_METHODS = ("apply", "update", "clear")


class PolicyHook:
    """Base class of policy hooks; subclasses implement at least `apply`."""

    #: the logger a hook should use
    log = logging.getLogger("flannel_ext.policy")

    def apply(self, state: PolicyState) -> None:
        raise NotImplementedError

    def update(self, old: PolicyState, new: PolicyState) -> None:
        self.apply(new)

    def clear(self) -> None:
        """Remove every rule this hook installed."""


def load_policy_hook(spec: str) -> PolicyHook:
    """Import, validate and instantiate the policy hook named by `spec` (no arguments)."""
    cls = import_object(spec, group=POLICY_GROUP, source="--policy", what="policy hook")
    name = getattr(cls, "__name__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, PolicyHook)) or cls is PolicyHook:
        raise HookLoadError(f"--policy {spec!r}: {cls!r} is not a subclass of flannel_ext.PolicyHook; "
                            "declare it as `class MyPolicy(flannel_ext.PolicyHook):`")
    if cls.apply is PolicyHook.apply:
        raise HookLoadError(f"--policy {spec!r}: {name} does not define apply(self, state)")
    for method, arity in (("apply", 1), ("update", 2), ("clear", 0)):
        try:
            inspect.signature(getattr(cls, method)).bind(None, *([None] * arity))
        except TypeError:
            args = {"apply": "state", "update": "old, new", "clear": ""}[method]
            raise HookLoadError(f"--policy {spec!r}: {name}.{method} has the wrong signature; "
                                f"the agent calls `def {method}(self{', ' if args else ''}{args}):`") from None
    try:
        return cls()
    except Exception as exc:
        raise HookLoadError(f"--policy {spec!r}: {name}() failed: {type(exc).__name__}: {exc}") from exc
