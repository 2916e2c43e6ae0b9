"""The write-ahead state journal and the state-dir lock (no root: plain files)."""
from __future__ import annotations

import ipaddress
import json
import logging
import os

import pytest

from flannel_ext._hooks.base import RemoteLease
from flannel_ext._runtime.state import StateJournal
from flannel_ext._runtime.statedir import KernelIdentity, StateDirBusy, StateDirLock
from flannel_ext._runtime.stats import NodeStats

HERE = KernelIdentity(netns=4026531840, boot_id="boot-a", network="10.50.0.0/16")


def lease(n: int, ip: str = "192.168.77.9") -> RemoteLease:
    return RemoteLease(subnet=ipaddress.IPv4Network(f"10.50.{n}.0/24"), ipv6_subnet=None, public_ip=ip,
                       public_ipv6=None, backend_type="extension", backend_data="", key=f"10.50.{n}.0-24")


def journal(path, identity=HERE, **kw) -> StateJournal:
    j = StateJournal(str(path), identity, **kw)
    j.recover()
    return j


def test_an_add_is_recorded_before_it_runs_and_survives_without_done(tmp_path, caplog):
    j = journal(tmp_path)
    j.intend("add", [lease(1), lease(2)])
    j.done("add", {"10.50.1.0-24": None, "10.50.2.0-24": None})
    j.intend("add", [lease(3)])          # killed here: the hook may or may not have run
    with caplog.at_level(logging.WARNING):
        recovered = StateJournal(str(tmp_path), HERE).recover()
    assert sorted(recovered) == ["10.50.1.0-24", "10.50.2.0-24", "10.50.3.0-24"]
    assert "1 hook call(s) were in flight" in caplog.text and "10.50.3.0-24" in caplog.text


def test_only_a_remove_that_succeeded_drops_an_entry(tmp_path):
    j = journal(tmp_path)
    j.intend("add", [lease(1), lease(2), lease(3)])
    j.done("add", {"10.50.1.0-24": None, "10.50.2.0-24": None, "10.50.3.0-24": RuntimeError("x")})
    j.intend("remove", [lease(1), lease(2)])
    j.done("remove", {"10.50.1.0-24": None, "10.50.2.0-24": RuntimeError("busy")})
    # a failed add may have half-applied; a failed remove may have left it: both stay
    assert sorted(StateJournal(str(tmp_path), HERE).recover()) == ["10.50.2.0-24", "10.50.3.0-24"]


def test_a_changed_lease_records_the_new_data(tmp_path):
    j = journal(tmp_path)
    j.intend("add", [lease(1, "192.168.77.5")])
    j.done("add", {"10.50.1.0-24": None})
    j.intend("remove", [lease(1, "192.168.77.5")])
    j.done("remove", {"10.50.1.0-24": None})
    j.intend("add", [lease(1, "192.168.77.6")])
    assert StateJournal(str(tmp_path), HERE).recover()["10.50.1.0-24"].public_ip == "192.168.77.6"


def test_a_torn_last_line_is_skipped(tmp_path):
    j = journal(tmp_path)
    j.intend("add", [lease(1)])
    with open(tmp_path / "journal.log", "a") as handle:
        handle.write('{"op":"intend","kind":"add","leases":{"10.50.2.0-24":{"sub')
    assert sorted(StateJournal(str(tmp_path), HERE).recover()) == ["10.50.1.0-24"]


def test_a_crash_between_snapshot_and_truncate_replays_harmlessly(tmp_path):
    j = journal(tmp_path)
    j.intend("add", [lease(1), lease(2)])
    j.intend("remove", [lease(2)])
    j.done("remove", {"10.50.2.0-24": None})
    log_text = (tmp_path / "journal.log").read_text()
    j.close()                                             # snapshot, then an empty journal
    (tmp_path / "journal.log").write_text(log_text)       # as if killed before the truncate
    assert sorted(StateJournal(str(tmp_path), HERE).recover()) == ["10.50.1.0-24"]


def test_long_journals_are_compacted(tmp_path):
    """At most max(compact_every, 2 x entries) lines: a snapshot's cost is amortised."""
    j = journal(tmp_path, compact_every=8)
    for n in range(40):
        j.intend("add", [lease(n % 4, f"192.168.77.{n}")])
        j.done("add", {lease(n % 4).key: None})
    assert len((tmp_path / "journal.log").read_text().splitlines()) < 8
    recovered = StateJournal(str(tmp_path), HERE).recover()
    assert {k: v.public_ip for k, v in recovered.items()} == {
        f"10.50.{n}.0-24": f"192.168.77.{36 + n}" for n in range(4)}


