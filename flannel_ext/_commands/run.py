"""`flannel-ext run`: the node daemon (flanneld with the extension backend, done properly)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal

from flannel_ext._version import __version__
from flannel_ext._config import paths
from flannel_ext._util.errors import ConfigError
from flannel_ext._config.netconf import load_netconf, parse_netconf
from flannel_ext._hooks.loader import load_hook
from flannel_ext._runtime import subnetenv
from flannel_ext._runtime.dispatch import Backoff
from flannel_ext._runtime.iface import check_ip, find_interface
from flannel_ext._runtime.node import NodeOptions, NodeRuntime
from flannel_ext._stores import open_store
from flannel_ext._commands import flags, logs, store_args
from flannel_ext._commands.store_args import store_options, store_url

log = logging.getLogger("flannel_ext.run")



# flanneld flags that configure what flannel-ext does another way (or not at all).
IGNORED = {
    "iptables-resync": ("the --ip-masq rules are one nftables table, replaced atomically", False),
    "iptables-forward-rules": ("the --ip-masq table always accepts forwarding for the Network", True),
    "ip-blackhole-route": ("not implemented; a hook can add the route", True),
    "vmodule": ("klog's per-module verbosity; use -v or --log-level", False),
    "log_backtrace_at": ("klog's backtraces; Python logs its own", False),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run the node daemon",
        description="Lease a subnet, run the lifecycle hooks from net-conf.json, write subnet.env "
                    "and keep every other node's subnet programmed.")
    g = config_group = p.add_argument_group("configuration")
    g.add_argument("--net-conf", "--net-config-path", dest="net_conf", default=None, metavar="FILE",
                   help="net-conf.json (default: the store's config for etcd, else "
                        f"{paths.NET_CONF})")
    g.add_argument("--state-dir", default=paths.STATE_DIR, metavar="DIR",
                   help="hook working directory, programmed-state file and stats (default %(default)s)")
    g.add_argument("--subnet-file", default=paths.SUBNET_FILE, metavar="FILE",
                   help="where to write subnet.env (default %(default)s)")
    g = p.add_argument_group("interface (tried in this order, as flanneld)")
    g.add_argument("--iface", action="append", default=[], metavar="NAME|IP",
                   help="external interface by name or address; repeat to give fallbacks in order")
    g.add_argument("--iface-regex", action="append", default=[], metavar="REGEX",
                   help="external interface whose address, else name, matches; repeatable")
    g.add_argument("--iface-can-reach", default=None, metavar="IP",
                   help="the interface of the route to this address")
    g.add_argument("--public-ip", default=None, help="address to advertise (default: the interface's)")
    g.add_argument("--public-ipv6", default=None, help="IPv6 address to advertise")
    g = p.add_argument_group("hooks")
    g.add_argument("--hook-timeout", type=flags.number(float, unit="seconds", positive=True), default=30.0,
                   metavar="SECONDS",
                   help="kill a hook (its whole process group) after this long (default %(default)s)")
    g.add_argument("--hook-retries", type=flags.number(int, 0), default=10, metavar="N",
                   help="tries per SubnetAdd/Remove change before giving up, 0 = forever (default %(default)s)")
    g.add_argument("--hook-backoff", type=flags.number(float, 0, unit="seconds"), default=0.5,
                   metavar="SECONDS", help="first retry delay; doubles up to 30 s (default %(default)s)")
    g.add_argument("--startup-retries", type=flags.number(int, 1), default=5, metavar="N",
                   help="tries for PreStartup/PostStartup/lease before exiting with code 3 (default %(default)s)")
    g.add_argument("--dry-run", action=flags.GoBool,
                   help="trace one pass of the lifecycle against the store; write nothing anywhere")
    g.add_argument("--watch", action=flags.GoBool,
                   help="hot reload: re-run the lifecycle when net-conf.json or a Python hook changes")
    g = p.add_argument_group("lease")
    g.add_argument("--subnet-lease-renew-margin", type=flags.number(int, 1, 1439, unit="minutes"),
                   default=60, metavar="MINUTES",
                   help="renew the lease this long before it expires (1..1439, default %(default)s)")
    g.add_argument("--subnet-lease-ttl", type=flags.number(float, 1, unit="seconds"), default=86400.0,
                   metavar="SECONDS", help="lease lifetime (flannel: 24 h; short values are for tests)")
    g.add_argument("--release-lease-on-exit", action=flags.GoBool,
                   help="release the lease on SIGTERM so other nodes run SubnetRemove (flannel keeps it)")
    g = store_args.add_store_arguments(p, main=config_group)      # returns the kubernetes group
    g.add_argument("--set-node-network-unavailable", action=flags.GoBool, default=True,
                   help="set the node's NetworkUnavailable condition to False when up (default true)")
    g = p.add_argument_group("operations")
    g.add_argument("--ip-masq", action=flags.GoBool, help="masquerade pod traffic leaving the network")
    g.add_argument("--ip-masq-fully-random-disable", action=flags.GoBool,
                   help="do not use fully-random port mapping for masquerade")
    g.add_argument("--healthz-ip", default="0.0.0.0", metavar="IP",
                   help="address for /healthz, /readyz, /metrics (default %(default)s)")
    g.add_argument("--healthz-port", type=flags.number(int, 0, 65535), default=0, metavar="PORT",
                   help="serve /healthz, /readyz, /metrics (0 = off, the default)")
    g.add_argument("--log-format", type=flags.choice("text", "json", fold=str.lower), default="text",
                   metavar="{text,json}", help="log line format (default %(default)s)")
    g.add_argument("--log-level", type=flags.choice(*LOG_LEVELS), default=None,
                   metavar="{debug,info,warning,error}", help="(default info, or debug with -v 1 and up)")
    g.add_argument("-v", dest="verbosity", type=flags.number(int, 0), default=0, metavar="LEVEL",
                   help="klog verbosity, as flanneld's: 0 logs info, 1 and up debug")
    g.add_argument("--version", action="version", version=f"flannel-ext {__version__}",
                   help="print the version and exit")
    g = p.add_argument_group("network policy")
    g.add_argument("--policy", default=None, metavar="HOOK",
                   help="enforce NetworkPolicy with this policy hook: nftables, log, module:Class, "
                        "file.py:Class or a name from the flannel_ext.policies entry points")
    g.add_argument("--policy-source", default=None, metavar="SOURCE",
                   help="where pods, namespaces and policies come from: file:PATH or kube "
                        "(default kube with the kube store; required otherwise)")
    g = p.add_argument_group("flanneld flags accepted and ignored (one warning each)")
    for name, (reason, boolean) in IGNORED.items():
        g.add_argument(f"--{name}", action=flags.IgnoredFlag, reason=reason, boolean=boolean)
    flags.flanneld_style(p)
    p.set_defaults(func=run)


def _check_subnets(args) -> bool:
    # kube mode takes PodCIDRs; flannel never checks SubnetLen/Min/Max there
    return store_url(args) != "kube"


def load_config(args, store=None):
    """net-conf.json from --net-conf, else the store's own config (etcd), as flanneld does."""
    check = _check_subnets(args)
    if args.net_conf:
        return load_netconf(args.net_conf, check_subnets=check)
    text = store.network_config() if store is not None else None
    if text is not None:
        return parse_netconf(text, source=f"{store_url(args)} {args.etcd_prefix}/config", check_subnets=check)
    return load_netconf(paths.NET_CONF, check_subnets=check)


