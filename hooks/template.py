"""A commented template for a flannel-ext dataplane: copy it, rename the class, fill it in.

Select it in net-conf.json (the path is relative to the net-conf file)::

    {"Network": "10.50.0.0/16",
     "Backend": {"Type": "extension", "Hook": "hooks/template.py:TemplateHook", "Greeting": "hi"}}

Every Backend key other than Type/Hook reaches the hook as an option (``self.options`` and
``ctx.option("Greeting")``, case-insensitive). Methods you do not define keep the base
class's behaviour (do nothing). Public methods must be hook names: a typo such as
``subnet_added`` is refused at load time, so name helpers with a leading underscore.

Errors: raise ``TemporaryError("why", delay=5)`` to be retried, ``PermanentError("why")`` to
give up on this call; any other exception is retried with backoff.
"""
from __future__ import annotations

from collections.abc import Sequence

from flannel_ext import Hook, HookContext, PermanentError, RemoteLease


class TemplateHook(Hook):
    # One line for `flannel-ext recipes` and the logs.
    description = "Template: logs every call and programs nothing"

    def __init__(self, options):
        # `options` is the Backend object of net-conf.json. Validate it here: an exception
        # raised now is reported at load time as a one-line error naming this hook.
        super().__init__(options)
        self.greeting = str(self.options.get("Greeting", "hello"))

    def pre_startup(self, ctx: HookContext) -> str | None:
        # Before our lease exists. ctx.network, ctx.iface (external interface),
        # ctx.iface_mtu, ctx.public_ip, ctx.state_dir, ctx.log are set; ctx.subnet is None.
        # Return this node's backend data (a string, e.g. a VTEP MAC or a public key); the
        # other nodes receive it as lease.backend_data. None means no data.
        ctx.log.info("%s: pre_startup on %s (%s)", self.greeting, ctx.iface, ctx.public_ip)
        return None

    def post_startup(self, ctx: HookContext) -> None:
        # Our lease exists: ctx.subnet (e.g. 10.50.3.0/24) and ctx.backend_data are set.
        # Create devices and addresses here; subnet.env is written after this returns.
        ctx.log.info("post_startup: our subnet is %s", ctx.subnet)

    def subnet_add(self, lease: RemoteLease, ctx: HookContext) -> None:
        # Another node's lease appeared or changed. lease.subnet, lease.public_ip,
        # lease.ipv6_subnet, lease.public_ipv6, lease.backend_data (the string),
        # lease.backend_data_raw (the stored JSON), lease.data (parse_backend_data's result)
        # and lease.key ("10.50.3.0-24"). Called again for the same lease after restarts and
        # renewals: use replace semantics so a re-run changes nothing.
        ctx.log.info("subnet_add %s via %s", lease.subnet, lease.public_ip)

    def subnet_remove(self, lease: RemoteLease, ctx: HookContext) -> None:
        # The lease went away, or changed: then it carries the *old* data, and subnet_add
        # follows with the new. Deleting something already gone must not fail.
        ctx.log.info("subnet_remove %s", lease.subnet)

    def subnet_add_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        # Many leases at once (a node joining a big cluster). The default loops over
        # subnet_add; override to program them in one go, and raise BatchError({key: exc})
        # naming only the leases that failed.
        super().subnet_add_batch(leases, ctx)

    def subnet_remove_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        super().subnet_remove_batch(leases, ctx)

    def shutdown(self, ctx: HookContext) -> None:
        # SIGTERM/SIGINT: undo what pre/post_startup created (flannel itself never does).
        ctx.log.info("shutdown")

    def parse_backend_data(self, lease: RemoteLease):
        # Turn a remote lease's data into lease.data; raise ValueError to reject the lease
        # (it is logged and counted, never programmed).
        if "\n" in lease.backend_data:
            raise ValueError("backend data must be one line")
        return lease.backend_data

    def mtu(self, ctx: HookContext) -> int | None:
        # The pod MTU written as FLANNEL_MTU: subtract your encapsulation overhead.
        # None means the interface MTU. The default honours a Backend "MTU" option.
        mtu = super().mtu(ctx)
        if mtu is not None and mtu < 576:
            raise PermanentError(f"MTU {mtu} is too small")
        return mtu
