"""net-conf.json: flannel's `pkg/subnet/config.go` ParseConfig + CheckNetworkConfig.

Parsing follows Go's encoding/json into flannel's Config struct: keys match
case-insensitively, unknown keys are ignored, CIDRs are stored masked. Validation
embeds flannel's own wording, so a message can be searched for in flannel issues,
and adds the file, field, bad value and a fix. flannel-ext only runs the extension
backend, so the Backend object is checked as flannel's extension backend decodes it.
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from flannel_ext._util import gojson
from flannel_ext._util.errors import ConfigError

#: Each lifecycle step's Hook method and the Backend key holding its shell command, in
#: lifecycle order: the one list of hook command names. flannel reads the first four;
#: ShutdownCommand is flannel-ext's own (flannel's dist/ examples carry it unused).
COMMAND_FIELDS: dict[str, str] = {
    "pre_startup": "PreStartupCommand",
    "post_startup": "PostStartupCommand",
    "subnet_add": "SubnetAddCommand",
    "subnet_remove": "SubnetRemoveCommand",
    "shutdown": "ShutdownCommand",
}

_BACKEND_FIX = ('flannel-ext runs only the extension backend: set "Backend": {"Type": "extension", ...} '
                'with *Command keys, or "Type": "extension" with "Hook": "vxlan" or "host-gw" '
                'for the Python recipes')


@dataclass
class NetConf:
    """A parsed, validated net-conf.json. Subnet bounds are filled with flannel's defaults."""

    source: str = "net-conf.json"        # file path (for error messages)
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    network: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    subnet_len: int = 0
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    backend_type: str = "udp"            # lowercased, as flannel's GetBackend does
    backend: dict[str, Any] = field(default_factory=dict)   # the raw Backend object
    text: str = ""                       # the original file text
    commands: dict[str, str] = field(default_factory=dict)  # COMMAND_FIELDS name -> non-empty command
    hook: str | None = None              # Backend.Hook: a Python hook or recipe name
    mtu: int | None = None               # Backend.MTU override

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A Backend key, matched case-insensitively as Go's encoding/json does."""
        return gojson.field(self.backend, name, default)


#: A net-conf.json bigger than this is refused unread (real ones are a few hundred bytes).
MAX_NETCONF_BYTES = 1 << 20


def load_netconf(path, *, check_subnets: bool = True) -> NetConf:
    """Read and parse the net-conf.json at `path`; every failure is a ConfigError."""
    source = str(path)
    return parse_netconf(_read_regular_file(path, source), source, check_subnets=check_subnets)