def _check_args(args) -> None:
    if args.watch and not args.net_conf:
        raise ConfigError("--watch", None, None, "needs a file to watch",
                          "pass --net-conf FILE (a config kept in etcd is not watched)")
    if not args.dry_run:
        subnetenv.check_writable(args.subnet_file)
    for flag in ("public_ip", "public_ipv6"):
        if getattr(args, flag):
            check_ip("--" + flag.replace("_", "-"), getattr(args, flag), 6 if flag.endswith("v6") else 4)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if _policy_source(args):   # a bad --policy fails before anything starts
        from flannel_ext._policy.hook import load_policy_hook
        args.policy_hook = load_policy_hook(args.policy)
    level = args.log_level or ("DEBUG" if args.verbosity > 0 else "INFO")
    logs.setup(args.log_format, level, node=args.node_name)
    # A --net-conf file is read before any store is touched, so a bad file fails fast.
    config = load_config(args) if args.net_conf else None
    # A dry run reads the store and writes nothing: not even a new SQLite file.
    from flannel_ext._stores.readonly import open_read_only
    opener = open_read_only if args.dry_run else open_store
    store = opener(store_url(args), **store_options(args))
    try:
        config = config or load_config(args, store)
        hook = load_hook(config)
        iface = find_interface(args.iface, args.public_ip, regexes=args.iface_regex,
                               can_reach=args.iface_can_reach)
        public_ip = args.public_ip or iface.address
        options = NodeOptions(
            subnet_file=args.subnet_file, state_dir=args.state_dir, node_name=args.node_name,
            hook_timeout=args.hook_timeout, startup_attempts=args.startup_retries,
            backoff=Backoff(initial=args.hook_backoff, attempts=args.hook_retries),
            lease_ttl=args.subnet_lease_ttl, renew_margin=args.subnet_lease_renew_margin * 60.0,
            ip_masq=args.ip_masq, release_on_exit=args.release_lease_on_exit,
            public_ipv6=args.public_ipv6 or iface.address6, dry_run=args.dry_run)
        runtime = NodeRuntime(config, store, hook, iface, public_ip, options)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: runtime.request_stop())
        extras = [] if args.dry_run else _operations(args, runtime)
        watcher = _start_reload_watch(args, runtime) if args.watch and not args.dry_run else None
        try:
            return runtime.run()
        finally:
            if watcher:
                watcher.stop()
            for undo in extras:
                undo()
    finally:
        store.close()


