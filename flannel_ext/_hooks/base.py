"""The Hook protocol shared by shell recipes and Python hook classes.

A dataplane is a `Hook` subclass. The runtime calls, in order:
``pre_startup`` → (lease acquired) → ``post_startup`` → (subnet.env written) →
``subnet_add`` / ``subnet_remove`` for each remote lease, as often as they change →
``shutdown`` on SIGTERM/SIGINT.

Every method may raise `TemporaryError` (retry later), `PermanentError` (do not retry)
or any other exception (treated as temporary, with backoff).
"""
from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Sequence

from flannel_ext._util.errors import BatchError

# The lifecycle method names; anything else public on a Hook subclass that looks like
# one of these (see loader) is a typo and is refused at load time.
HOOK_METHODS = ("pre_startup", "post_startup", "subnet_add", "subnet_remove", "shutdown",
                "subnet_add_batch", "subnet_remove_batch")

# flannel's command names for each lifecycle step.
COMMAND_NAMES = {
    "pre_startup": "PreStartupCommand",
    "post_startup": "PostStartupCommand",
    "subnet_add": "SubnetAddCommand",
    "subnet_remove": "SubnetRemoveCommand",
    "shutdown": "ShutdownCommand",
}


@dataclass(frozen=True)
class RemoteLease:
    """Another node's lease, already validated, as a hook sees it."""

    subnet: ipaddress.IPv4Network | None
    public_ip: str
    ipv6_subnet: ipaddress.IPv6Network | None = None
    public_ipv6: str | None = None
    backend_type: str = "extension"
    backend_data: str = ""              # the decoded string (flannel's stdin), "" if none
    backend_data_raw: str | None = None  # the raw JSON as stored
    data: Any = None                    # the hook's parsed form (Hook.parse_backend_data)
    key: str = ""                       # flannel's subnet key, e.g. "10.5.1.0-24"

    @property
    def subnet_ip(self) -> ipaddress.IPv4Address | None:
        return self.subnet.network_address if self.subnet is not None else None


@dataclass
class HookContext:
    """Everything about the local node a hook may need. Grows compatibly (keyword use only)."""

    network: ipaddress.IPv4Network | None
    options: dict[str, Any]                       # the Backend object of net-conf.json
    log: logging.Logger
    state_dir: Path
    subnet: ipaddress.IPv4Network | None = None   # our own lease (None before acquisition)
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None
    public_ip: str = ""
    public_ipv6: str | None = None
    iface: str | None = None                      # the external interface name
    iface_mtu: int = 1500
    backend_data: str = ""                        # what our pre_startup returned
    # Dry run: touch nothing in the kernel. Python hooks record what they would send
    # (e.g. netlink requests as dicts) in `recorded` instead of sending it.
    dry_run: bool = False
    recorded: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        """A Backend option, matched case-insensitively as flannel's JSON decoding does."""
        if name in self.options:
            return self.options[name]
        low = name.lower()
        for key, value in self.options.items():
            if key.lower() == low:
                return value
        return default


class Hook:
    """Base class for a dataplane. Override the lifecycle methods you need.

    Class attributes:
      * ``description``: one line shown by ``flannel-ext recipes``.
      * ``backend_type``: the BackendType advertised in our lease ("extension").
      * ``accepts_backend_types``: remote lease types this hook programs; others are
        skipped with a log line, as flannel does.
    """

    description: ClassVar[str] = ""
    backend_type: ClassVar[str] = "extension"
    accepts_backend_types: ClassVar[tuple[str, ...]] = ("extension",)

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = dict(options or {})

    # --- the five lifecycle hooks -------------------------------------------------
    def pre_startup(self, ctx: HookContext) -> str | None:
        """Before the lease: return this node's backend data (e.g. a VTEP MAC), or None."""
        return None

    def post_startup(self, ctx: HookContext) -> None:
        """After the lease: ctx.subnet and ctx.public_ip are set."""

    def subnet_add(self, lease: RemoteLease, ctx: HookContext) -> None:
        """Program the kernel for a remote node's lease. Must be idempotent."""

    def subnet_remove(self, lease: RemoteLease, ctx: HookContext) -> None:
        """Undo `subnet_add` for this lease (it carries the data that was added)."""

    def shutdown(self, ctx: HookContext) -> None:
        """On SIGTERM/SIGINT: tear down what pre/post_startup created."""

    # --- batches: override to program many leases in one go ----------------------
    def subnet_add_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        """Add many leases; raise BatchError naming only the failed ones."""
        _each(self.subnet_add, leases, ctx)

    def subnet_remove_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        """Remove many leases; raise BatchError naming only the failed ones."""
        _each(self.subnet_remove, leases, ctx)

    # --- data and MTU ------------------------------------------------------------
    def parse_backend_data(self, lease: RemoteLease) -> Any:
        """Turn a remote lease's backend data into `lease.data`; raise ValueError to reject."""
        return lease.backend_data

    def mtu(self, ctx: HookContext) -> int | None:
        """The pod MTU this dataplane needs (FLANNEL_MTU); None means the interface MTU."""
        value = ctx.option("MTU")
        return int(value) if value else None


def _each(method, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
    failures: dict[str, BaseException] = {}
    for lease in leases:
        try:
            method(lease, ctx)
        except Exception as exc:  # noqa: BLE001 - reported per lease to the runtime
            failures[lease.key] = exc
    if failures:
        raise BatchError(failures)


def decode_backend_data(raw: str | None) -> Any:
    """The JSON value of raw backend data (None when absent)."""
    return None if raw is None else json.loads(raw)
