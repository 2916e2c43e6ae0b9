"""The vxlan recipe warns once when its peers' underlay ARP entries near gc_thresh3."""
from __future__ import annotations

import ipaddress
import logging

from flannel_ext import HookContext, RemoteLease
from flannel_ext import netlink
from flannel_ext._hooks.loader import load_python_hook


def _leases(first: int, last: int) -> list[RemoteLease]:
    return [RemoteLease(subnet=ipaddress.IPv4Network(f"10.0.{i}.0/24"), public_ip=f"172.18.0.{i}",
                        backend_data="02:00:00:00:00:01", key=f"10.0.{i}.0-24") for i in range(first, last + 1)]


def test_warns_once_past_three_quarters_of_gc_thresh3(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(netlink, "neigh_table", lambda family: netlink.NeighTable(family, (16, 32, 50), 50, 0))
    hook = load_python_hook("vxlan", {})
    ctx = HookContext(network=ipaddress.IPv4Network("10.0.0.0/16"), options={}, log=logging.getLogger("t"),
                      state_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        hook._count_peers("replace", _leases(1, 30), {}, ctx)         # 30 ARP entries: quiet
        assert not caplog.records
        hook._count_peers("replace", _leases(31, 40), {"10.0.40.0-24": Exception()}, ctx)
        assert len(caplog.records) == 1                               # 39 peers: 39 >= 37.5
        hook._count_peers("replace", _leases(41, 45), {}, ctx)
    [record] = caplog.records
    assert "39 peers need ~39 neighbour entries" in record.getMessage()
    assert "net.ipv4.neigh.default.gc_thresh3 = 50" in record.getMessage()
    assert "sysctl -w net.ipv4.neigh.default.gc_thresh1=78" in record.getMessage()


def test_removals_count_down(monkeypatch, tmp_path):
    monkeypatch.setattr(netlink, "neigh_table", lambda family: None)
    hook = load_python_hook("vxlan", {})
    ctx = HookContext(network=ipaddress.IPv4Network("10.0.0.0/16"), options={}, log=logging.getLogger("t"),
                      state_dir=str(tmp_path))
    hook._count_peers("replace", _leases(1, 10), {}, ctx)
    hook._count_peers("del", _leases(1, 4), {}, ctx)
    assert len(hook._peers) == 6
