"""`flannel-ext run`: the node daemon (flanneld with the extension backend, done properly)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket

from flannel_ext._util.errors import ConfigError
from flannel_ext._config.netconf import load_netconf, parse_netconf
from flannel_ext._hooks.loader import load_hook
from flannel_ext._runtime.dispatch import Backoff
from flannel_ext._runtime.iface import check_ip, find_interface
from flannel_ext._runtime.node import NodeOptions, NodeRuntime
from flannel_ext._stores import open_store
from flannel_ext._commands import flags, logs

log = logging.getLogger("flannel_ext.run")

DEFAULT_STORE = "sqlite:/var/lib/flannel-ext/leases.db"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run the node daemon",
        description="Lease a subnet, run the lifecycle hooks from net-conf.json, write subnet.env "
                    "and keep every other node's subnet programmed. Every flag also reads "
                    "FLANNELD_<FLAG> from the environment when not given.")
    g = p.add_argument_group("configuration")
    g.add_argument("--net-conf", "--net-config-path", dest="net_conf", default=None, metavar="FILE",
                   help="net-conf.json (default: the store's config for etcd, else "
                        "/etc/kube-flannel/net-conf.json)")
    g.add_argument("--store", default=None, metavar="URL",
                   help=f"lease store: sqlite:PATH, etcd://HOST:PORT[,…] or kube (default {DEFAULT_STORE})")
    g.add_argument("--state-dir", default="/var/lib/flannel-ext", metavar="DIR",
                   help="hook working directory, programmed-state file and stats (default %(default)s)")
    g.add_argument("--subnet-file", default="/run/flannel/subnet.env", metavar="FILE",
                   help="where to write subnet.env (default %(default)s)")
    g.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   help="this node's name (default $NODE_NAME or the hostname)")
    g = p.add_argument_group("interface")
    g.add_argument("--iface", default=None, help="external interface, by name or address")
    g.add_argument("--public-ip", default=None, help="address to advertise (default: the interface's)")
    g.add_argument("--public-ipv6", default=None, help="IPv6 address to advertise")
    g = p.add_argument_group("hooks")
    g.add_argument("--hook-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="kill a hook (its whole process group) after this long (default %(default)s)")
    g.add_argument("--hook-retries", type=int, default=10, metavar="N",
                   help="tries per SubnetAdd/Remove change before giving up, 0 = forever (default %(default)s)")
    g.add_argument("--hook-backoff", type=float, default=0.5, metavar="SECONDS",
                   help="first retry delay; doubles up to 30 s (default %(default)s)")
    g.add_argument("--startup-retries", type=int, default=5, metavar="N",
                   help="tries for PreStartup/PostStartup/lease before exiting with code 3 (default %(default)s)")
    g.add_argument("--dry-run", action="store_true",
                   help="trace one pass of the lifecycle against the store; change nothing")
    g.add_argument("--watch", action="store_true",
                   help="hot reload: re-run the lifecycle when net-conf.json or a Python hook changes")
    g = p.add_argument_group("lease")
    g.add_argument("--subnet-lease-renew-margin", type=int, default=60, metavar="MINUTES",
                   help="renew the lease this long before it expires (1..1439, default %(default)s)")
    g.add_argument("--subnet-lease-ttl", type=float, default=86400.0, metavar="SECONDS",
                   help="lease lifetime (flannel: 24 h; short values are for tests)")
    g.add_argument("--release-lease-on-exit", action="store_true",
                   help="release the lease on SIGTERM so other nodes run SubnetRemove (flannel keeps it)")
    g = p.add_argument_group("etcd store (flanneld's flags)")
    g.add_argument("--etcd-endpoints", default=None, help="comma list of http(s)://host:port")
    g.add_argument("--etcd-prefix", default="/coreos.com/network")
    for name in ("keyfile", "certfile", "cafile", "username", "password"):
        g.add_argument(f"--etcd-{name}", default=None)
    g = p.add_argument_group("kubernetes store (flanneld's flags)")
    g.add_argument("--kube-subnet-mgr", action="store_true", help="use the Kubernetes API for leases")
    g.add_argument("--kubeconfig-file", default=None)
    g.add_argument("--kube-api-url", default=None)
    g.add_argument("--kube-annotation-prefix", default="flannel.alpha.coreos.com")
    g.add_argument("--set-node-network-unavailable", default=True,
                   type=lambda v: v.lower() in ("1", "true", "yes"), metavar="BOOL",
                   help="set the node's NetworkUnavailable condition to False when up (default true)")
    g = p.add_argument_group("operations")
    g.add_argument("--ip-masq", action="store_true", help="masquerade pod traffic leaving the network")
    g.add_argument("--ip-masq-fully-random-disable", action="store_true",
                   help="do not use fully-random port mapping for masquerade")
    g.add_argument("--healthz-ip", default="0.0.0.0")
    g.add_argument("--healthz-port", type=int, default=0, help="serve /healthz, /readyz, /metrics (0 = off)")
    g.add_argument("--log-format", choices=("text", "json"), default="text")
    g.add_argument("--log-level", default="INFO")
    flags.apply_env_defaults(p)
    p.set_defaults(func=run)


def store_url(args) -> str:
    if args.kube_subnet_mgr:
        return "kube"
    if args.store:
        return args.store
    if args.etcd_endpoints:
        return "etcd://" + ",".join(e.split("://", 1)[-1] for e in args.etcd_endpoints.split(","))
    return DEFAULT_STORE


def store_options(args) -> dict:
    url = store_url(args)
    if url.startswith("etcd"):
        opts = {"prefix": args.etcd_prefix}
        for name in ("keyfile", "certfile", "cafile", "username", "password"):
            if getattr(args, f"etcd_{name}"):
                opts[name] = getattr(args, f"etcd_{name}")
        if args.etcd_endpoints and args.etcd_endpoints.startswith("https"):
            opts["scheme"] = "https"
        return opts
    if url == "kube":
        return {"kubeconfig": args.kubeconfig_file, "api_url": args.kube_api_url,
                "annotation_prefix": args.kube_annotation_prefix, "node_name": args.node_name,
                "set_node_network_unavailable": args.set_node_network_unavailable}
    return {}


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
    return load_netconf("/etc/kube-flannel/net-conf.json", check_subnets=check)


def _check_args(args) -> None:
    if not 1 <= args.subnet_lease_renew_margin <= 1439:
        raise ConfigError("--subnet-lease-renew-margin", None, args.subnet_lease_renew_margin,
                          "must be between 1 and 1439 minutes")
    if args.watch and not args.net_conf:
        raise ConfigError("--watch", None, None, "needs a file to watch",
                          "pass --net-conf FILE (a config kept in etcd is not watched)")
    if args.hook_timeout <= 0:
        raise ConfigError("--hook-timeout", None, args.hook_timeout, "must be a positive number of seconds")
    for flag in ("public_ip", "public_ipv6"):
        if getattr(args, flag):
            check_ip("--" + flag.replace("_", "-"), getattr(args, flag), 6 if flag.endswith("v6") else 4)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    logs.setup(args.log_format, args.log_level, node=args.node_name)
    # A --net-conf file is read before any store is touched, so a bad file fails fast.
    config = load_config(args) if args.net_conf else None
    store = open_store(store_url(args), **store_options(args))
    try:
        config = config or load_config(args, store)
        hook = load_hook(config)
        iface = find_interface(args.iface, args.public_ip)
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
    if args.ip_masq:
        from flannel_ext._runtime import ipmasq

        def masq(rt):
            ipmasq.setup_ip_masq(rt.config.network, rt.ctx.subnet,
                                 fully_random=not args.ip_masq_fully_random_disable)
        runtime.on_ready.append(masq)
        undo.append(ipmasq.teardown_ip_masq)
    return undo


def _start_reload_watch(args, runtime: NodeRuntime):
    from flannel_ext._runtime.reload import ReloadWatcher

    def load():
        config = load_config(args)
        return config, load_hook(config)
    runtime.reload_source = load
    watcher = ReloadWatcher(args.net_conf, runtime)
    watcher.start()
    return watcher