def _read_regular_file(path, source: str) -> str:
    """The file's text. A FIFO, device or directory is refused at once (reading a FIFO
    blocks for ever, /dev/zero never ends): opened non-blocking, then checked by fstat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(source, None, None, "file not found",
                          "pass the path of your net-conf.json (e.g. --net-conf /etc/kube-flannel/net-conf.json)"
                          ) from None
    except OSError as exc:
        raise ConfigError(source, None, None, f"cannot read the file: {exc.strerror or exc}",
                          "check the path and its permissions") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
                    stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a file")
            raise ConfigError(source, None, None, f"cannot read the file: it is {kind}, not a regular file",
                              "point --net-conf at a net-conf.json file")
        data = b""
        while len(data) <= MAX_NETCONF_BYTES and (chunk := os.read(fd, MAX_NETCONF_BYTES + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise ConfigError(source, None, None, f"cannot read the file: {exc.strerror or exc}",
                          "check the path and its permissions") from None
    finally:
        os.close(fd)
    if len(data) > MAX_NETCONF_BYTES:
        raise ConfigError(source, None, None, f"is over {MAX_NETCONF_BYTES} bytes",
                          "net-conf.json holds a few settings; check the path")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, None, f"not UTF-8 text (byte {exc.start})",
                          "save the file as UTF-8 JSON") from None


def parse_netconf(text: str, source: str = "net-conf.json", *, check_subnets: bool = True) -> NetConf:
    """Parse net-conf.json text as flannel does; validate subnets unless in kube mode.

    `check_subnets=False` is kube mode: flannel never calls CheckNetworkConfig there
    (pod CIDRs come from the nodes), so SubnetLen/Min/Max get no defaults or checks.
    """
    raw = _decode(text, source)
    conf = NetConf(source=source, text=text)
    _parse_top(raw, conf)
    if not conf.enable_ipv4 and not conf.enable_ipv6:
        raise ConfigError(source, "EnableIPv4", False, "both EnableIPv4 and EnableIPv6 are false",
                          "enable at least one address family")
    if conf.enable_ipv4 and conf.network is None:
        raise ConfigError(source, "Network", None,
                          "please define a correct Network parameter in the flannel config",
                          'add e.g. "Network": "10.244.0.0/16" (or set "EnableIPv4": false for IPv6 only)')
    if conf.enable_ipv6 and conf.ipv6_network is None:
        raise ConfigError(source, "IPv6Network", None,
                          "please define a correct IPv6Network parameter in the flannel config",
                          'add e.g. "IPv6Network": "fd00:10:244::/56"')
    if check_subnets:
        if conf.enable_ipv4:
            _check_family(conf, 4)
        if conf.enable_ipv6:
            _check_family(conf, 6)
    _parse_backend(raw, conf)
    return conf


# --- JSON -------------------------------------------------------------------------

def _decode(text: str, source: str) -> dict[str, Any]:
    """The top-level object; keys are later matched as Go does (`gojson.field`)."""
    try:
        raw = gojson.decode(text, max_bytes=MAX_NETCONF_BYTES)
    except gojson.JSONError as exc:
        hint = ("net-conf.json is a small object of settings: check that this is the right file"
                if exc.over_limit else "remove the comments: net-conf.json is strict JSON"
                if text.lstrip().startswith("//") else
                "net-conf.json must be strict JSON (no comments, no trailing commas)")
        raise ConfigError(source, None, None, str(exc), hint) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, None, _json_kind(raw), "the top level must be a JSON object",
                          'write {"Network": "10.244.0.0/16", "Backend": {"Type": "extension", ...}}')
    return raw


def _json_kind(value: Any) -> str:
    """The JSON type name Go's error messages use."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


# --- top-level fields (ParseConfig) --------------------------------------------------

