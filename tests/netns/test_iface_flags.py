"""flanneld's interface flags through `run --dry-run` in a namespace: repeatable --iface in
priority order, --iface-regex, --iface-can-reach, FLANNELD_IFACE, and one-line errors.

    eth0 10.1.0.1/24 (default route)   eth1 10.2.0.1/24   eth2 (no IPv4)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from flannel_ext._util.netns import create_netns, sh

CONF = {"Network": "10.50.0.0/16", "Backend": {"Type": "extension", "PostStartupCommand": "true"}}


@pytest.fixture
def ns(netns_prefix):
    name = create_netns(netns_prefix + "if")
    for i, addr in enumerate(("10.1.0.1/24", "10.2.0.1/24", None)):
        sh(["ip", "-n", name, "link", "add", f"eth{i}", "type", "veth", "peer", "name", f"peer{i}"])
        if addr:
            sh(["ip", "-n", name, "addr", "add", addr, "dev", f"eth{i}"])
        sh(["ip", "-n", name, "link", "set", f"eth{i}", "up"])
        sh(["ip", "-n", name, "link", "set", f"peer{i}", "up"])
    sh(["ip", "-n", name, "route", "add", "default", "dev", "eth0"])
    return name


def chosen(ns, tmp_path, *flags, env=None):
    """(exit code, (FLANNEL_IFACE, PUBLIC_IP) the PostStartup hook would get, stderr)."""
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps(CONF))
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "flannel_ext", "run", "--dry-run",
                           "--net-conf", str(conf), "--store", f"sqlite:{tmp_path}/x.db",
                           "--state-dir", str(tmp_path / "st"), *flags],
                          capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, **(env or {})})
    found = re.search(r"PUBLIC_IP=(\S+) PUBLIC_IPV6='' FLANNEL_IFACE=(\S+) ", proc.stderr)
    return proc.returncode, (found.group(2), found.group(1)) if found else None, proc.stderr


@pytest.mark.parametrize("flags,expected", [
    ((), ("eth0", "10.1.0.1")),                                           # the default route's
    (("--iface", "eth1", "--iface", "eth0"), ("eth1", "10.2.0.1")),      # first given wins
    (("-iface", "nosuch", "-iface=eth1"), ("eth1", "10.2.0.1")),         # fallback in order
    (("--iface=10.2.0.1",), ("eth1", "10.2.0.1")),                       # by address
    (("--iface", "eth2", "--iface", "eth1"), ("eth1", "10.2.0.1")),      # no IPv4 on eth2: next
    (("--iface-regex", r"^10\.2\."), ("eth1", "10.2.0.1")),              # regex on addresses
    (("-iface-regex=th1$",), ("eth1", "10.2.0.1")),                      # then on names
    (("--iface", "nosuch", "--iface-regex", "eth1"), ("eth1", "10.2.0.1")),
    (("--iface-can-reach", "10.2.0.77"), ("eth1", "10.2.0.1")),          # the route's interface
    (("--iface", "eth1", "--iface-can-reach", "10.1.0.9"), ("eth1", "10.2.0.1")),  # --iface first
], ids=lambda v: " ".join(v) if isinstance(v, tuple) and v and v[0].startswith("-") else None)
def test_interface_choice(ns, tmp_path, flags, expected):
    rc, got, err = chosen(ns, tmp_path, *flags)
    assert rc == 0, err
    assert got == expected


def test_iface_from_the_environment_as_a_list(ns, tmp_path):
    rc, got, err = chosen(ns, tmp_path, env={"FLANNELD_IFACE": "nosuch,eth1"})
    assert (rc, got) == (0, ("eth1", "10.2.0.1")), err


def test_nothing_matching_is_one_line_naming_what_was_tried(ns, tmp_path):
    rc, got, err = chosen(ns, tmp_path, "--iface", "eth9", "-iface=eth2", "--iface-regex", "^zz")
    assert rc == 2 and got is None
    assert err.strip().splitlines() == [
        "flannel-ext: error: --iface: no interface with an IPv4 address matches --iface eth9, --iface eth2, "
        "--iface-regex ^zz; see `ip addr` for the names and addresses in this network namespace"]


def test_a_bad_regex_is_one_line(ns, tmp_path):
    rc, _, err = chosen(ns, tmp_path, "--iface-regex", "(")
    assert rc == 2 and "Traceback" not in err
    assert err.strip().startswith("flannel-ext: error: --iface-regex: not a regular expression")
