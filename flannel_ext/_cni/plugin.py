"""`flannel-ext-cni`: a flannel-compatible CNI plugin (Documentation/cni.md).

Like flannel's own plugin it is a meta-plugin: it reads the node's ``subnet.env``, builds
a delegate config (by default `bridge` + `host-local`), saves it per attachment so DEL
still works after a restart or a subnet.env change, and execs the delegate found on
``CNI_PATH``. Beyond flannel's it keys that cache as the spec keys an attachment, and
speaks CNI 1.1's GC (collect the entries the runtime no longer knows) and STATUS.

Errors are CNI error JSON on stdout with the spec's codes and a non-zero exit; a delegate's
own error JSON is passed through unchanged.
"""
from __future__ import annotations

import json
import os
import sys

from flannel_ext._version import __version__
from flannel_ext._cni import delegate
from flannel_ext._cni.cache import Attachment, Cache
from flannel_ext._cni.errors import (DECODE_FAILURE, DELEGATE_FAILED, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV,
                                     PLUGIN_NOT_AVAILABLE, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, BAD_SUBNET_ENV,
                                     CniError)
from flannel_ext._runtime import subnetenv

DEFAULT_SUBNET_FILE = subnetenv.DEFAULT_SUBNET_FILE
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
# flannel's list (libcni `version.All`), plus 1.1.0 for GC and STATUS.
SUPPORTED_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
LATEST = SUPPORTED_VERSIONS[-1]
_BEFORE_CHECK = ("0.1.0", "0.2.0", "0.3.0", "0.3.1")
_BEFORE_GC = _BEFORE_CHECK + ("0.4.0", "1.0.0")
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

_REQUIRED_ENV = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],  # the netns may already be gone
    "GC": ["CNI_PATH"],
    "STATUS": [],
    "VERSION": [],
}


def about() -> str:
    """What the reference plugins print when run with no CNI_COMMAND."""
    return (f"CNI flannel-ext plugin v{__version__}\n"
            f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")


def load_netconf(data: bytes | str) -> dict:
    """Decode the runtime's config; apply flannel's defaults; check the version."""
    try:
        conf = json.loads(data or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "the network config on stdin is not JSON", str(exc))
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "the network config on stdin must be a JSON object")
    version = conf.get("cniVersion") or "0.1.0"  # the spec's default when absent
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"'cniVersion' {version!r} is not supported",
                       f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("name", "subnetFile", "dataDir"):
        if key in conf and not isinstance(conf[key], str):
            raise CniError(INVALID_CONFIG, f"{key!r} must be a string")
    if not conf.get("name"):
        raise CniError(INVALID_CONFIG, "the network config has no 'name'")
    for key in ("delegate", "ipam", "runtimeConfig"):
        if conf.get(key) is not None and not isinstance(conf[key], dict):
            raise CniError(INVALID_CONFIG, f"{key!r} must be an object")
    conf.setdefault("subnetFile", DEFAULT_SUBNET_FILE)
    conf.setdefault("dataDir", DEFAULT_DATA_DIR)
    return conf


def _subnet_env(path: str, absent_code: int = TRY_AGAIN_LATER) -> subnetenv.SubnetEnv:
    try:
        return subnetenv.load(path)
    except subnetenv.SubnetEnvError as exc:
        code = absent_code if exc.absent else BAD_SUBNET_ENV
        raise CniError(code, f"subnet.env {exc.path} {exc.problem}", exc.hint)


def _attachment(conf: dict, environ: dict) -> Attachment:
    return Attachment(conf["name"], environ["CNI_CONTAINERID"], environ["CNI_IFNAME"])


def _saved_type(path: str, saved: bytes) -> str | None:
    try:
        plugin_type = json.loads(saved)["type"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        plugin_type = None
    if not isinstance(plugin_type, str):
        print(f"flannel-ext-cni: {path} holds no delegate config; skipping the delegate", file=sys.stderr)
        return None
    return plugin_type


# -- commands -----------------------------------------------------------------------------

def cmd_add(conf: dict, environ: dict) -> str:
    config = delegate.build(conf, _subnet_env(conf["subnetFile"]))
    reported = delegate.negotiate(config, environ)
    # Saved first, like flannel, so a DEL after a failed ADD still cleans up.
    Cache(conf["dataDir"]).save(_attachment(conf, environ), config)
    return delegate.with_version(delegate.execute(config["type"], "ADD", config, environ), reported)


def _delete(cache: Cache, path: str, saved: bytes, environ: dict) -> None:
    """The delegate's DEL for one saved entry; the entry goes only once that succeeded."""
    plugin_type = _saved_type(path, saved)
    if plugin_type is not None:
        delegate.execute(plugin_type, "DEL", saved, environ)
    cache.remove(path)


def cmd_del(conf: dict, environ: dict) -> str:
    cache = Cache(conf["dataDir"])
    found = cache.load(_attachment(conf, environ))
    if found is not None:   # none: already deleted (or never added), success per the spec
        _delete(cache, *found, environ)
    return ""


def cmd_check(conf: dict, environ: dict) -> str:
    """CHECK the delegate with the saved config plus the runtime's prevResult."""
    if conf.get("cniVersion", "0.1.0") in _BEFORE_CHECK:
        raise CniError(INCOMPATIBLE_VERSION, f"'cniVersion' {conf.get('cniVersion', '0.1.0')!r} has no CHECK",
                       "CHECK needs 0.4.0 or later")
    att = _attachment(conf, environ)
    found = Cache(conf["dataDir"]).load(att)
    if found is None:
        raise CniError(UNKNOWN_CONTAINER, f"no attachment of container {att.container_id!r} interface "
                       f"{att.ifname!r} to network {att.network!r}", "ADD saved no delegate config for it")
    path, saved = found
    try:
        config = json.loads(saved)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, f"the saved delegate config {path} is not JSON", str(exc))
    if isinstance(conf.get("prevResult"), dict):
        config["prevResult"] = {**delegate.with_route_gateways(conf["prevResult"]),
                                "cniVersion": config.get("cniVersion", conf.get("cniVersion"))}
    return delegate.execute(config["type"], "CHECK", config, environ)


