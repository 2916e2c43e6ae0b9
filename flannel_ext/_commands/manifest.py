"""`flannel-ext manifest`: render a kube-flannel.yml-shaped manifest for one net-conf.json.

The objects mirror flannel's `Documentation/kube-flannel.yml` (Documentation/kubernetes.md),
with the flannel-ext daemon in the main container, run with ``--ip-masq`` as flanneld is
there, and a POSIX sh port of flannel's CNI plugin (``--cni-plugin`` prints it; the image
bakes it in) installed by the init container. The net-conf is a file (``--net-conf``) or
a shipped recipe by name (``--recipe``), its Network optionally replaced (``--network``).
A Python hook given as a file (``"Hook": "my_hook.py:MyHook"``) is shipped inside the
ConfigMap, and the net-conf.json the DaemonSet reads points at its mounted path.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from importlib import resources

import jinja2
import yaml

from flannel_ext._config.netconf import parse_netconf
from flannel_ext._hooks.loader import installed_recipes
from flannel_ext._util.errors import ConfigError
from flannel_ext._util import gojson

DEFAULT_IMAGE = "flannel-ext:dev"
DEFAULT_NAMESPACE = "kube-flannel"
NAME = "flannel-ext"
CONFIG_DIR = "/etc/kube-flannel"      # where the ConfigMap is mounted in the pod
HEALTHZ_PORT = 8081
SUBNET_FILE = "/run/flannel/subnet.env"
CNI_DATA_DIR = "/var/lib/cni/flannel-ext"
DEFAULT_NETWORK = "10.244.0.0/16"    # kube-flannel.yml's, and kubeadm's usual pod CIDR
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# An image reference as the container runtimes parse it (distribution/reference's grammar).
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"^(?:{_DOMAIN}(?::[0-9]+)?/)?{_PATH}(?:/{_PATH})*"
                    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
_CLI = "flannel-ext manifest"


def yaml_block(text: str, indent: int) -> str:
    """`text` as a YAML scalar at `indent`: a readable literal block when YAML can keep
    it byte for byte, else a JSON string (JSON strings are valid YAML)."""
    body = text[:-1] if text.endswith("\n") else text
    literal = (body and "\r" not in text and not body.startswith((" ", "\t", "\n"))
               and not body.endswith((" ", "\t", "\n"))
               and all(line.isprintable() or "\t" in line for line in body.split("\n")))
    if not literal:
        return json.dumps(text)
    pad = " " * indent
    lines = [pad + line if line else "" for line in body.split("\n")]
    return ("|" if text.endswith("\n") else "|-") + "\n" + "\n".join(lines)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("flannel_ext._commands", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["yaml_block"] = yaml_block
    # Go-style escaping is irrelevant here; keep tojson plain (no HTML escapes in YAML).
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    return env


def cni_plugin_script(*, subnet_file: str = SUBNET_FILE, data_dir: str = CNI_DATA_DIR) -> str:
    """The sh CNI plugin that the image installs as /opt/bin/flannel-ext-cni."""
    return _environment().get_template("flannel-ext-cni.sh.j2").render(
        subnet_file=subnet_file, data_dir=data_dir)


@dataclass
class NetConfSource:
    """The net-conf text to ship, where it came from, and how to say so."""

    text: str
    path: str | None      # the file, when there is one (a hook file is found relative to it)
    label: str            # e.g. "--net-conf recipes/vxlan.json" or "--recipe vxlan"


def read_net_conf(path: str) -> NetConfSource:
    try:
        with open(path, encoding="utf-8") as f:
            return NetConfSource(f.read(), path, f"--net-conf {path}")
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror}",
                          "pass an existing net-conf.json, or --recipe NAME") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, None, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8 JSON") from None


def recipe_net_conf(name: str) -> NetConfSource:
    """A recipe `flannel-ext recipes` lists: its shipped net-conf file, or else (a Python
    recipe only) a net-conf selecting it with ``"Hook"`` on the default Network."""
    shipped = resources.files("flannel_ext.recipes")
    if name and "/" not in name and (shipped / f"{name}.json").is_file():
        return NetConfSource((shipped / f"{name}.json").read_text(encoding="utf-8"), None, f"--recipe {name}")
    python = installed_recipes()
    if name in python:
        conf = {"Network": DEFAULT_NETWORK, "Backend": {"Type": "extension", "Hook": name}}
        return NetConfSource(json.dumps(conf, indent=2) + "\n", None, f"--recipe {name}")
    names = sorted({e.name[:-len(".json")] for e in shipped.iterdir() if e.name.endswith(".json")} | set(python))
    raise ConfigError(_CLI, "--recipe", name, "is no recipe",
                      f"choose one of {', '.join(names)} (`flannel-ext recipes` lists them)")


def with_network(source: NetConfSource, network: str) -> NetConfSource:
    """`source` with its Network (matched as Go matches keys) replaced by `network`."""
    try:
        cidr = ipaddress.IPv4Network(network, strict=False)   # masked, as flannel's ParseCIDR stores it
    except ValueError:
        raise ConfigError(_CLI, "--network", network, "is not an IPv4 CIDR",
                          f"give the cluster's pod CIDR, e.g. --network {DEFAULT_NETWORK}") from None
    data = _validate(source)
    key = "Network" if "Network" in data else next((k for k in data if k.lower() == "network"), "Network")
    label = f"{source.label} --network {cidr}"
    if data.get(key) == str(cidr):
        return NetConfSource(source.text, source.path, label)   # unchanged: shipped verbatim
    data[key] = str(cidr)
    return NetConfSource(json.dumps(data, indent=2) + "\n", source.path, label)


def _validate(source: NetConfSource) -> dict:
    """Parse and validate the net-conf as `run --kube-subnet-mgr` will; return its JSON."""
    where = source.path or source.label
    # Kube mode never checks SubnetLen/Min/Max (flannel does not either), so neither do we.
    parse_netconf(source.text, where, check_subnets=False)
    data = gojson.decode(source.text)
    if not isinstance(data, dict):
        raise ConfigError(where, None, None, "must be a JSON object")
    if not gojson.field(data, "Network") and not gojson.field(data, "IPv6Network"):
        raise ConfigError(where, "Network", None, "is required in Kubernetes mode",
                          f'add e.g. "Network": "{DEFAULT_NETWORK}" (the cluster pod CIDR), or pass --network')
    return data


def check_namespace(namespace: str) -> str:
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise ConfigError(_CLI, "--namespace", namespace, "is not a valid namespace name",
                          "use a DNS-1123 label: at most 63 lower-case letters, digits and '-', "
                          "starting and ending with a letter or digit")
    return namespace


def check_image(image: str) -> str:
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]          # drop the tag
    if len(name) > 255 or not _IMAGE.match(image):
        raise ConfigError(_CLI, "--image", image, "is not a valid image reference",
                          "use [registry[:port]/]name[:tag][@sha256:digest] with a lower-case name, "
                          "e.g. registry.example.com/flannel-ext:v0.1.0")
    return image


def _hook_file(path: str, data: dict) -> tuple[str, str, str] | None:
    """(file path, class, ConfigMap key) when Backend.Hook names a Python file."""
    backend = gojson.field(data, "Backend") or {}
    spec = gojson.field(backend, "Hook") if isinstance(backend, dict) else None
    if not isinstance(spec, str) or ":" not in spec or not spec.split(":", 1)[0].endswith(".py"):
        return None   # a recipe name or an importable module: it is in the image already
    file, cls = spec.rsplit(":", 1)
    # Relative to the net-conf first (they usually sit together), then to the cwd.
    candidates = [file] if os.path.isabs(file) else [
        os.path.join(os.path.dirname(os.path.abspath(path)), file), file]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ConfigError(path, "Backend.Hook", spec, "the hook file does not exist",
                          "give a path relative to the net-conf.json or absolute")
    key = os.path.basename(found)
    if not _CONFIGMAP_KEY.match(key) or key in ("net-conf.json", "cni-conf.json"):
        raise ConfigError(path, "Backend.Hook", spec, "the file name cannot be a ConfigMap key",
                          "rename it to letters, digits, '-', '_' and '.'")
    return found, cls, key


def _point_hook_at(data: dict, mounted: str) -> str:
    """The net-conf text with Backend.Hook replaced, matching the key as Go does."""
    data = json.loads(json.dumps(data))
    backend = data[gojson.field_key(data, "Backend")]
    backend[gojson.field_key(backend, "Hook")] = mounted
    return json.dumps(data, indent=2) + "\n"


def render_manifest(net_conf_path: str | None = None, *, recipe: str | None = None, network: str | None = None,
                    image: str = DEFAULT_IMAGE, namespace: str = DEFAULT_NAMESPACE, ip_masq: bool = True,
                    pull_policy: str = "IfNotPresent", policy: str | None = None) -> str:
    """The multi-document YAML for a net-conf file or a recipe (exactly one of the two)."""
    if (net_conf_path is None) == (recipe is None):
        raise ConfigError(_CLI, "--net-conf/--recipe", None, "exactly one of them is required",
                          "e.g. --recipe vxlan, or --net-conf my-net-conf.json")
    check_namespace(namespace)
    check_image(image)
    source = read_net_conf(net_conf_path) if net_conf_path is not None else recipe_net_conf(recipe or "")
    if network is not None:
        source = with_network(source, network)
    data = _validate(source)
    text = source.text
    hook_files: dict[str, str] = {}
    hook = _hook_file(source.path, data) if source.path else None
    if hook:
        found, cls, key = hook
        with open(found, encoding="utf-8") as f:
            hook_files[key] = f.read()
        text = _point_hook_at(data, f"{CONFIG_DIR}/{key}:{cls}")
    command = ["flannel-ext", "run", "--kube-subnet-mgr", "--net-conf",
               f"{CONFIG_DIR}/net-conf.json", "--healthz-port", str(HEALTHZ_PORT)]
    if ip_masq:
        command.append("--ip-masq")
    if policy:   # NetworkPolicy from the API server; RBAC and br_netfilter follow in the templates
        command += ["--policy", policy, "--policy-source", "kube"]
    env = _environment()
    return env.get_template("manifest.yml.j2").render(
        source=source.label, name=NAME, namespace=namespace, image=image,
        pull_policy=pull_policy, net_conf=text, hook_files=hook_files, command=command,
        cni_conf=env.get_template("cni-conf.json.j2").render(), healthz_port=HEALTHZ_PORT,
        policy=policy)


def render_objects(net_conf_path: str | None = None, **options) -> list[dict]:
    """The rendered manifest parsed back into objects (what kubectl would send)."""
    return [doc for doc in yaml.safe_load_all(render_manifest(net_conf_path, **options)) if doc]


def _cmd(args) -> int:
    if args.cni_plugin:
        print(cni_plugin_script(), end="")
        return 0
    if not args.net_conf and not args.recipe:
        raise ConfigError(_CLI, "--net-conf/--recipe", None, "one of them is required",
                          "e.g. --recipe vxlan (see `flannel-ext recipes`), or --net-conf my-net-conf.json")
    print(render_manifest(args.net_conf, recipe=args.recipe, network=args.network, image=args.image,
                          namespace=args.namespace, ip_masq=args.ip_masq,
                          pull_policy=args.image_pull_policy, policy=args.policy), end="")
    return 0


def register(subparsers):
    """Add `flannel-ext manifest`."""
    p = subparsers.add_parser(
        "manifest", help="print a Kubernetes manifest (kube-flannel.yml style) for a net-conf",
        usage="flannel-ext manifest (--net-conf FILE | --recipe NAME) [--network CIDR] [options]\n"
              "       flannel-ext manifest --cni-plugin",
        description="Print Namespace, RBAC, ConfigMap and DaemonSet as multi-document YAML; "
                    "pipe it to `kubectl apply -f -`. One of --net-conf and --recipe is required.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--net-conf", metavar="FILE", help="the net-conf.json to deploy (this or --recipe)")
    source.add_argument("--recipe", metavar="NAME",
                        help="a recipe `flannel-ext recipes` lists, e.g. vxlan or host-gw (this or --net-conf)")
    p.add_argument("--network", metavar="CIDR",
                   help=f"replace the net-conf's Network with the cluster's pod CIDR (recipes use {DEFAULT_NETWORK})")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"container image (default {DEFAULT_IMAGE})")
    p.add_argument("--image-pull-policy", default="IfNotPresent",
                   choices=["IfNotPresent", "Always", "Never"])
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help=f"namespace for the DaemonSet (default {DEFAULT_NAMESPACE})")
    p.add_argument("--ip-masq", action=argparse.BooleanOptionalAction, default=True,
                   help="run the daemon with --ip-masq, NATing pod traffic that leaves the network, as "
                        "kube-flannel.yml does (default: on; --no-ip-masq turns it off)")
    p.add_argument("--policy", nargs="?", const="nftables", default=None, metavar="HOOK",
                   help="enforce NetworkPolicy with this policy hook (default nftables): adds the RBAC "
                        "to watch pods, namespaces and networkpolicies, and enables br_netfilter")
    p.add_argument("--cni-plugin", action="store_true",
                   help="print the sh CNI plugin the image installs, instead of a manifest")
    p.set_defaults(func=_cmd)
