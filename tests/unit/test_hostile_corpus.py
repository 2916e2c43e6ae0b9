"""Issue 11 §1: no lease can stop a node. 1,000+ generated hostile entries per real store.

The corpus (bench/hostile_corpus.py, seeded) goes through a SQLite file written with raw
SQL, a real etcd, and the wire-level Kubernetes fake read by the real `kubernetes`
client: half before `list()`, half during `watch()`, then one healthy lease. Every
event passes the runtime's validation and every accepted lease runs the real shell
hook. Each bad entry must count as exactly one rejection, nothing may escape as an
exception, no `$(touch ...)` payload may run, and the healthy lease must arrive.
"""
from __future__ import annotations


import pytest

from etcd_server import etcd_server  # noqa: F401 - fixture
from hostile import corpus
from kube_fake import kube_api  # noqa: F401 - fixture

ENTRIES = 1000


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    path.mkdir()
    return path


def check(row: dict) -> None:
    assert row["crashed"] == 0, row["errors"]
    assert row["entries"] >= ENTRIES
    assert row["executed"] == 0, "a payload ran as shell code"
    assert row["rejected"] == row["bad"], f"{row['rejected']} rejections for {row['bad']} bad entries"
    assert row["good_delivered"], "the healthy lease written after the corpus never arrived"
    assert row["accepted"] == row["entries"] - row["bad"] + 1   # valid data leases, and the healthy one


def test_corpus_is_hostile_and_seeded(canary):
    entries = corpus.corpus("sqlite", canary, ENTRIES)
    kinds = {entry.kind for entry in entries}
    assert {"PublicIP", "PublicIPv6", "BackendType", "BackendData", "document", "key", "data"} <= kinds
    assert len({entry.key for entry in entries}) == len(entries)
    values = [e.value if isinstance(e.value, str) else "" for e in entries]
    assert any(v.count("[") >= 100_000 or v.count("{") >= 100_000 for v in values)   # deep nesting
    assert any("\\ud800" in v for v in values)                                         # lone surrogate
    assert any(isinstance(e.key, bytes) for e in entries)                             # BLOB keys
    assert any(isinstance(e.key, str) and e.key.endswith("\n") for e in entries)
    assert [e.key for e in corpus.corpus("sqlite", canary, ENTRIES)] == [e.key for e in entries]


@pytest.mark.timeout(120)
def test_sqlite_store_survives_the_corpus(tmp_path, canary):
    check(corpus.run_sqlite(tmp_path, corpus.corpus("sqlite", canary, ENTRIES), canary, timeout=60))


@pytest.mark.timeout(120)
def test_etcd_store_survives_the_corpus(etcd_server, tmp_path, canary):
    check(corpus.run_etcd(etcd_server.endpoint, tmp_path, corpus.corpus("etcd", canary, ENTRIES), canary,
                          timeout=60))


@pytest.mark.timeout(120)
def test_kube_store_survives_the_corpus(kube_api, tmp_path, canary):
    check(corpus.run_kube(kube_api, tmp_path, corpus.corpus("kube", canary, ENTRIES), canary, timeout=60))
