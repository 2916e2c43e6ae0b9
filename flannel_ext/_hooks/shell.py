"""The shell hook: flannel's extension commands from net-conf.json, run safely.

Commands run as ``sh -c "<command>"`` (the semantics every documented recipe relies on,
which flannel ≥ v0.28.2 broke). The command text comes only from the local config file;
values from other nodes' leases travel only in environment variables and stdin, so no
remote value can ever become shell code.
"""
from __future__ import annotations

import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from typing import Any

from flannel_ext._util.errors import BatchError, CommandError, HookTimeout
from flannel_ext._util.neigh import PeerCount
from flannel_ext._config.netconf import COMMAND_FIELDS, NetConf
from flannel_ext._hooks.base import Hook, HookContext, RemoteLease
from flannel_ext._hooks.process import ProcessResult, run_process


#: The variables each command gets on top of the daemon's environment: the one list (lint
#: declares exactly these to shellcheck, and knows the remote ones come from other nodes).
LIFECYCLE_VARS = ("NETWORK", "SUBNET", "IPV6SUBNET", "PUBLIC_IP", "PUBLIC_IPV6")
REMOTE_VARS = ("SUBNET", "PUBLIC_IP", "IPV6SUBNET", "PUBLIC_IPV6")
IFACE_VAR = "FLANNEL_IFACE"
COMMAND_VARS = {
    "PreStartupCommand": (IFACE_VAR,),
    "PostStartupCommand": LIFECYCLE_VARS + (IFACE_VAR,),
    "SubnetAddCommand": REMOTE_VARS + (IFACE_VAR,),
    "SubnetRemoveCommand": REMOTE_VARS + (IFACE_VAR,),
    "ShutdownCommand": LIFECYCLE_VARS + (IFACE_VAR,),
}


def lifecycle_env(ctx: HookContext) -> dict[str, str]:
    """PostStartup's variables: flannel's set (Documentation/flanneld.md); unset IPv6 values are empty, not '<nil>'."""
    return dict(zip(LIFECYCLE_VARS, (
        str(ctx.network) if ctx.network else "",
        str(ctx.subnet) if ctx.subnet else "",
        str(ctx.ipv6_subnet) if ctx.ipv6_subnet else "",
        ctx.public_ip or "",
        ctx.public_ipv6 or "",
    ), strict=True))


def remote_env(lease: RemoteLease) -> dict[str, str]:
    """SubnetAdd/Remove variables: flannel's SUBNET and PUBLIC_IP, plus the IPv6 pair (#1501)."""
    return dict(zip(REMOTE_VARS, (
        str(lease.subnet) if lease.subnet else "",
        lease.public_ip,
        str(lease.ipv6_subnet) if lease.ipv6_subnet else "",
        lease.public_ipv6 or "",
    ), strict=True))


def pasteable(shell: str, command: str, env: dict[str, str], stdin: str, cwd: str) -> str:
    """One line that runs `command` by hand as the runtime would: in `cwd`, with `env`
    added to the caller's environment and `stdin` on standard input (shell-quoted)."""
    data = stdin[:-1] if stdin.endswith("\n") else stdin
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (f"(cd {shlex.quote(cwd)} && printf '%s\\n' {shlex.quote(data)} | "
            f"env {assigns} {shlex.quote(shell)} -c {shlex.quote(command)})")


