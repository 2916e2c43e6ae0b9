"""A directory laid out like /proc, with the files the neighbour-table readers use."""
from __future__ import annotations

from flannel_ext._util import neigh

HEADER = ("entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast "
          "rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards table_fulls")


def fake_proc(root, *, thresholds=(128, 512, 1024), v6_thresholds=None, entries=(6, 60), fulls=(0, 0),
              inotify=128):
    """A /proc with the files the pre-check reads (two CPU rows per stat file)."""
    for family, used, full in (("ipv4", entries[0], fulls[0]), ("ipv6", entries[1], fulls[1])):
        d = root / "sys" / "net" / family / "neigh" / "default"
        d.mkdir(parents=True, exist_ok=True)
        limits = v6_thresholds if family == "ipv6" and v6_thresholds else thresholds
        for level, value in zip((1, 2, 3), limits, strict=True):
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
