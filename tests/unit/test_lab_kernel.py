"""The lab's neighbour-table pre-check, against a fake /proc: refuse, accept, tune, restore, hint."""
from __future__ import annotations

import pytest

from flannel_ext._lab import kernel
from flannel_ext._lab.state import LabError
from flannel_ext._util import neigh

from fake_proc import fake_proc


def test_estimate_counts_underlay_and_pod_entries_not_permanent_vteps():
    # 100 nodes x 1 pod: 99 underlay ARP + 1 pod, and the pod's gateway; the VTEP
    # neighbours are permanent, which gc_thresh3 does not count.
    assert kernel.estimate(100, 1, vxlan=True) == {"ipv4": 100 * (99 + 1 + 1), "ipv6": 100 * 6 * 4}
    assert kernel.estimate(3, 2, vxlan=False) == {"ipv4": 3 * (2 + 2 + 4), "ipv6": 3 * 7 * 4}


def test_read_table_sums_table_fulls_over_cpus(tmp_path):
    proc = fake_proc(tmp_path, entries=(3474, 60), fulls=(41000, 0))
    table = neigh.read_table("ipv4", proc)
    assert table == neigh.NeighTable("ipv4", (128, 512, 1024), 3474, 41000)
    assert neigh.read_table("ipv4", str(tmp_path / "nowhere")) is None


def test_a_big_vxlan_lab_is_refused_with_the_exact_sysctl_settings(tmp_path):
    proc = fake_proc(tmp_path)
    with pytest.raises(LabError) as exc:
        kernel.check_fits(100, 1, _vxlan_conf(tmp_path), tune=False, proc=proc)
    text = str(exc.value)
    assert "ipv4 neighbours: ~10100 for the lab (6 in use, permanent ones included), gc_thresh3 = 1024" in text
    assert "inotify instances: 200 for the daemons + 0 in use = 200, fs.inotify.max_user_instances = 128" in text
    assert ("sysctl -w net.ipv4.neigh.default.gc_thresh1=10240 net.ipv4.neigh.default.gc_thresh2=20480 "
            "net.ipv4.neigh.default.gc_thresh3=40960 net.ipv6.neigh.default.gc_thresh1=3072 "
            "net.ipv6.neigh.default.gc_thresh2=5120 net.ipv6.neigh.default.gc_thresh3=10240 "
            "fs.inotify.max_user_instances=512") in text
    assert "--tune-kernel" in text


def test_a_small_lab_fits_even_beside_many_permanent_entries(tmp_path):
    # A big vxlan node elsewhere holds 50,000 permanent neighbours: they do not count.
    proc = fake_proc(tmp_path, entries=(50000, 60))
    assert kernel.check_fits(10, 2, _vxlan_conf(tmp_path), tune=False, proc=proc).fits
    # 3/4 of gc_thresh3 is the lab's share: 30 nodes x 1 pod make 930 > 768.
    result = kernel.plan(30, 1, vxlan=True, proc=proc)
    assert list(result.settings) == ["net.ipv4.neigh.default.gc_thresh1", "net.ipv4.neigh.default.gc_thresh2",
                                     "net.ipv4.neigh.default.gc_thresh3"]
    assert result.settings["net.ipv4.neigh.default.gc_thresh1"] == 51200     # the estimate + in use


def test_no_readable_limits_means_no_refusal(tmp_path):
    assert kernel.plan(100, 1, vxlan=True, proc=str(tmp_path / "empty")).fits


def test_vxlan_needs_one_more_ipv6_interface_than_host_gw(tmp_path):
    proc = fake_proc(tmp_path, thresholds=(128, 512, 14000), v6_thresholds=(128, 512, 3000), inotify=1024)
    assert kernel.plan(100, 1, vxlan=False, proc=proc).fits                  # ipv6: 2000 <= 2250
    assert list(kernel.plan(100, 1, vxlan=True, proc=proc).settings) == [    # ipv6: 2400 > 2250
        "net.ipv6.neigh.default.gc_thresh1", "net.ipv6.neigh.default.gc_thresh2", "net.ipv6.neigh.default.gc_thresh3"]



def test_tune_applies_and_restore_gives_back_only_what_is_still_ours(tmp_path):
    proc = fake_proc(tmp_path)
    result = kernel.plan(100, 1, vxlan=True, proc=proc)
    old = kernel.apply(result.settings, proc)
    assert old["net.ipv4.neigh.default.gc_thresh3"] == 1024
    assert neigh.read_table("ipv4", proc).thresholds == (10240, 20480, 40960)
    # Someone else changed ipv6 gc_thresh3 meanwhile: theirs stays.
    neigh.write_sysctl("net.ipv6.neigh.default.gc_thresh3", 99999, proc)
    done = kernel.restore(old, result.settings, proc)
    assert "net.ipv6.neigh.default.gc_thresh3" not in done
    assert neigh.read_table("ipv4", proc).thresholds == (128, 512, 1024)
    assert neigh.read_table("ipv6", proc).thresholds == (128, 512, 99999)
    assert neigh.read_sysctl("fs.inotify.max_user_instances", proc) == 128


def test_a_failed_apply_undoes_what_it_wrote(tmp_path):
    proc = fake_proc(tmp_path)
    settings = {"net.ipv4.neigh.default.gc_thresh3": 4096, "net.ipv4.neigh.default.gc_thresh2": 2048,
                "net.ipv4.neigh.default.gc_thresh1": 1024}
    (tmp_path / "sys" / "net" / "ipv4" / "neigh" / "default" / "gc_thresh1").unlink()
    with pytest.raises(OSError):
        kernel.apply(settings, proc)
    assert neigh.read_sysctl("net.ipv4.neigh.default.gc_thresh3", proc) == 1024
    assert neigh.read_sysctl("net.ipv4.neigh.default.gc_thresh2", proc) == 512


def test_hint_names_a_full_table(tmp_path):
    proc = fake_proc(tmp_path, entries=(700, 60), fulls=(5, 0))
    before = kernel.tables(proc)
    assert kernel.full_table_hint(before, proc) is None          # old table_fulls are not news
    fake_proc(tmp_path, entries=(1024, 60), fulls=(3005, 0))
    hint = kernel.full_table_hint(before, proc)
    assert hint.startswith("the kernel's ipv4 neighbour table is full (1024 entries, gc_thresh3 = 1024, "
                           "table_fulls +3000 during this check")
    assert "net.ipv4.neigh.default.gc_thresh3" in hint


def _vxlan_conf(tmp_path) -> str:
    path = tmp_path / "vxlan.json"
    path.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "extension", "Hook": "vxlan"}}')
    return str(path)
