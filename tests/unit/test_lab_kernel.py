"""The lab's neighbour-table pre-check, against a fake /proc: refuse, accept, tune, restore, hint."""
from __future__ import annotations

import pytest

from flannel_ext._lab import kernel
from flannel_ext._lab.state import LabError
from flannel_ext._util import neigh

HEADER = ("entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast "
          "rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards table_fulls")


def fake_proc(root, *, thresholds=(128, 512, 1024), entries=(6, 60), fulls=(0, 0), inotify=128):
    """A /proc with the files the pre-check reads (two CPU rows per stat file)."""
    for family, used, full in (("ipv4", entries[0], fulls[0]), ("ipv6", entries[1], fulls[1])):
        d = root / "sys" / "net" / family / "neigh" / "default"
        d.mkdir(parents=True, exist_ok=True)
        for level, value in zip((1, 2, 3), thresholds, strict=True):
            (d / f"gc_thresh{level}").write_text(f"{value}\n")
        stat = root / "net" / "stat"
        stat.mkdir(parents=True, exist_ok=True)
        row = f"{used:08x} 00000010 00000001 00000004 00000100 00000050 00000000 00000000 00000000 " \
              f"00000000 00000000 00000000 {full:08x}"
        zero_row = row.rsplit(" ", 1)[0] + f" {0:08x}"
        (stat / neigh.STAT_FILES[family]).write_text(f"{HEADER}\n{row}\n{zero_row}\n")
    fs = root / "sys" / "fs" / "inotify"
    fs.mkdir(parents=True, exist_ok=True)
    (fs / "max_user_instances").write_text(f"{inotify}\n")
    return str(root)


def test_estimate_counts_underlay_vxlan_and_pod_entries():
    # vxlan, 100 nodes x 1 pod: 99 underlay ARP + 99 VTEP neighbours + 1 pod, and the pod's gateway.
    assert kernel.estimate(100, 1, vxlan=True) == {"ipv4": 100 * (99 * 2 + 1 + 1), "ipv6": 100 * 6 * 4}
    assert kernel.estimate(3, 2, vxlan=False)["ipv4"] == 3 * (2 + 2 + 4)


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
    assert "ipv4 neighbours: ~20000 for the lab + 6 in use = 20006, gc_thresh3 = 1024" in text
    assert "inotify instances: 200 for the daemons + 0 in use = 200, fs.inotify.max_user_instances = 128" in text
    assert ("sysctl -w net.ipv4.neigh.default.gc_thresh1=20480 net.ipv4.neigh.default.gc_thresh2=40960 "
            "net.ipv4.neigh.default.gc_thresh3=80896 net.ipv6.neigh.default.gc_thresh1=3072 "
            "net.ipv6.neigh.default.gc_thresh2=5120 net.ipv6.neigh.default.gc_thresh3=10240 "
            "fs.inotify.max_user_instances=512") in text
    assert "--tune-kernel" in text


def test_a_small_lab_fits_unless_the_table_is_already_nearly_full(tmp_path):
    proc = fake_proc(tmp_path)
    assert kernel.check_fits(3, 2, _vxlan_conf(tmp_path), tune=False, proc=proc).fits
    proc = fake_proc(tmp_path, entries=(1000, 60))
    result = kernel.plan(3, 2, vxlan=True, proc=proc)
    assert not result.fits and result.settings["net.ipv4.neigh.default.gc_thresh3"] == 5120
    assert "net.ipv6.neigh.default.gc_thresh3" not in result.settings


def test_no_readable_limits_means_no_refusal(tmp_path):
    assert kernel.plan(100, 1, vxlan=True, proc=str(tmp_path / "empty")).fits


def test_host_gw_needs_half_the_ipv4_entries_of_vxlan(tmp_path):
    proc = fake_proc(tmp_path, thresholds=(128, 512, 12000), inotify=1024)
    assert kernel.plan(100, 1, vxlan=False, proc=proc).short == []
    assert not kernel.plan(100, 1, vxlan=True, proc=proc).fits


def test_tune_applies_and_restore_gives_back_only_what_is_still_ours(tmp_path):
    proc = fake_proc(tmp_path)
    result = kernel.plan(100, 1, vxlan=True, proc=proc)
    old = kernel.apply(result.settings, proc)
    assert old["net.ipv4.neigh.default.gc_thresh3"] == 1024
    assert neigh.read_table("ipv4", proc).thresholds == (20480, 40960, 80896)
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
    proc = fake_proc(tmp_path, entries=(700, 60))
    before = kernel.tables(proc)
    assert kernel.full_table_hint(before, proc) is None
    fake_proc(tmp_path, entries=(1024, 60), fulls=(3000, 0))
    hint = kernel.full_table_hint(before, proc)
    assert hint.startswith("the kernel's ipv4 neighbour table is full (1024 entries, gc_thresh3 = 1024, "
                           "table_fulls +3000 during this check")
    assert "net.ipv4.neigh.default.gc_thresh3" in hint


def _vxlan_conf(tmp_path) -> str:
    path = tmp_path / "vxlan.json"
    path.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "extension", "Hook": "vxlan"}}')
    return str(path)
