"""`flannel-ext manifest`: render a kube-flannel.yml-shaped manifest for one net-conf.json.

The objects mirror flannel's `Documentation/kube-flannel.yml` (compat §8), with the
flannel-ext daemon in the main container and a POSIX sh port of flannel's CNI plugin
(``--cni-plugin`` prints it; the image bakes it in) installed by the init container.
A Python hook given as a file (``"Hook": "my_hook.py:MyHook"``) is shipped inside the
ConfigMap, and the net-conf.json the DaemonSet reads points at its mounted path.
"""
from __future__ import annotations

import json
import os
import re

import jinja2
import yaml

from flannel_ext._util.errors import ConfigError
from flannel_ext._util.gojson import loads_case_insensitive
from flannel_ext._config.netconf import load_netconf

DEFAULT_IMAGE = "flannel-ext:dev"
DEFAULT_NAMESPACE = "kube-flannel"
NAME = "flannel-ext"
CONFIG_DIR = "/etc/kube-flannel"      # where the ConfigMap is mounted in the pod
HEALTHZ_PORT = 8081
SUBNET_FILE = "/run/flannel/subnet.env"
CNI_DATA_DIR = "/var/lib/cni/flannel-ext"
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


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


def _validate(path: str, text: str) -> dict:
    """Parse (and, when the config module offers it, validate) the net-conf."""
    # Kube mode never checks SubnetLen/Min/Max (compat §4), so neither do we.
    load_netconf(path, check_subnets=False)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(path, None, None, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, None, "must be a JSON object")
    if not loads_case_insensitive(data, "Network") and not loads_case_insensitive(data, "IPv6Network"):
        raise ConfigError(path, "Network", None, "is required in Kubernetes mode",
                          'add e.g. "Network": "10.244.0.0/16" (the cluster pod CIDR)')
    return data


def _hook_file(path: str, data: dict) -> tuple[str, str, str] | None:
    """(file path, class, ConfigMap key) when Backend.Hook names a Python file."""
    backend = loads_case_insensitive(data, "Backend") or {}
    spec = loads_case_insensitive(backend, "Hook") if isinstance(backend, dict) else None
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
    backend_key = next(k for k in data if k.lower() == "backend")
    backend = data[backend_key]
    hook_key = "Hook" if "Hook" in backend else next(k for k in backend if k.lower() == "hook")
    backend[hook_key] = mounted
    return json.dumps(data, indent=2) + "\n"


def render_manifest(net_conf_path: str, *, image: str = DEFAULT_IMAGE,
                    namespace: str = DEFAULT_NAMESPACE, ip_masq: bool = False,
                    pull_policy: str = "IfNotPresent", policy: str | None = None) -> str:
    """The multi-document YAML for `net_conf_path`."""
    try:
        with open(net_conf_path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(net_conf_path, None, None, f"cannot read: {exc.strerror}") from None
    data = _validate(net_conf_path, text)
    hook_files: dict[str, str] = {}
    hook = _hook_file(net_conf_path, data)
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
        source=net_conf_path, name=NAME, namespace=namespace, image=image,
        pull_policy=pull_policy, net_conf=text, hook_files=hook_files, command=command,
        cni_conf=env.get_template("cni-conf.json.j2").render(), healthz_port=HEALTHZ_PORT,
        policy=policy)


def render_objects(net_conf_path: str, **options) -> list[dict]:
    """The rendered manifest parsed back into objects (what kubectl would send)."""
    return [doc for doc in yaml.safe_load_all(render_manifest(net_conf_path, **options)) if doc]


def _cmd(args) -> int:
    if args.cni_plugin:
        print(cni_plugin_script(), end="")
        return 0
    if not args.net_conf:
        raise ConfigError("flannel-ext manifest", "--net-conf", None, "is required",
                          "pass the net-conf.json to deploy, e.g. --net-conf recipes/vxlan.json")
    print(render_manifest(args.net_conf, image=args.image, namespace=args.namespace,
                          ip_masq=args.ip_masq, pull_policy=args.image_pull_policy,
                          policy=args.policy), end="")
    return 0


def register(subparsers):
    """Add `flannel-ext manifest`."""
    p = subparsers.add_parser(
        "manifest", help="print a Kubernetes manifest (kube-flannel.yml style) for a net-conf",
        description="Print Namespace, RBAC, ConfigMap and DaemonSet as multi-document YAML; "
                    "pipe it to `kubectl apply -f -`.")
    p.add_argument("--net-conf", metavar="FILE", help="the net-conf.json to deploy")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"container image (default {DEFAULT_IMAGE})")
    p.add_argument("--image-pull-policy", default="IfNotPresent",
                   choices=["IfNotPresent", "Always", "Never"])
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help=f"namespace for the DaemonSet (default {DEFAULT_NAMESPACE})")
    p.add_argument("--ip-masq", action="store_true",
                   help="run the daemon with --ip-masq (NAT pod traffic leaving the network)")
    p.add_argument("--policy", nargs="?", const="nftables", default=None, metavar="HOOK",
                   help="enforce NetworkPolicy with this policy hook (default nftables): adds the RBAC "
                        "to watch pods, namespaces and networkpolicies, and enables br_netfilter")
    p.add_argument("--cni-plugin", action="store_true",
                   help="print the sh CNI plugin the image installs, instead of a manifest")
    p.set_defaults(func=_cmd)