def _operations(args, runtime: NodeRuntime) -> list:
    """--ip-masq and --healthz-port: set up once the lease is known; returns undo callables."""
    undo = []
    if args.healthz_port:
        from flannel_ext._runtime.health import HealthServer
        server = HealthServer(runtime.stats, host=args.healthz_ip, port=args.healthz_port)
        server.start()
        undo.append(server.stop)
    if args.policy:
        undo.append(_start_policy(args))
    if args.ip_masq:
        from flannel_ext._runtime import ipmasq

        def masq(rt):
            v4, v6 = rt.config.enable_ipv4, rt.config.enable_ipv6
            ipmasq.setup_ip_masq(rt.config.network if v4 else None, rt.ctx.subnet if v4 else None,
                                 ipv6_network=rt.config.ipv6_network if v6 else None,
                                 ipv6_subnet=rt.ctx.ipv6_subnet if v6 else None,
                                 fully_random=not args.ip_masq_fully_random_disable)
        runtime.on_ready.append(masq)
        undo.append(ipmasq.teardown_ip_masq)
    return undo


def _policy_source(args) -> str | None:
    """--policy-source, defaulting to kube for the kube store; checked before start-up."""
    if not args.policy:
        if args.policy_source:
            raise ConfigError("--policy-source", None, None, "needs --policy", "add e.g. --policy nftables")
        return None
    source = args.policy_source or ("kube" if store_url(args) == "kube" else None)
    if source is None:
        raise ConfigError("--policy", None, None, "needs --policy-source with this store",
                          "pass --policy-source file:PATH or --policy-source kube")
    from flannel_ext._policy.agent import parse_source
    parse_source(source)
    return source


def _start_policy(args):
    from flannel_ext._policy.agent import start_agent
    kube = {"kubeconfig": args.kubeconfig_file, "api_url": args.kube_api_url}
    source = _policy_source(args)
    assert source is not None   # _operations calls this only with --policy
    return start_agent(args.policy_hook, source, args.node_name, args.state_dir, kube)


def _start_reload_watch(args, runtime: NodeRuntime):
    from flannel_ext._runtime.reload import ReloadWatcher

    def load():
        config = load_config(args)
        return config, load_hook(config)
    runtime.reload_source = load
    watcher = None
    try:
        watcher = ReloadWatcher(args.net_conf, runtime)   # its observer takes an inotify instance
        watcher.start()
    except OSError as exc:   # inotify limits: the node runs on, without hot reload
        log.warning("--watch: cannot watch %s (%s); hot reload is off, the node runs on: raise "
                    "fs.inotify.max_user_instances / max_user_watches and restart to get it back",
                    args.net_conf, exc)
        if watcher is not None:
            with contextlib.suppress(Exception):
                watcher.stop()
        return None
    return watcher