class ShellHook(Hook):
    """Runs the five *Command strings of the Backend object with `sh -c`."""

    description = "shell commands from net-conf.json (flannel's extension backend)"
    runs_commands = True       # kills each process at ctx.call_timeout and traces it itself
    max_concurrent_calls = 4   # each command is its own process: batches may overlap
    max_parallel = 16          # concurrent commands across different subnets in one batch

    def __init__(self, commands: dict[str, str], options: dict | None = None, *,
                 timeout: float | None = None, shell: str = "/bin/sh"):
        super().__init__(options)
        self.commands = {k: v for k, v in commands.items() if v}
        self.timeout = timeout
        self.shell = shell
        # flannel's vxlan and host-gw recipes reach every peer on the underlay: warn once
        # as the peers near the neighbour table's limit, as the Python vxlan recipe does.
        self.peers = PeerCount("SubnetAddCommand")

    @classmethod
    def from_config(cls, config: NetConf, **kwargs: Any) -> ShellHook:
        commands = {method: config.commands.get(name, "") for method, name in COMMAND_FIELDS.items()}
        return cls(commands, dict(config.backend), **kwargs)

    # --- running -----------------------------------------------------------------
    def _run(self, method: str, ctx: HookContext, extra_env: dict[str, str], stdin: str,
             subnet: str = "") -> ProcessResult | None:
        command = self.commands.get(method)
        name = COMMAND_FIELDS[method]
        if not command:
            return None
        env = dict(os.environ)
        env.update(extra_env)
        env[IFACE_VAR] = ctx.iface or ""
        argv = [self.shell, "-c", command]
        if ctx.dry_run:
            shown = pasteable(self.shell, command, {**extra_env, "FLANNEL_IFACE": env["FLANNEL_IFACE"]},
                              stdin, str(ctx.state_dir))
            result = ProcessResult(argv, 0, "", f"(dry run) {shown}", 0.0)
            ctx.trace_command(name, subnet, result)
            return result
        os.makedirs(ctx.state_dir, exist_ok=True)
        result = run_process(argv, env=env, cwd=str(ctx.state_dir), stdin=stdin, timeout=ctx.call_timeout)
        ctx.trace_command(name, subnet, result)
        if result.timed_out:
            raise HookTimeout(name, ctx.call_timeout, subnet=subnet, argv=argv,
                              output=result.stdout + result.stderr)
        if result.returncode != 0:
            raise CommandError(argv, result.returncode, result.stdout, stderr=result.stderr, hook=name,
                               subnet=subnet)
        return result

    # --- the lifecycle -----------------------------------------------------------
    def pre_startup(self, ctx: HookContext) -> str | None:
        # flannel mixes stderr into BackendData (CombinedOutput); we keep only stdout.
        result = self._run("pre_startup", ctx, {}, "\n")
        if result is None:
            ctx.log.info("No pre startup command configured - skipping")
            return None
        if result.stderr.strip():
            ctx.log.info("PreStartupCommand stderr: %s", result.stderr.strip())
        return result.stdout.strip() or None

    def post_startup(self, ctx: HookContext) -> None:
        if self._run("post_startup", ctx, lifecycle_env(ctx), "\n") is None:
            ctx.log.info("No post startup command configured - skipping")

    def subnet_add(self, lease: RemoteLease, ctx: HookContext) -> None:
        if self._run("subnet_add", ctx, remote_env(lease), lease.backend_data + "\n", lease.key) \
                is not None and not ctx.dry_run:
            self.peers.added(lease.key, ctx.log.warning)

    def subnet_remove(self, lease: RemoteLease, ctx: HookContext) -> None:
        self._run("subnet_remove", ctx, remote_env(lease), lease.backend_data + "\n", lease.key)
        self.peers.removed(lease.key)

    def shutdown(self, ctx: HookContext) -> None:
        self._run("shutdown", ctx, lifecycle_env(ctx), "\n")

    # Batches: bounded parallelism across subnets (the runtime never puts two events
    # for one subnet in a batch, so per-subnet order is kept).
    def subnet_add_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._parallel(self.subnet_add, leases, ctx)

    def subnet_remove_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._parallel(self.subnet_remove, leases, ctx)

    def _parallel(self, method: Callable[[RemoteLease, HookContext], None], leases: Sequence[RemoteLease],
                  ctx: HookContext) -> None:
        if len(leases) <= 1:
            for lease in leases:
                method(lease, ctx)
            return
        failures: dict[str, BaseException] = {}

        def one(lease):
            try:
                method(lease, ctx)
            except Exception as exc:  # noqa: BLE001 - reported per lease
                failures[lease.key] = exc

        with ThreadPoolExecutor(min(self.max_parallel, len(leases))) as pool:
            list(pool.map(one, leases))
        if failures:
            raise BatchError(failures)

    def has(self, method: str) -> bool:
        return method in self.commands