def _get(raw: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(present, value) for a struct field, matched case-insensitively."""
    missing = object()
    value = gojson.field(raw, name, missing)
    return (value is not missing, None if value is missing else value)


def _parse_top(raw: dict[str, Any], conf: NetConf) -> None:
    src = conf.source
    for name, attr in (("EnableIPv4", "enable_ipv4"), ("EnableIPv6", "enable_ipv6"),
                       ("EnableNFTables", "enable_nftables")):
        present, value = _get(raw, name)
        if present and value is not None:   # Go leaves the field alone on null
            if not isinstance(value, bool):
                raise ConfigError(src, name, value, "must be true or false", f'e.g. "{name}": true')
            setattr(conf, attr, value)
    conf.network = _cidr(raw, "Network", 4, src, "10.244.0.0/16")
    conf.ipv6_network = _cidr(raw, "IPv6Network", 6, src, "fd00:10:244::/56")
    conf.subnet_len = _uint(raw, "SubnetLen", src)
    conf.ipv6_subnet_len = _uint(raw, "IPv6SubnetLen", src)
    conf.subnet_min = _addr(raw, "SubnetMin", 4, src)
    conf.subnet_max = _addr(raw, "SubnetMax", 4, src)
    conf.ipv6_subnet_min = _addr(raw, "IPv6SubnetMin", 6, src)
    conf.ipv6_subnet_max = _addr(raw, "IPv6SubnetMax", 6, src)


_CIDR_RE = re.compile(r"^([0-9A-Fa-f:.]+)/([0-9]+)$")


def _cidr(raw, name: str, version: int, src: str, example: str):
    present, value = _get(raw, name)
    if not present:
        return None
    # Go calls the field's UnmarshalJSON even for null, and ParseCIDR("null") fails.
    match = _CIDR_RE.match(value) if isinstance(value, str) else None
    net = None
    if match:
        try:
            net = ipaddress.ip_network(f"{match.group(1)}/{int(match.group(2))}", strict=False)
        except ValueError:
            net = None
    if net is None or net.version != version:
        raise ConfigError(src, name, value, f"invalid IPv{version} CIDR format",
                          f'write an IPv{version} network as address/prefix, e.g. "{example}"')
    # flannel's IP4Net.Empty(): 0.0.0.0/0 counts as "no Network".
    return None if int(net.network_address) == 0 and net.prefixlen == 0 else net


def _uint(raw, name: str, src: str) -> int:
    present, value = _get(raw, name)
    if not present or value is None:
        return 0
    # Go's uint decoding takes only an integer literal: 24.0, -1, "24" and true all fail.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(src, name, value, "must be a non-negative whole number",
                          f'e.g. "{name}": {24 if name == "SubnetLen" else 64}')
    return value


def _addr(raw, name: str, version: int, src: str):
    present, value = _get(raw, name)
    if not present or (value is None and version == 6):   # IPv6 bounds are Go pointers: null = unset
        return None
    addr = None
    if isinstance(value, str) and "%" not in value:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            addr = None
    if version == 4 and isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped   # Go's To4() accepts ::ffff:a.b.c.d
    if addr is None or addr.version != version:
        raise ConfigError(src, name, value, f"is not a valid IPv{version} address",
                          f'e.g. "{name}": "{"10.244.1.0" if version == 4 else "fd00:10:244:1::"}"')
    # flannel treats the zero address as "unset" and fills in the default.
    return None if int(addr) == 0 else addr


# --- CheckNetworkConfig --------------------------------------------------------------

def _check_family(conf: NetConf, version: int) -> None:
    """flannel's CheckNetworkConfig for one family: fill defaults, check lengths and bounds."""
    v6 = version == 6
    pre = "IPv6" if v6 else ""
    net = conf.ipv6_network if v6 else conf.network
    assert net is not None, "parse_netconf checks the Network of an enabled family first"
    bits = 128 if v6 else 32
    max_len, min_prefix, default_len = (126, 124, 64) if v6 else (30, 28, 24)
    len_field, netname = f"{pre}SubnetLen", f"{pre}Network"
    length = conf.ipv6_subnet_len if v6 else conf.subnet_len
    src, prefix = conf.source, net.prefixlen

    if length > 0:
        if length > max_len:
            raise ConfigError(src, len_field, length, f"SubnetLen must be less than /{max_len + 1}",
                              f"use a length between /{min(prefix + 2, max_len)} and /{max_len}")
        if length < prefix + 2:
            fix = (f"use {len_field} /{prefix + 2} or longer for {netname} {net}" if prefix + 2 <= max_len
                   else f"use a larger {netname} (prefix /{min_prefix} or shorter)")
            raise ConfigError(src, len_field, length, "network must be able to accommodate at least four subnets",
                              fix)
    elif prefix > min_prefix:
        problem = f"{'IPv6Network' if v6 else 'network'} is too small. Minimum useful network prefix is /{min_prefix}"
        raise ConfigError(src, netname, str(net), problem, f"use a /{min_prefix} or larger {netname}")
    else:
        # A big network gives every node a /24 (/64); a small one is split into four.
        length = default_len if prefix <= default_len - 2 else prefix + 2
    size = 1 << (bits - length)
    mask = ((1 << bits) - 1) ^ (size - 1)
    make = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address

    bounds = {}
    for end, default in (("Min", int(net.network_address) + size),          # the first subnet is skipped
                         ("Max", int(net.broadcast_address) + 1 - size)):
        name = f"{pre}Subnet{end}"
        value = getattr(conf, f"{'ipv6_' if v6 else ''}subnet_{end.lower()}")
        if value is None:
            value = make(default)
        elif value not in net:
            raise ConfigError(src, name, str(value), f"{name} is not in the range of the {netname}",
                              f"pick an address inside {net}, e.g. {make(default)}")
        bounds[end] = value
    for end, value in bounds.items():
        name = f"{pre}Subnet{end}"
        if int(value) & mask != int(value):
            raise ConfigError(src, name, str(value), f"{name} is not on a SubnetLen boundary: {value}",
                              f"use an address on a /{length} boundary, e.g. {make(int(value) & mask)}")
    if bounds["Min"] > bounds["Max"]:
        # Not checked by flannel, which would fail later with "out of subnets".
        raise ConfigError(src, f"{pre}SubnetMin", str(bounds["Min"]), f"{pre}SubnetMin is above {pre}SubnetMax "
                          f"({bounds['Max']}), so no subnet can be allocated", "swap or correct the bounds")
    prefix_attr = "ipv6_" if v6 else ""
    setattr(conf, f"{prefix_attr}subnet_len", length)
    setattr(conf, f"{prefix_attr}subnet_min", bounds["Min"])
    setattr(conf, f"{prefix_attr}subnet_max", bounds["Max"])


# --- Backend ------------------------------------------------------------------------

def _parse_backend(raw: dict[str, Any], conf: NetConf) -> None:
    src = conf.source
    present, value = _get(raw, "Backend")
    if not present:
        conf.backend_type = "udp"   # flannel's default when Backend is absent (its docs say vxlan)
        raise ConfigError(src, "Backend", None,
                          "no Backend object, so flannel would run its default udp backend", _BACKEND_FIX)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(src, "Backend", value,
                          "must be a JSON object (flannel: error decoding Backend property of config: "
                          f"json: cannot unmarshal {_json_kind(value)} into Go value of type struct {{ Type string }})",
                          _BACKEND_FIX)
    backend = value or {}   # null decodes like {}: Type ""
    present, btype = _get(backend, "Type")
    if btype is not None and not isinstance(btype, str):
        raise ConfigError(src, "Backend.Type", btype, "must be a string", _BACKEND_FIX)
    conf.backend_type = (btype or "").lower()
    conf.backend = dict(backend)
    if conf.backend_type != "extension":
        shown = btype if present else None
        problem = ("no Type, so flannel would fail with \"unknown backend type: \"" if not btype
                   else "unsupported backend type")
        raise ConfigError(src, "Backend.Type", shown, problem, _BACKEND_FIX)

    for name in COMMAND_FIELDS.values():
        present, command = _get(conf.backend, name)
        if not present or command is None:
            continue
        if not isinstance(command, str):
            raise ConfigError(src, f"Backend.{name}", command,
                              "must be a string (flannel: error decoding backend config: json: cannot unmarshal "
                              f"{_json_kind(command)} into Go struct field .{name} of type string)",
                              f'write the command as one JSON string, e.g. "{name}": "/usr/local/bin/hook"')
        if command and not command.strip():
            raise ConfigError(src, f"Backend.{name}", command,
                              "is only whitespace (flannel splits it into no words and panics)",
                              "remove the key or give it a command")
        if command:
            conf.commands[name] = command

    present, hook = _get(conf.backend, "Hook")
    if present:
        if not isinstance(hook, str) or not hook.strip():
            raise ConfigError(src, "Backend.Hook", hook, "must be a non-empty string naming a Python hook",
                              'e.g. "Hook": "vxlan", "Hook": "host-gw" or "Hook": "package.module:Class"')
        module = hook.strip().rpartition(":")[0]
        if ("/" in module or module.endswith(".py")) and not module.endswith(".py"):
            raise ConfigError(src, "Backend.Hook", hook, "a hook file must be a Python source file ending in .py",
                              'e.g. "Hook": "hooks/my_hook.py:MyHook"')
        conf.hook = hook
    present, mtu = _get(conf.backend, "MTU")
    if present:
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise ConfigError(src, "Backend.MTU", mtu, "must be a whole number from 68 to 65535",
                              'e.g. "MTU": 1450, or remove it to use the interface MTU')
        conf.mtu = mtu
