"""The shell hook: flannel's extension commands from net-conf.json, run safely.

Commands run as ``sh -c "<command>"`` (the semantics every documented recipe relies on,
which flannel ≥ v0.28.2 broke). The command text comes only from the local config file;
values from other nodes' leases travel only in environment variables and stdin, so no
remote value can ever become shell code.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence

from flannel_ext._util.errors import BatchError, CommandError, HookTimeout
from flannel_ext._config.netconf import NetConf
from flannel_ext._hooks.base import COMMAND_NAMES, Hook, HookContext, RemoteLease
from flannel_ext._hooks.process import ProcessResult, run_process

OUTPUT_LIMIT = 4096  # bytes of output kept for logs and traces


def lifecycle_env(ctx: HookContext) -> dict[str, str]:
    """PostStartup's variables: flannel's set (§2.2); unset IPv6 values are empty, not '<nil>'."""
    return {
        "NETWORK": str(ctx.network) if ctx.network else "",
        "SUBNET": str(ctx.subnet) if ctx.subnet else "",
        "IPV6SUBNET": str(ctx.ipv6_subnet) if ctx.ipv6_subnet else "",
        "PUBLIC_IP": ctx.public_ip or "",
        "PUBLIC_IPV6": ctx.public_ipv6 or "",
    }


def remote_env(lease: RemoteLease) -> dict[str, str]:
    """SubnetAdd/Remove variables: flannel's SUBNET and PUBLIC_IP, plus the IPv6 pair (#1501)."""
    return {
        "SUBNET": str(lease.subnet) if lease.subnet else "",
        "PUBLIC_IP": lease.public_ip,
        "IPV6SUBNET": str(lease.ipv6_subnet) if lease.ipv6_subnet else "",
        "PUBLIC_IPV6": lease.public_ipv6 or "",
    }


class ShellHook(Hook):
    """Runs the five *Command strings of the Backend object with `sh -c`."""

    description = "shell commands from net-conf.json (flannel's extension backend)"
    runs_commands = True   # traces and times out each process itself
    max_parallel = 16      # concurrent commands across different subnets in one batch

    def __init__(self, commands: dict[str, str], options: dict | None = None, *, timeout: float = 30.0,
                 shell: str = "/bin/sh"):
        super().__init__(options)
        self.commands = {k: v for k, v in commands.items() if v}
        self.timeout = timeout
        self.shell = shell
        self.tracer: Callable[[str, str, ProcessResult], None] | None = None

    @classmethod
    def from_config(cls, config: NetConf, **kwargs) -> ShellHook:
        commands = {method: config.backend_option(name) or "" for method, name in COMMAND_NAMES.items()}
        return cls(commands, dict(config.backend), **kwargs)

    # --- running -----------------------------------------------------------------
    def _run(self, method: str, ctx: HookContext, extra_env: dict[str, str], stdin: str,
             subnet: str = "") -> ProcessResult | None:
        command = self.commands.get(method)
        name = COMMAND_NAMES[method]
        if not command:
            return None
        env = dict(os.environ)
        env.update(extra_env)
        env["FLANNEL_IFACE"] = ctx.iface or ""
        argv = [self.shell, "-c", command]
        if ctx.dry_run:
            shown = " ".join(f"{k}={v}" for k, v in sorted(extra_env.items()))
            result = ProcessResult(argv, 0, "", f"(dry run) {shown} sh -c {command!r} <<< {stdin!r}", 0.0)
            if self.tracer:
                self.tracer(name, subnet, result)
            return result
        os.makedirs(ctx.state_dir, exist_ok=True)
        result = run_process(argv, env=env, cwd=str(ctx.state_dir), stdin=stdin, timeout=self.timeout)
        result.stdout, result.stderr = result.stdout[-OUTPUT_LIMIT:], result.stderr[-OUTPUT_LIMIT:]
        if self.tracer:
            self.tracer(name, subnet, result)
        if result.timed_out:
            raise HookTimeout(name, self.timeout, subnet=subnet, argv=argv, output=result.stdout + result.stderr)
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
        self._run("subnet_add", ctx, remote_env(lease), lease.backend_data + "\n", lease.key)

    def subnet_remove(self, lease: RemoteLease, ctx: HookContext) -> None:
        self._run("subnet_remove", ctx, remote_env(lease), lease.backend_data + "\n", lease.key)

    def shutdown(self, ctx: HookContext) -> None:
        self._run("shutdown", ctx, lifecycle_env(ctx), "\n")

    # Batches: bounded parallelism across subnets (the runtime never puts two events
    # for one subnet in a batch, so per-subnet order is kept).
    def subnet_add_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._parallel(self.subnet_add, leases, ctx)

    def subnet_remove_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._parallel(self.subnet_remove, leases, ctx)

    def _parallel(self, method, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
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
