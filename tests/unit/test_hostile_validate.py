"""Issue 11 §1: the validation gaps, closed, and log lines nobody can forge."""
from __future__ import annotations

import ipaddress
import json
import logging

import pytest

from flannel_ext._commands import logs
from flannel_ext._config.netconf import parse_netconf
from flannel_ext._hooks.base import Hook
from flannel_ext._runtime.validate import RejectedLease, to_remote
from flannel_ext._stores.lease import Lease, LeaseAttrs

V4, V6 = ipaddress.IPv4Network, ipaddress.IPv6Network


def config(**extra):
    return parse_netconf(json.dumps({"Network": "10.5.0.0/16", **extra,
                                     "Backend": {"Type": "extension", "SubnetAddCommand": "true"}}))


def lease(public_ip="192.168.1.2", *, v6_ip=None, subnet="10.5.1.0/24", v6=None, data="x"):
    return Lease(V4(subnet), LeaseAttrs.with_string_data(public_ip, data, public_ipv6=v6_ip),
                 V6(v6) if v6 else None)


def rejected(item, conf=None, hook=None) -> str:
    with pytest.raises(RejectedLease) as info:
        to_remote(item, conf or config(), hook or Hook())
    return info.value.rejection.detail


@pytest.mark.parametrize("v6_ip", ["fe80::1%$(touch /tmp/x)", "fd00::1%eth0\n", "fd00::1%eth0", "fd00::1\n"])
def test_public_ipv6_with_a_zone_or_newline_is_rejected(v6_ip):
    assert "PublicIPv6" in rejected(lease(v6_ip=v6_ip))


@pytest.mark.parametrize("v6", ["::/0", "fe80::/64", "fd00::/64"])
def test_ipv6_subnet_without_an_ipv6_network_is_rejected(v6):
    assert "no IPv6Network is configured" in rejected(lease(v6=v6))


def test_ipv6_subnet_must_be_inside_ipv6_network():
    conf = config(EnableIPv6=True, IPv6Network="fd00:10::/56")
    assert "is not inside" in rejected(lease(v6="fe80::/64"), conf)
    assert "is not inside" in rejected(lease(v6="::/0"), conf)
    assert to_remote(lease(v6="fd00:10:0:1::/64"), conf, Hook()).ipv6_subnet == V6("fd00:10:0:1::/64")


@pytest.mark.parametrize("ip", ["10.5.9.9", "10.5.1.1"])
def test_public_ip_inside_the_pod_network_is_rejected(ip):
    assert "inside the pod network 10.5.0.0/16" in rejected(lease(ip))


def test_public_ipv6_inside_the_pod_ipv6_network_is_rejected():
    conf = config(EnableIPv6=True, IPv6Network="fd00:10::/56")
    assert "PublicIPv6" in rejected(lease(v6_ip="fd00:10::5", v6="fd00:10:0:1::/64"), conf)


def test_a_valid_lease_passes():
    remote = to_remote(lease(v6_ip="fd00:99::5"), config(), Hook())
    assert (remote.public_ip, remote.public_ipv6, remote.backend_data) == ("192.168.1.2", "fd00:99::5", "x")


def test_a_hook_parser_that_raises_anything_is_a_rejection():
    class Picky(Hook):
        def parse_backend_data(self, lease):
            return {}["missing"]
    assert "KeyError" in rejected(lease(), hook=Picky())


def test_unforeseen_values_are_rejections_not_exceptions():
    odd = Lease(V4("10.5.1.0/24"), LeaseAttrs(public_ip=7, backend_type="extension"))  # type: ignore[arg-type]
    assert "PublicIP" in rejected(odd)


# --- log lines ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [
    ("10.5.1.0-24\n12:00:00.000 I runtime: all good", "10.5.1.0-24\\n12:00:00.000 I runtime: all good"),
    ("a\rb\x1b[2Jc\x00", "a\\rb\\x1b[2Jc\\x00"),
    ("rtl\u202eevil\u2028x", "rtl\\u202eevil\\u2028x"),
    ("bad\ud800", "bad\\ud800"),
    ("é ü 日本", "é ü 日本"),
])
def test_one_line_escapes_what_could_forge_a_line(text, shown):
    assert logs.one_line(text) == shown


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logged_keys_cannot_forge_lines(fmt, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup(fmt, "INFO", node="n\n1%(x)s")
        logging.getLogger("flannel_ext.test").warning("rejected lease %s (%s)", "10.5.1.0-24\nFAKE LINE",
                                                      "\ud800")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "FAKE LINE" in out
    if fmt == "json":
        assert json.loads(out)["msg"] == "rejected lease 10.5.1.0-24\\nFAKE LINE (\\ud800)"
    else:
        assert "[n\\n1%(x)s]" in out
