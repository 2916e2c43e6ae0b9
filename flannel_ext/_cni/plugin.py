"""`flannel-ext-cni`: a flannel-compatible CNI plugin (Documentation/flanneld.md).

Like flannel's own plugin it is a meta-plugin: it reads the node's ``subnet.env``, builds
a delegate config (by default `bridge` + `host-local`), saves it under ``dataDir`` so DEL
still works after a restart or a subnet.env change, and execs the delegate found on
``CNI_PATH`` with the same ``CNI_*`` environment and the delegate config on stdin.

Errors are CNI error JSON on stdout with the spec's codes and a non-zero exit; a delegate's
own error JSON is passed through unchanged. Plugin-specific codes (100+) are below.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

from flannel_ext._util.files import write_atomic

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
# As flannel's plugin (libcni `version.All`); also exactly what Debian's bridge 1.1.1 speaks.
SUPPORTED_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
LATEST = SUPPORTED_VERSIONS[-1]

# Spec error codes, and ours (100+).
INCOMPATIBLE_VERSION, UNKNOWN_CONTAINER, INVALID_ENV, IO_FAILURE = 1, 3, 4, 5
DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER = 6, 7, 11
BAD_SUBNET_ENV, DELEGATE_NOT_FOUND, DELEGATE_FAILED = 100, 101, 102

_REQUIRED_ENV = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],  # netns may already be gone
    "VERSION": [],
}


class CniError(Exception):
    """A failure reported to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "", *, raw: dict | None = None):
        self.code, self.msg, self.details, self.raw = code, msg, details, raw
        super().__init__(f"[{code}] {msg}" + (f": {details}" if details else ""))

    def to_json(self, version: str) -> dict:
        if self.raw is not None:  # a delegate's own error, verbatim
            return self.raw
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# -- subnet.env ---------------------------------------------------------------------------

