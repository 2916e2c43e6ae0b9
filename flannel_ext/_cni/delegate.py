"""The delegate: the config flannel's plugin builds from subnet.env, and running it.

The delegate (by default the reference `bridge` with `host-local` IPAM) is found on
``CNI_PATH`` and executed as a runtime would: the same ``CNI_*`` environment, its config
on stdin, its result or error JSON on stdout.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess

from flannel_ext._cni.errors import (DELEGATE_FAILED, DELEGATE_MISSING, INCOMPATIBLE_VERSION, INVALID_CONFIG,
                                     CniError)
from flannel_ext._runtime.subnetenv import SubnetEnv


def build(conf: dict, env: SubnetEnv) -> dict:
    """The delegate config, as flannel's doCmdAdd builds it; user `delegate` keys win."""
    delegate = dict(conf.get("delegate") or {})
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CniError(INVALID_CONFIG, "'delegate.type' must be a string (the delegate plugin's name)")
    for key in ("name", "ipam"):
        if key in delegate:
            raise CniError(INVALID_CONFIG, f"'delegate.{key}' must not be set: the plugin sets it",
                           f"move it to the top level of the network config ({key!r})")
    if conf.get("runtimeConfig") is not None:
        delegate["runtimeConfig"] = conf["runtimeConfig"]
    delegate["name"] = conf["name"]
    delegate.setdefault("type", "bridge")
    delegate.setdefault("ipMasq", not env.ipmasq)  # flannel-ext not masquerading: the bridge does
    delegate.setdefault("mtu", env.mtu)
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        delegate["cniVersion"] = conf["cniVersion"]
    ipam = dict(conf.get("ipam") or {})
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": str(subnet)}] for subnet in env.subnets]
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise CniError(INVALID_CONFIG, "'ipam.routes' must be a list of {\"dst\": CIDR} objects")
    # With isDefaultGateway the bridge plugin adds a default route, which covers the network.
    if not delegate.get("isDefaultGateway"):
        routes = routes + [{"dst": str(net)} for net in env.networks]
    ipam["routes"] = routes
    delegate["ipam"] = ipam
    return delegate


def find(plugin_type: str, cni_path: str) -> str:
    """The executable named `plugin_type` in the first CNI_PATH directory that has it."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CniError(INVALID_CONFIG, f"'delegate.type' {plugin_type!r} is no plugin name")
    dirs = [d for d in cni_path.split(os.pathsep) if d]
    for d in dirs:
        path = os.path.join(d, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CniError(DELEGATE_MISSING, f"delegate plugin {plugin_type!r} is in no CNI_PATH directory",
                   f"CNI_PATH={cni_path!r}")


def execute(plugin_type: str, command: str, conf: dict | bytes, environ: dict) -> str:
    """Run the delegate as a runtime would; return its stdout or raise its error."""
    path = find(plugin_type, environ.get("CNI_PATH", ""))
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    try:
        proc = subprocess.run([path], input=data, capture_output=True, env={**environ, "CNI_COMMAND": command})
    except OSError as exc:
        raise CniError(DELEGATE_FAILED, f"delegate {path} cannot be executed", exc.strerror or str(exc))
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


def negotiate(delegate: dict, environ: dict) -> str | None:
    """Fit a 1.1.0 config to a delegate that speaks only 1.0.0 (e.g. Debian's bridge 1.1.1).

    1.1.0 only adds verbs and optional result fields, so a 1.0.0 delegate runs the same
    ADD/DEL/CHECK. Returns the version to report in results (the runtime's), or None
    when the delegate already speaks the config's version.
    """
    asked = delegate.get("cniVersion")
    if asked != "1.1.0":
        return None
    out = execute(delegate["type"], "VERSION", {"cniVersion": asked}, environ)
    try:
        supported = json.loads(out)["supportedVersions"]
    except (ValueError, KeyError, TypeError):
        supported = []
    if asked in supported:
        return None
    if "1.0.0" not in supported:
        raise CniError(INCOMPATIBLE_VERSION, f"delegate {delegate['type']!r} speaks neither 1.1.0 nor 1.0.0",
                       f"it supports {supported}")
    delegate["cniVersion"] = "1.0.0"
    return asked


def with_version(result_text: str, version: str | None) -> str:
    """The delegate's result relabelled with the runtime's version (see `negotiate`)."""
    if version is None:
        return result_text
    try:
        result = json.loads(result_text)
    except ValueError:
        return result_text
    if isinstance(result, dict):
        result["cniVersion"] = version
    return json.dumps(result)


def with_route_gateways(result: dict) -> dict:
    """prevResult with each gateway-less route given the gateway the IPAM really installed.

    The plugins before containernetworking/plugins#887 (Debian ships 1.1.1) compare a
    nil route GW against the kernel's route, which has the gateway, and so fail every
    CHECK. Filling it in states exactly what ADD programmed.
    """
    gateways: dict[int, str] = {}
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
