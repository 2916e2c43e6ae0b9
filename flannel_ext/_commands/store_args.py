"""The lease-store flags shared by `run`, `leases` and `doctor`: ``--store URL`` plus
flanneld's etcd and Kubernetes flags, and the `open_store` arguments they make."""
from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from flannel_ext._config import paths
from flannel_ext._commands import flags

ETCD_FILES = ("keyfile", "certfile", "cafile")
ETCD_OPTIONS = (*ETCD_FILES, "username", "password")


def add_store_arguments(p: argparse.ArgumentParser, main: Any = None) -> Any:
    """Add the flags (--store and --node-name to the group `main` if given); returns the
    kubernetes group (run adds its own kube flag to it)."""
    main = main or p
    main.add_argument("--store", default=None, metavar="URL",
                   help=f"lease store: sqlite:PATH, etcd://HOST:PORT[,…] or kube (default {paths.STORE_URL})")
    main.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   help="this node's name (default $NODE_NAME or the hostname)")
    g = p.add_argument_group("etcd store (flanneld's flags)")
    g.add_argument("--etcd-endpoints", default=None, metavar="URLS",
                   help="comma list of http(s)://host:port (https: TLS)")
    g.add_argument("--etcd-prefix", default="/coreos.com/network", help="key prefix (default %(default)s)")
    for name in ETCD_OPTIONS:
        g.add_argument(f"--etcd-{name}", default=None, metavar=name.upper().replace("FILE", "_FILE"),
                       help=f"etcd {'TLS ' if name in ETCD_FILES else ''}{name.replace('file', ' file')}")
    g = p.add_argument_group("kubernetes store (flanneld's flags)")
    g.add_argument("--kube-subnet-mgr", action=flags.GoBool, help="use the Kubernetes API for leases")
    g.add_argument("--kubeconfig-file", default=None, metavar="FILE",
                   help="kubeconfig (default: the in-cluster service account, or --kube-api-url alone)")
    g.add_argument("--kube-api-url", default=None, metavar="URL", help="API server URL (overrides the kubeconfig's)")
    g.add_argument("--kube-annotation-prefix", default="flannel.alpha.coreos.com", metavar="PREFIX",
                   help="node annotation prefix (default %(default)s)")
    return g


def store_url(args: argparse.Namespace) -> str:
    if args.kube_subnet_mgr:
        return "kube"
    if args.store:
        return str(args.store)
    if args.etcd_endpoints:
        return "etcd://" + ",".join(e.split("://", 1)[-1] for e in args.etcd_endpoints.split(","))
    return paths.STORE_URL


def store_options(args: argparse.Namespace) -> dict[str, Any]:
    url = store_url(args)
    if url.startswith("etcd"):
        opts: dict[str, Any] = {"prefix": args.etcd_prefix}
        for name in ETCD_OPTIONS:
            if getattr(args, f"etcd_{name}"):
                opts[name] = getattr(args, f"etcd_{name}")
        if args.etcd_endpoints and args.etcd_endpoints.startswith("https"):
            opts["scheme"] = "https"
        return opts
    if url == "kube":
        return {"kubeconfig": args.kubeconfig_file, "api_url": args.kube_api_url,
                "annotation_prefix": args.kube_annotation_prefix, "node_name": args.node_name,
                "set_node_network_unavailable": getattr(args, "set_node_network_unavailable", True)}
    return {}