def parse_subnet_env(path: str) -> dict:
    """Parse flanneld's subnet.env the way flannel's plugin does (networks may be comma lists).

    Returns ``networks``, ``subnets`` (network addresses, v4 then v6), ``mtu``, ``ipmasq``.
    A missing file means flanneld is not ready yet: "try again later".
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CniError(TRY_AGAIN_LATER, "subnet.env not found: is flannel-ext running?", path)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}", str(exc))
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    try:
        nets = [ipaddress.ip_network(n.strip(), strict=False)
                for key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")
                for n in values.get(key, "").split(",") if n.strip()]
        subnets = [ipaddress.ip_network(values[key], strict=False)
                   for key in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if values.get(key)]
        mtu = int(values["FLANNEL_MTU"]) if "FLANNEL_MTU" in values else None
    except ValueError as exc:
        raise CniError(BAD_SUBNET_ENV, f"{path} is invalid", str(exc))
    missing = []
    if not nets:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if not subnets:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if mtu is None:
        missing.append("FLANNEL_MTU")
    if "FLANNEL_IPMASQ" not in values:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise CniError(BAD_SUBNET_ENV, f"{path} is missing {', '.join(missing)}")
    return {"networks": [str(n) for n in nets], "subnets": [str(s) for s in subnets],
            "mtu": mtu, "ipmasq": values["FLANNEL_IPMASQ"] == "true"}


# -- net conf and delegate ----------------------------------------------------------------

def load_netconf(data: bytes | str) -> dict:
    """Decode the runtime's config; apply flannel's defaults; check the version."""
    try:
        conf = json.loads(data or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "failed to decode network configuration", str(exc))
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = conf.get("cniVersion") or "0.1.0"  # the spec's default when absent
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {SUPPORTED_VERSIONS}")
    for key in ("name", "subnetFile", "dataDir"):
        if key in conf and not isinstance(conf[key], str):
            raise CniError(INVALID_CONFIG, f"{key!r} must be a string")
    if not conf.get("name"):
        raise CniError(INVALID_CONFIG, "network configuration has no 'name'")
    for key in ("delegate", "ipam", "runtimeConfig"):
        if conf.get(key) is not None and not isinstance(conf[key], dict):
            raise CniError(INVALID_CONFIG, f"{key!r} must be an object")
    conf.setdefault("subnetFile", DEFAULT_SUBNET_FILE)
    conf.setdefault("dataDir", DEFAULT_DATA_DIR)
    return conf


def build_delegate(conf: dict, env: dict) -> dict:
    """The delegate config, as flannel's doCmdAdd builds it; user `delegate` keys win."""
    delegate = dict(conf.get("delegate") or {})
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CniError(INVALID_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field")
    for key in ("name", "ipam"):
        if key in delegate:
            raise CniError(INVALID_CONFIG, f"'delegate' dictionary must not have {key!r} field, "
                                           "it'll be set by flannel")
    if conf.get("runtimeConfig") is not None:
        delegate["runtimeConfig"] = conf["runtimeConfig"]
    delegate["name"] = conf["name"]
    delegate.setdefault("type", "bridge")
    delegate.setdefault("ipMasq", not env["ipmasq"])  # flanneld not masquerading: the bridge does
    delegate.setdefault("mtu", env["mtu"])
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        delegate["cniVersion"] = conf["cniVersion"]
    ipam = dict(conf.get("ipam") or {})
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": subnet}] for subnet in env["subnets"]]
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise CniError(INVALID_CONFIG, "failed to read IPAM routes", "'ipam.routes' must be a list")
    # With isDefaultGateway the bridge plugin adds a default route, which covers the network.
    if not delegate.get("isDefaultGateway"):
        routes = routes + [{"dst": net} for net in env["networks"]]
    ipam["routes"] = routes
    delegate["ipam"] = ipam
    return delegate


# -- delegation ---------------------------------------------------------------------------

def find_plugin(plugin_type: str, cni_path: str) -> str:
    """The executable named `plugin_type` in the first CNI_PATH directory that has it."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CniError(INVALID_CONFIG, f"invalid plugin type {plugin_type!r}")
    dirs = [d for d in cni_path.split(os.pathsep) if d]
    for d in dirs:
        path = os.path.join(d, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CniError(DELEGATE_NOT_FOUND, f"failed to find plugin {plugin_type!r} in path {dirs}")


def exec_plugin(plugin_type: str, command: str, conf: dict | bytes, environ: dict) -> str:
    """Run the delegate as a runtime would; return its stdout or raise its error."""
    path = find_plugin(plugin_type, environ.get("CNI_PATH", ""))
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run([path], input=data, capture_output=True,
                          env={**environ, "CNI_COMMAND": command})
    out = proc.stdout.decode(errors="replace")
    if proc.returncode == 0:
        return out
    try:
        err = json.loads(out)
    except ValueError:
        err = None
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        raise CniError(err["code"], str(err.get("msg", "")), str(err.get("details", "")), raw=err)
    detail = (out + proc.stderr.decode(errors="replace")).strip()[:2000]
    raise CniError(DELEGATE_FAILED, f"delegate {plugin_type} {command} exited {proc.returncode}", detail)


def _saved_path(conf: dict, container_id: str) -> str:
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise CniError(INVALID_ENV, f"invalid CNI_CONTAINERID {container_id!r}")
    return os.path.join(conf["dataDir"], container_id)


# -- commands -----------------------------------------------------------------------------

def cmd_add(conf: dict, environ: dict) -> str:
    delegate = build_delegate(conf, parse_subnet_env(conf["subnetFile"]))
    try:  # saved first, like flannel, so a DEL after a failed ADD still cleans up
        write_atomic(_saved_path(conf, environ["CNI_CONTAINERID"]), json.dumps(delegate), 0o600, dir_mode=0o700)
    except OSError as exc:
        raise CniError(IO_FAILURE, "cannot save the delegate config", str(exc))
    return exec_plugin(delegate["type"], "ADD", delegate, environ)


def cmd_del(conf: dict, environ: dict) -> str:
    path = _saved_path(conf, environ["CNI_CONTAINERID"])
    try:
        with open(path, "rb") as f:
            saved = f.read()
    except FileNotFoundError:
        return ""  # already deleted (or never added): success, per the spec and flannel
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}", str(exc))
    try:
        plugin_type = json.loads(saved)["type"]
    except (ValueError, KeyError, TypeError):
        # As flannel: an unreadable scratch file is left; the veth goes with the netns.
        print(f"flannel-ext-cni: cannot parse {path}; skipping delegate DEL", file=sys.stderr)
        return ""
    out = exec_plugin(plugin_type, "DEL", saved, environ)
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    return out


def cmd_check(conf: dict, environ: dict) -> str:
    """CHECK the delegate with the saved config plus the runtime's prevResult."""
    if conf.get("cniVersion", "0.1.0") in ("0.1.0", "0.2.0", "0.3.0", "0.3.1"):
        raise CniError(INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    path = _saved_path(conf, environ["CNI_CONTAINERID"])
    try:
        with open(path, "rb") as f:
            delegate = json.loads(f.read())
    except FileNotFoundError:
        raise CniError(UNKNOWN_CONTAINER, "container unknown: no saved delegate config", path)
    except (OSError, ValueError) as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}", str(exc))
    if isinstance(conf.get("prevResult"), dict):
        delegate["prevResult"] = _with_route_gateways(conf["prevResult"])
    return exec_plugin(delegate["type"], "CHECK", delegate, environ)


def _with_route_gateways(result: dict) -> dict:
    """prevResult with each gateway-less route given the gateway the IPAM really installed.

    The plugins before containernetworking/plugins#887 (Debian ships 1.1.1) compare a
    nil route GW against the kernel's route, which has the gateway, and so fail every
    CHECK. Filling it in states exactly what ADD programmed.
    """
    gateways = {}
    for ip in result.get("ips") or []:
        try:
            gateways.setdefault(ipaddress.ip_interface(ip["address"]).version, ip["gateway"])
        except (KeyError, TypeError, ValueError):
            continue
    routes = []
    for route in result.get("routes") or []:
        route = dict(route)
        try:
            version = ipaddress.ip_network(route["dst"], strict=False).version
        except (KeyError, TypeError, ValueError):
            version = None
        if not route.get("gw") and version in gateways:
            route["gw"] = gateways[version]
        routes.append(route)
    return {**result, "routes": routes}


def run(command: str, stdin: bytes, environ: dict) -> str:
    """Dispatch one CNI call; returns stdout text or raises CniError."""
    if command == "VERSION":
        return json.dumps({"cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS})
    if not command:
        raise CniError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in _REQUIRED_ENV:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command!r}")
    missing = [k for k in _REQUIRED_ENV[command] if not environ.get(k)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    conf = load_netconf(stdin)
    handler = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}[command]
    return handler(conf, environ)


def _version_of(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return LATEST
    return version if version in SUPPORTED_VERSIONS else LATEST


def main() -> int:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    environ = dict(os.environ)
    try:
        out = run(environ.get("CNI_COMMAND", ""), stdin, environ)
    except CniError as exc:
        sys.stdout.write(json.dumps(exc.to_json(_version_of(stdin)), indent=4) + "\n")
        return 1
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0