def _valid_attachments(conf: dict) -> set[tuple[str, str]]:
    # libcni also sends the spec's first spelling, "cni.dev/attachments" (cni#1101).
    key = VALID_ATTACHMENTS if VALID_ATTACHMENTS in conf else "cni.dev/attachments"
    items = conf.get(key) or []
    valid = set()
    for item in items if isinstance(items, list) else [None]:
        if not (isinstance(item, dict) and isinstance(item.get("containerID"), str)
                and isinstance(item.get("ifname"), str)):
            raise CniError(INVALID_CONFIG, f"{key!r} must be a list of {{\"containerID\", \"ifname\"}} objects",
                           f"got {json.dumps(item)[:200]}")
        valid.add((item["containerID"], item["ifname"]))
    return valid


def cmd_gc(conf: dict, environ: dict) -> str:
    """Collect every cache entry of this network that the runtime does not list as valid.

    Each stale entry gets its delegate's DEL (which frees the host-local address and the
    veth), then is removed; an entry whose DEL fails stays for the next GC, and the
    failures are reported together once every entry was tried.
    """
    if conf.get("cniVersion", "0.1.0") in _BEFORE_GC:
        raise CniError(INCOMPATIBLE_VERSION, f"'cniVersion' {conf.get('cniVersion', '0.1.0')!r} has no GC",
                       "GC needs 1.1.0")
    valid = _valid_attachments(conf)
    cache, failures = Cache(conf["dataDir"]), []
    for att in cache.attachments(conf["name"]):
        if (att.container_id, att.ifname) in valid:
            continue
        path = cache.path(att)
        saved = cache.load(att)
        env = {**environ, "CNI_CONTAINERID": att.container_id, "CNI_IFNAME": att.ifname, "CNI_NETNS": ""}
        try:
            if saved is not None:
                _delete(cache, path, saved[1], env)
        except CniError as exc:
            failures.append(f"{path}: {exc}")
    if failures:
        raise CniError(DELEGATE_FAILED, f"GC could not collect {len(failures)} "
                       f"attachment(s) of network {conf['name']!r}; they stay for the next GC",
                       "; ".join(failures))
    return ""


def cmd_status(conf: dict, environ: dict) -> str:
    """Ready when ADD could succeed now: subnet.env is there and usable, the delegate findable."""
    if conf.get("cniVersion", "0.1.0") in _BEFORE_GC:
        raise CniError(INCOMPATIBLE_VERSION, f"'cniVersion' {conf.get('cniVersion', '0.1.0')!r} has no STATUS",
                       "STATUS needs 1.1.0")
    try:
        config = delegate.build(conf, _subnet_env(conf["subnetFile"]))
        if environ.get("CNI_PATH"):
            delegate.find(config["type"], environ["CNI_PATH"])
    except CniError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg, exc.details)
    return ""


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def run(command: str, stdin: bytes, environ: dict) -> str:
    """Dispatch one CNI call; returns stdout text or raises CniError."""
    if command == "VERSION":
        return json.dumps({"cniVersion": _version_of(stdin), "supportedVersions": SUPPORTED_VERSIONS})
    if command not in _REQUIRED_ENV:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is unknown",
                       f"this plugin runs {', '.join(_REQUIRED_ENV)}")
    missing = [k for k in _REQUIRED_ENV[command] if not environ.get(k)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    return COMMANDS[command](load_netconf(stdin), environ)


def _version_of(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return LATEST
    return version if version in SUPPORTED_VERSIONS else LATEST


def main() -> int:
    environ = dict(os.environ)
    command = environ.get("CNI_COMMAND", "")
    if not command:
        sys.stderr.write(about())
        return 0
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        out = run(command, stdin, environ)
    except CniError as exc:
        sys.stdout.write(json.dumps(exc.to_json(_version_of(stdin)), indent=4) + "\n")
        return 1
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0