@pytest.mark.parametrize("other, kept, message", [
    (KernelIdentity(HERE.netns, "boot-b", HERE.network), 0, "before a reboot"),
    (KernelIdentity(1234, HERE.boot_id, HERE.network), 0, "in another network namespace"),
    (KernelIdentity(HERE.netns, HERE.boot_id, "10.99.0.0/16"), 0, "was written for Network 10.50.0.0/16"),
    (HERE, 1, ""),
])
def test_a_record_from_another_kernel_or_network_is_not_acted_on(tmp_path, caplog, other, kept, message):
    j = journal(tmp_path)
    j.intend("add", [lease(1)])
    j.close()
    with caplog.at_level(logging.WARNING):
        assert len(StateJournal(str(tmp_path), other).recover()) == kept
    assert message in caplog.text
    doc = json.loads((tmp_path / "programmed.json").read_text())
    assert (doc["netns"], doc["boot_id"], doc["network"]) == (other.netns, other.boot_id, other.network)


def test_a_version_1_state_file_is_still_read(tmp_path):
    (tmp_path / "programmed.json").write_text(json.dumps({"version": 1, "own": "", "programmed": {
        "10.50.1.0-24": {"subnet": "10.50.1.0/24", "public_ip": "192.168.77.9"}}}))
    assert list(StateJournal(str(tmp_path), HERE).recover()) == ["10.50.1.0-24"]


def test_a_write_error_is_reported_retried_and_cleared(tmp_path, caplog):
    now = [0.0]
    stats = NodeStats()
    j = journal(tmp_path, stats=stats, clock=lambda: now[0])
    os.unlink(tmp_path / "journal.log")
    j.close()                               # drop the open journal fd
    os.mkdir(tmp_path / "journal.log")      # a real EISDIR on every write from now on
    with caplog.at_level(logging.WARNING):
        for n in range(3):
            j.intend("add", [lease(n)])
            j.done("add", {lease(n).key: None})
    assert "cannot write state in" in stats.state_write_error and "EISDIR" in stats.state_write_error
    assert caplog.text.count("cannot write state in") == 1          # one log line per outage
    assert len(j.entries) == 3                                      # programming went on
    os.rmdir(tmp_path / "journal.log")
    now[0] += 60
    j.maintain()                                                    # the backoff retry
    assert stats.state_write_error == "" and "work again" in caplog.text
    assert len(StateJournal(str(tmp_path), HERE).recover()) == 3


def test_a_second_holder_of_the_state_dir_is_refused_with_the_pid(tmp_path):
    with StateDirLock(str(tmp_path)):
        with pytest.raises(StateDirBusy) as info:
            StateDirLock(str(tmp_path)).acquire(wait=0.2)
        assert f"in use by flannel-ext pid {os.getpid()}" in str(info.value)
        assert "--state-dir" in str(info.value)
    StateDirLock(str(tmp_path)).acquire().release()   # free again once released


def test_lab_status_shows_a_state_write_error(tmp_path, monkeypatch):
    from flannel_ext._lab import ops
    from flannel_ext._lab.state import Lab, Node

    monkeypatch.setenv("FLANNEL_EXT_LAB_ROOT", str(tmp_path))
    lab = Lab("crashlab", "net-conf.json", "sqlite:x.db")
    lab.nodes["n1"] = Node("n1", "crashlab-n1", 0, "192.168.100.1")
    os.makedirs(lab.state_dir("n1"))
    error = "cannot write state in /x: No space left on device (ENOSPC)"
    with open(os.path.join(lab.state_dir("n1"), "stats.json"), "w") as handle:
        json.dump({"ready": True, "state_write_error": error}, handle)
    rows = ops.status_rows(lab)
    assert rows[0]["state_error"] == error
    assert f"  n1: {error}" in ops.format_status(lab, rows).splitlines()


def test_an_unusable_state_dir_is_one_clear_error(tmp_path):
    from flannel_ext._runtime.statedir import StateDirError
    (tmp_path / "file").write_text("")
    with pytest.raises(StateDirError) as info:
        StateDirLock(str(tmp_path / "file" / "state")).acquire()
    assert "cannot lock the state dir" in str(info.value) and "--state-dir" in str(info.value)


def test_a_checkpoint_compacts_only_a_journal_longer_than_twice_the_table(tmp_path):
    """The dispatcher checkpoints after every pass: a snapshot of N entries each time the
    journal passes `compact_every` lines would be O(N) per ~256 events at N = 10,000."""
    j = journal(tmp_path, compact_every=8)
    j.intend("add", [lease(n) for n in range(100)])
    j.done("add", {lease(n).key: None for n in range(100)})
    for n in range(20):
        j.intend("add", [lease(n, f"192.168.77.{n + 10}")])
        j.done("add", {lease(n).key: None})
        j.checkpoint()
    assert len((tmp_path / "journal.log").read_text().splitlines()) == 42   # not compacted yet
    for n in range(80):
        j.intend("add", [lease(n, f"192.168.78.{n}")])
        j.done("add", {lease(n).key: None})
        j.checkpoint()
    assert len((tmp_path / "journal.log").read_text().splitlines()) < 200
    recovered = StateJournal(str(tmp_path), HERE).recover()
    assert recovered[lease(79).key].public_ip == "192.168.78.79" and len(recovered) == 100
