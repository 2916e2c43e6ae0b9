"""`flannel-ext hook NAME`: run one hook by hand, exactly as the runtime would.

Prints the environment, stdin, a shell-quoted command line that can be pasted to run
the hook by hand, then the output, exit code and duration. `--dry-run` prints what would
run and runs nothing (Python hooks list the requests they would send).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import shlex
import sys
from pathlib import Path

from flannel_ext._util.errors import ConfigError
from flannel_ext._config.netconf import COMMAND_FIELDS, load_netconf
from flannel_ext._hooks.base import HookContext
from flannel_ext._hooks.loader import load_hook
from flannel_ext._hooks.shell import ShellHook, lifecycle_env, pasteable, remote_env
from flannel_ext._runtime.calls import HookCaller
from flannel_ext._runtime.iface import ExternalInterface, find_interface
from flannel_ext._runtime.stats import HookCall, NodeStats
from flannel_ext._runtime.validate import RejectedLease, Skipped, to_remote
from flannel_ext._stores.lease import Lease, LeaseAttrs

# Accept flannel's names, with or without "Command", and the Python method names,
# in any case and with or without "-"/"_" (all folded away before the lookup).
_NAMES = {}
for _method, _command in COMMAND_FIELDS.items():
    for _alias in (_command, _command[:-len("Command")], _method.replace("_", "")):
        _NAMES[_alias.lower()] = _method


def register(subparsers) -> None:
    p = subparsers.add_parser("hook", help="run one hook by hand, as the runtime would",
                              description=__doc__.splitlines()[0])
    p.add_argument("name", help="PreStartup, PostStartup, SubnetAdd, SubnetRemove or Shutdown")
    p.add_argument("--net-conf", required=True, metavar="FILE")
    p.add_argument("--subnet", help="the remote (SubnetAdd/Remove) or own (PostStartup/Shutdown) subnet")
    p.add_argument("--public-ip", help="the remote or own public IP")
    p.add_argument("--ipv6-subnet")
    p.add_argument("--public-ipv6")
    p.add_argument("--backend-data", default="", help="the remote node's backend data (stdin)")
    p.add_argument("--iface", help="external interface (default: the default route's)")
    p.add_argument("--state-dir", default=".", help="working directory of the hook (default: here)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--dry-run", action="store_true", help="print what would run; touch nothing")
    p.set_defaults(func=run_hook)


def _interface(args) -> ExternalInterface:
    try:
        return find_interface(args.iface, args.public_ip)
    except ConfigError:
        if args.iface:
            raise
        return ExternalInterface("", args.public_ip or "", 1500)  # a hook may not need one


def run_hook(args) -> int:
    method = _NAMES.get(args.name.lower().replace("-", "").replace("_", ""))
    if method is None:
        raise ConfigError("hook", None, args.name, "unknown hook",
                          "use PreStartup, PostStartup, SubnetAdd, SubnetRemove or Shutdown")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = load_netconf(args.net_conf)
    hook = load_hook(config)
    iface = _interface(args)
    subnet = ipaddress.IPv4Network(args.subnet) if args.subnet else None
    ctx = HookContext(network=config.network, ipv6_network=config.ipv6_network, options=dict(config.backend),
                      log=logging.getLogger("flannel_ext.hook"), state_dir=Path(args.state_dir).resolve(),
                      iface=iface.name or None, iface_mtu=iface.mtu, dry_run=args.dry_run)
    remote = None
    if method in ("subnet_add", "subnet_remove"):
        if subnet is None or not args.public_ip:
            raise ConfigError("hook", "--subnet/--public-ip", None, f"{args.name} needs the remote lease",
                              "pass --subnet CIDR --public-ip IP [--backend-data STR]")
        lease = Lease(subnet, LeaseAttrs.with_string_data(args.public_ip, args.backend_data or None,
                                                          public_ipv6=args.public_ipv6),
                      ipaddress.IPv6Network(args.ipv6_subnet) if args.ipv6_subnet else None)
        try:
            remote = to_remote(lease, config, hook)
        except RejectedLease as exc:
            print(f"rejected: {exc}  (the runtime would count this lease and never run a hook)")
            return 1
        except Skipped as exc:
            print(f"skipped: {exc}")
            return 1
        env, stdin = remote_env(remote), remote.backend_data + "\n"
    else:
        ctx.subnet, ctx.public_ip = subnet, args.public_ip or iface.address
        ctx.ipv6_subnet = ipaddress.IPv6Network(args.ipv6_subnet) if args.ipv6_subnet else None
        ctx.public_ipv6 = args.public_ipv6
        env = lifecycle_env(ctx) if method in ("post_startup", "shutdown") else {}
        stdin = "\n"

    env["FLANNEL_IFACE"] = ctx.iface or ""    # what the shell hook adds to every command
    shell = hook if isinstance(hook, ShellHook) else None
    kind = "shell" if hook.runs_commands else f"python {type(hook).__module__}.{type(hook).__name__}"
    print(f"hook:      {COMMAND_FIELDS[method]} ({kind})")
    print("env:       (added to this shell's environment)")
    for key, value in env.items():
        print(f"  {key}={shlex.quote(value)}")
    print(f"stdin:     {stdin!r}")
    if shell:
        if not shell.has(method):
            print("command:   (none configured)")
            return 0
        print("command:   (paste into a shell to run it by hand)")
        print("  " + pasteable(shell.shell, shell.commands[method], env, stdin, str(ctx.state_dir)))
        if args.dry_run:
            print("dry run:   nothing was run")
            return 0
    return _call(hook, ctx, method, remote, args)


def _call(hook, ctx: HookContext, method: str, remote, args) -> int:
    """Run the hook through the runtime's caller and print what happened."""
    calls: list[HookCall] = []
    stats = NodeStats()
    stats.add_monitor(calls.append)
    caller = HookCaller(hook, ctx, stats, default_timeout=args.timeout)
    error = None
    result = None
    try:
        if remote is not None:
            results = caller.apply(method.split("_", 1)[1], [remote])
            error = results[remote.key]
        else:
            result = caller.lifecycle(method)
    except Exception as exc:  # noqa: BLE001 - a hook may raise anything: shown as one line
        error = exc
    finally:
        caller.close()
    if not args.dry_run:     # a dry run ran nothing: no exit code, no duration
        for call in calls:
            rc = "-" if call.returncode is None else call.returncode
            print(f"exit code: {rc}{'' if call.ok else '  (failed)'}")
            print(f"duration:  {call.duration:.3f}s")
            if call.output:
                print("output:\n  " + call.output.replace("\n", "\n  "))
    if result is not None:
        print(f"returned:  {result!r}")
    if ctx.recorded:
        print("would send:")
        for item in ctx.recorded:
            print("  " + (json.dumps(item, default=str) if not isinstance(item, str) else item))
    if args.dry_run:
        print("dry run:   nothing was changed")
    if error is not None:
        print(f"error:     {error}", file=sys.stderr)
        return 1
    return 0
