"""`flannel-ext hook` runs one hook as the runtime would; --dry-run changes nothing."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from examples import FLANNEL_EXAMPLES
from flannel_ext.testing import routes

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOSTGW_CONFS = [ROOT / "recipes" / "host-gw.json", FLANNEL_EXAMPLES / "extension-hostgw.json"]


def hook(ns, *args):
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "flannel_ext", "hook", *args],
                          capture_output=True, text=True, timeout=60)


def kernel_state(ns):
    return json.dumps([routes(ns), subprocess.run(["ip", "-n", ns, "-j", "link"], capture_output=True,
                                                  text=True).stdout])


@pytest.mark.parametrize("conf", [c for c in HOSTGW_CONFS if c.exists()], ids=lambda c: c.name)
def test_hook_subnet_add(underlay, netns_prefix, tmp_path, conf):
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    gw = str(underlay.network.network_address + 9)
    before = kernel_state(ns)
    dry = hook(ns, "SubnetAdd", "--net-conf", str(conf), "--subnet", "10.50.3.0/24", "--public-ip", gw,
               "--iface", "eth0", "--state-dir", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "SUBNET=10.50.3.0/24" in dry.stdout and f"PUBLIC_IP={gw}" in dry.stdout
    assert kernel_state(ns) == before

    real = hook(ns, "SubnetAdd", "--net-conf", str(conf), "--subnet", "10.50.3.0/24", "--public-ip", gw,
                "--iface", "eth0", "--state-dir", str(tmp_path))
    assert real.returncode == 0, real.stdout + real.stderr
    assert "exit code: 0" in real.stdout
    assert [r["gateway"] for r in routes(ns) if r.get("dst") == "10.50.3.0/24"] == [gw]


def test_hook_rejects_bad_lease(underlay, netns_prefix, tmp_path):
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    conf = HOSTGW_CONFS[1]
    out = hook(ns, "SubnetAdd", "--net-conf", str(conf), "--subnet", "10.99.3.0/24", "--public-ip",
               "192.168.77.9", "--iface", "eth0", "--state-dir", str(tmp_path))
    assert out.returncode == 1
    assert "rejected" in out.stdout and "not inside Network" in out.stdout
    assert not [r for r in routes(ns) if r.get("dst") == "10.99.3.0/24"]


def test_run_dry_run_touches_nothing(underlay, netns_prefix, tmp_path):
    from flannel_ext._stores.sqlite import SqliteStore
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    db = tmp_path / "leases.db"
    store = SqliteStore(str(db))
    store.put_raw("10.50.7.0-24", '{"PublicIP":"192.168.77.30","PublicIPv6":null,"BackendType":"extension"}')
    revision = store.list().revision
    store.close()
    before = kernel_state(ns)
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "flannel_ext", "run",
                          "--dry-run", "--net-conf", str(HOSTGW_CONFS[1]), "--store", f"sqlite:{db}",
                          "--iface", "eth0", "--subnet-file", str(tmp_path / "subnet.env"),
                          "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "SubnetAddCommand" in out.stderr and "10.50.7.0-24" in out.stderr
    assert "(dry run) would write" in out.stderr
    assert kernel_state(ns) == before
    assert not (tmp_path / "subnet.env").exists()
    store = SqliteStore(str(db))
    assert store.list().revision == revision, "a dry run writes nothing to the store"
    store.close()
