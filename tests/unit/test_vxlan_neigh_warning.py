"""The vxlan recipes, Python and shell, warn once when their peers' underlay ARP entries
near gc_thresh3. The kernel's files are stood in for by a directory laid out like /proc
(`tests/fake_proc.py`, shared with the lab's pre-check tests)."""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from flannel_ext import HookContext, RemoteLease
from flannel_ext import netlink
from flannel_ext._config.netconf import parse_netconf
from flannel_ext._hooks.loader import load_python_hook
from flannel_ext._hooks.shell import ShellHook

from fake_proc import fake_proc

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _leases(first: int, last: int) -> list[RemoteLease]:
    return [RemoteLease(subnet=ipaddress.IPv4Network(f"10.0.{i}.0/24"), public_ip=f"172.18.0.{i}",
                        backend_data="02:00:00:00:00:01", key=f"10.0.{i}.0-24") for i in range(first, last + 1)]


def _ctx(tmp_path: Path) -> HookContext:
    return HookContext(network=ipaddress.IPv4Network("10.0.0.0/16"), options={}, log=logging.getLogger("t"),
                       state_dir=str(tmp_path / "state"))


def test_warns_once_past_three_quarters_of_gc_thresh3(caplog, tmp_path):
    hook = load_python_hook("vxlan", {})
    hook.peers = netlink.PeerCount("vxlan", proc=fake_proc(tmp_path, thresholds=(16, 32, 50), entries=(50, 0)))
    ctx = _ctx(tmp_path)
    with caplog.at_level(logging.WARNING):
        hook._count_peers("replace", _leases(1, 30), {}, ctx)         # 30 ARP entries: quiet
        assert not caplog.records
        hook._count_peers("replace", _leases(31, 40), {"10.0.40.0-24": Exception()}, ctx)
        assert len(caplog.records) == 1     # at the 38th peer (38 >= 37.5); the 40th failed
        hook._count_peers("replace", _leases(41, 45), {}, ctx)
    [record] = caplog.records
    assert "vxlan: 38 peers need ~38 neighbour entries" in record.getMessage()
    assert "net.ipv4.neigh.default.gc_thresh3 = 50 (50 entries in use)" in record.getMessage()
    assert "sysctl -w net.ipv4.neigh.default.gc_thresh1=76" in record.getMessage()


def test_removals_count_down(tmp_path):
    hook = load_python_hook("vxlan", {})
    hook.peers = netlink.PeerCount("vxlan", proc=str(tmp_path / "no-proc"))   # a child namespace
    ctx = _ctx(tmp_path)
    hook._count_peers("replace", _leases(1, 10), {}, ctx)
    hook._count_peers("del", _leases(1, 4), {}, ctx)
    assert len(hook.peers) == 6


def test_the_shell_vxlan_recipe_warns_once_too(caplog, tmp_path):
    """recipes/vxlan.json's SubnetAddCommand, run for real (its `ip` calls fail outside a
    node, so the command is swapped for `true`: the count is the hook's, not the recipe's)."""
    config = parse_netconf((RECIPES / "vxlan.json").read_text(), "vxlan.json")
    hook = ShellHook.from_config(config)
    assert "subnet_add" in hook.commands
    hook.commands = {**hook.commands, "subnet_add": "true", "subnet_remove": "true"}
    hook.peers = netlink.PeerCount("SubnetAddCommand", proc=fake_proc(tmp_path, thresholds=(2, 4, 8), entries=(3, 0)))
    ctx = _ctx(tmp_path)
    with caplog.at_level(logging.WARNING):
        hook.subnet_add_batch(_leases(1, 5), ctx)        # 5 < 6
        assert not [r for r in caplog.records if "neighbour" in r.getMessage()]
        hook.subnet_remove(_leases(1, 1)[0], ctx)
        hook.subnet_add_batch(_leases(1, 2), ctx)        # 5 again (2 was there): quiet
        assert not [r for r in caplog.records if "neighbour" in r.getMessage()]
        hook.subnet_add_batch(_leases(7, 9), ctx)        # 6, 7, 8 peers: one warning, at 6
    warnings = [r.getMessage() for r in caplog.records if "neighbour" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("SubnetAddCommand: 6 peers need ~6 neighbour entries")
    assert len(hook.peers) == 8
