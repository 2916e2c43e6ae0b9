"""The programmed-state record: whole record once, then changes appended; what loads back."""
from __future__ import annotations

import ipaddress

from flannel_ext._hooks.base import RemoteLease
from flannel_ext._runtime import state


def lease(i: int, public_ip: str = "") -> tuple[str, RemoteLease]:
    subnet = ipaddress.IPv4Network(f"10.0.{i}.0/24")
    key = f"10.0.{i}.0-24"
    return key, RemoteLease(subnet=subnet, public_ip=public_ip or f"172.18.0.{i}", backend_data="02:00:00:00:00:01",
                            key=key)


def test_changes_are_appended_and_load_back(tmp_path):
    path = str(tmp_path / "programmed.json")
    programmed = dict(lease(i) for i in range(1, 201))
    state.save(path, programmed, own="10.0.0.0-24")
    record = (tmp_path / "programmed.json").read_text()
    key, changed = lease(7, "172.18.9.9")
    programmed[key] = changed
    del programmed["10.0.8.0-24"]
    state.save(path, programmed, own="10.0.0.0-24")
    assert (tmp_path / "programmed.json").read_text() == record          # not rewritten
    assert len((tmp_path / "programmed.json.log").read_text().splitlines()) == 2
    assert state.load(path) == programmed


def test_a_long_log_is_folded_into_the_record(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "COMPACT_AFTER", 3)
    path = str(tmp_path / "programmed.json")
    programmed = dict(lease(i) for i in range(1, 4))
    state.save(path, programmed)
    for n in range(10):                  # the log never outgrows the record (3 leases)
        programmed.update([lease(2, f"172.18.7.{n}")])
        state.save(path, programmed)
        log = tmp_path / "programmed.json.log"
        assert not log.exists() or len(log.read_text().splitlines()) <= 3
    assert state.load(path) == programmed


def test_an_older_records_log_is_never_replayed(tmp_path):
    """A crash between rewriting the record and removing the log leaves the old log."""
    path = str(tmp_path / "programmed.json")
    programmed = dict(lease(i) for i in range(1, 4))
    state.save(path, programmed)
    programmed.update([lease(2, "172.18.5.5")])
    state.save(path, programmed)
    stale = (tmp_path / "programmed.json.log").read_text()
    state._saved.clear()                              # a restart: the next save rewrites the record
    programmed.update([lease(2, "172.18.6.6")])
    state.save(path, programmed)
    (tmp_path / "programmed.json.log").write_text(stale)
    assert state.load(path)["10.0.2.0-24"].public_ip == "172.18.6.6"


def test_a_torn_last_line_is_ignored(tmp_path):
    path = str(tmp_path / "programmed.json")
    programmed = dict(lease(i) for i in range(1, 4))
    state.save(path, programmed)
    programmed.update([lease(4)])
    state.save(path, programmed)
    with open(path + ".log", "a") as handle:
        handle.write('{"gen": "x", "put": "10.0.9.0-24", "lea')
    assert state.load(path) == programmed
