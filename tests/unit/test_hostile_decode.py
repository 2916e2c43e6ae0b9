"""Issue 11 §1: decoding untrusted store entries is bounded and exception-total.

Go's encoding/json is the reference for lease JSON: keys match case-insensitively with
Go's folding, the LAST matching key wins (golang/go#43664, #47984), NaN is not JSON.
"""
from __future__ import annotations

import ipaddress
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from flannel_ext.testing import EventCollector

from flannel_ext._stores.kube_annotations import AnnotationNames, NodeTracker
from flannel_ext._stores.lease import (EventType, LeaseAttrs, MAX_VALUE_BYTES, display_key, parse_entry,
                                      parse_subnet_key)
from flannel_ext._stores.sqlite import NEXT_EXPIRY, SqliteStore, _next_expiry
from flannel_ext._util import gojson

GOOD = '{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"extension","BackendData":"x"}'


# --- gojson.decode: one JSONError for anything, before Python's recursion is reached ----

@pytest.mark.parametrize("text, reason", [
    ("[" * 100_000 + "]" * 100_000, "nested more than 64"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested more than 64"),
    ("[" * 100_000, "nested more than 64"),                 # unbalanced, still bounded
    ('"\\ud800"', "lone UTF-16 surrogate"),
    ('"a\\udc00b"', "lone UTF-16 surrogate"),
    ('{"\\ud800":1}', "lone UTF-16 surrogate"),              # keys too
    ('"\ud800"', "lone UTF-16 surrogate"),                   # a raw surrogate in the text
    ("NaN", "NaN is not valid JSON"),
    ("[-Infinity]", "-Infinity is not valid JSON"),
    ("1e999", "out of range"),
    ("1" * 5000, "invalid JSON"),                           # over Python's int digit limit
    (b"\xff{}", "not UTF-8"),
    ('"x"'.encode("utf-16"), "not UTF-8"),                  # json.loads(bytes) would sniff UTF-16
    ("\ufeff{}", "byte-order mark"),
    ("{'a': 1}", "invalid JSON at line 1, column 2"),
    ('{"a":1,}', "invalid JSON"),
    ("", "invalid JSON"),
    (7, "not text"),
])
def test_decode_rejects_with_one_error(text, reason):
    with pytest.raises(gojson.JSONError, match=reason):
        gojson.decode(text)


def test_decode_limits_size_before_parsing():
    with pytest.raises(gojson.JSONError, match="over the limit of 100") as info:
        gojson.decode(" " * 101 + "1", max_bytes=100)
    assert info.value.over_limit


def test_depth_prescan_ignores_brackets_in_strings():
    assert gojson.decode('["' + "[" * 1000 + '"]') == ["[" * 1000]
    assert gojson.nesting_depth('{"a":[1,{"b":"]]]"}]}') == 3
    assert gojson.decode("[" * 64 + "]" * 64) is not None


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text", [
    '"\\' * 32000 + "[" * 100,           # a string-matching regex backtracks quadratically here (34 s)
    "[" * 100 + '"\\\\' * 21000,
    '["\\"' * 16000,
])
def test_depth_prescan_is_linear_on_escapes_and_quotes(text):
    with pytest.raises(gojson.JSONError):
        gojson.decode(text, max_bytes=65536)


def test_valid_surrogate_pairs_are_fine():
    assert gojson.decode('"\\ud834\\udd1e"') == "\U0001d11e"


@pytest.mark.parametrize("doc, expected", [
    ('{"PublicIP":"a","publicip":"b"}', "b"),                    # the last match wins...
    ('{"publicip":"a","PublicIP":"b"}', "b"),                    # ...exact or not (Go #43664)
    ('{"PublicIP":"a","publicip":"b","PublicIP":"c"}', "c"),     # a repeated exact key moves last
    ('{"PUBLICIP":"a"}', "a"),
    ('{"Public_IP":"a"}', None),                                 # v1 does not ignore _ or -
    ('{"PublicIP\u0130":"a"}', None),
])
def test_field_matches_as_go_does(doc, expected):
    assert gojson.field(gojson.decode(doc), "PublicIP") == expected


def test_field_uses_go_simple_folding():
    # U+212A KELVIN SIGN folds to k and U+017F LONG S to s in Go's foldName; ß does not fold.
    assert gojson.field({"bac\u212aend": 1}, "Backend") == 1
    assert gojson.field({"\u017fubnetLen": 24}, "SubnetLen") == 24
    assert gojson.field({"\u00dfubnetLen": 24}, "SubnetLen") is None
    assert gojson.field_key({"Hook": 1, "HOOK": 2}, "hook") == "HOOK"


# --- the lease model ---------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "10.5.1.0-24\n",               # Python's `$` matches before a trailing newline
    "10.5.1.0-24 ", "10.5.1.0-024", "010.5.1.0-24", "10.5.1.7-24", "١٠.5.1.0-24",
    "10.5.1.0-24&fc00:0:0:1:0:0:0:0-64",   # a long spelling of the real key's subnets
    "10.5.1.0-24&FC00:0:0:1::-64", "9" * 5000, b"10.5.1.0-24", None,
])
def test_only_the_canonical_key_names_a_subnet(key):
    with pytest.raises(ValueError):
        parse_subnet_key(key)


def test_canonical_keys_parse():
    assert parse_subnet_key("10.5.1.0-24&fc00:0:0:1::-64") == (
        ipaddress.IPv4Network("10.5.1.0/24"), ipaddress.IPv6Network("fc00:0:0:1::/64"))


@pytest.mark.parametrize("value", [
    '{"PublicIP":"1.2.3.4","BackendData":"\\ud800"}',
    '{"PublicIP":"1.2.3.4","BackendData":' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"PublicIP":"1.2.3.4","BackendData":"' + "x" * MAX_VALUE_BYTES + '"}',
    '{"PublicIP":"1.2.3.4","BackendData":NaN}',
    '{"PublicIP":"1.2.3.4","BackendType":5}',
    '{"PublicIP":"1.2.3.4","publicip":7}',
    b'{"PublicIP":"1.2.3.4","BackendData":"\xff"}',
    12, None, b"", [],
])
def test_every_bad_value_is_one_value_error(value):
    with pytest.raises(ValueError):
        parse_entry("10.5.1.0-24", value)


def test_parse_entry_rejects_a_non_numeric_expiration():
    with pytest.raises(ValueError, match="expiration"):
        parse_entry("10.5.1.0-24", GOOD, "tomorrow")
    assert parse_entry("10.5.1.0-24", GOOD, 5).expiration == 5.0


def test_duplicate_keys_resolve_as_go():
    attrs = LeaseAttrs.from_json('{"PublicIP":"192.168.1.2","publicIP":"192.168.1.3",'
                                 '"BackendData":"a","BACKENDDATA":"b"}')
    assert (attrs.public_ip, attrs.backend_data) == ("192.168.1.3", '"b"')


def test_display_key_is_printable_text():
    assert display_key(b"10.1.0.0-24\xff") == "10.1.0.0-24\\xff"
    assert display_key("a\ud800b") == "a\\ud800b"
    assert display_key(7) == "7"
    assert len(display_key("x" * 10_000)) == 200


# --- the SQLite store: BLOBs, bad UTF-8 and non-numeric expirations ----------------------

def _raw_insert(db, key, value, expiration=None, cast_key=False, cast_value=False):
    conn = sqlite3.connect(db, isolation_level=None)
    k, v = ("CAST(? AS TEXT)" if cast_key else "?"), ("CAST(? AS TEXT)" if cast_value else "?")
    conn.execute("BEGIN IMMEDIATE")
    rev = conn.execute(f"INSERT INTO events (key, type, value, expiration) VALUES ({k}, 'put', {v}, ?)",
                       (key, value, expiration)).lastrowid
    conn.execute(f"INSERT INTO leases VALUES ({k}, {v}, ?, ?)", (key, value, expiration, rev))
    conn.execute("COMMIT")
    conn.close()


def test_sqlite_blob_and_bad_utf8_rows_are_rejections(tmp_path):
    db = tmp_path / "leases.db"
    store = SqliteStore(db)
    try:
        _raw_insert(db, b"10.1.1.0-24", GOOD.encode())                       # BLOB key and value
        _raw_insert(db, b"10.1.2.0-24\xff", GOOD, cast_key=True)             # TEXT that is not UTF-8
        _raw_insert(db, "10.1.3.0-24", b'{"PublicIP":"\xff"}', cast_value=True)
        _raw_insert(db, "10.1.4.0-24", GOOD, expiration="tomorrow")
        _raw_insert(db, "10.1.5.0-24", '{"PublicIP":"192.168.1.2","BackendData":"\\ud800"}')
        _raw_insert(db, "10.1.6.0-24", GOOD)
        snap = store.list()
        assert [lease.key for lease in snap.leases] == ["10.1.6.0-24"]
        assert len(snap.rejected) == 5
        assert all(isinstance(event.key, str) for event in snap.rejected)
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_sqlite_watch_rejects_then_delivers_and_expires_odd_keys(tmp_path):
    db = tmp_path / "leases.db"
    clock = [1000.0]
    store = SqliteStore(db, ttl_clock=lambda: clock[0])
    collector = EventCollector()
    seen = collector.events
    watch = None
    try:
        rev = store.list().revision
        watch = store.watch(rev, collector)
        _raw_insert(db, b"\xff10.1.2.0-24", GOOD, expiration=1001.0, cast_key=True)
        _raw_insert(db, "10.1.7.0-24", GOOD)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e.type is EventType.ADDED for e in seen):
            time.sleep(0.05)
        assert [e.type for e in seen] == [EventType.REJECTED, EventType.ADDED]
        clock[0] = 1002.0   # the odd key expires: it is deleted by rowid, not left to spin on
        store.put_raw("10.1.8.0-24", GOOD)
        conn = sqlite3.connect(db)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and conn.execute("SELECT count(*) FROM leases").fetchone()[0] != 2:
            time.sleep(0.05)
        assert conn.execute("SELECT count(*) FROM leases WHERE typeof(key) = 'text'").fetchone()[0] == 2
        conn.close()
    finally:
        if watch is not None:
            watch.close()
        store.close()


# --- the kube store's node rules ------------------------------------------------------------

NAMES = AnnotationNames.from_prefix()
P = "flannel.alpha.coreos.com/"


def node(name, annotations, cidr="10.1.9.0/24", rv="1"):
    return {"metadata": {"name": name, "resourceVersion": rv, "annotations": annotations},
            "spec": {"podCIDR": cidr}}


@pytest.mark.parametrize("annotations", [
    {P + "public-ip": "192.168.1.2", P + "backend-data": '"\\ud800"'},
    {P + "public-ip": "192.168.1.2", P + "backend-data": "[" * 100_000 + "]" * 100_000},
    {P + "public-ip": "192.168.1.2", P + "backend-data": '"' + "x" * MAX_VALUE_BYTES + '"'},
    {P + "public-ip": "192.168.1.2", P + "backend-data": "NaN"},
    {P + "public-ip": 7},
    {P + "public-ip": "192.168.1.2", P + "backend-type": ["extension"]},
    {P + "public-ip": "\ud800"},
])
def test_kube_node_with_hostile_annotations_is_one_rejection(annotations):
    tracker = NodeTracker(NAMES, True, False)
    bad = node("bad", {P + "kube-subnet-manager": "true", **annotations})
    events = tracker.diff([bad, node("good", {P + "kube-subnet-manager": "true", P + "public-ip": "192.168.1.3"},
                                     cidr="10.1.10.0/24")])
    assert [e.type for e in events] == [EventType.REJECTED, EventType.ADDED]
    assert tracker.update(bad) == []     # the same object again (a resync) is not counted twice


def test_kube_malformed_node_objects_do_not_raise():
    tracker = NodeTracker(NAMES, True, False)
    odd = {"metadata": {"name": "odd", "annotations": {P + "kube-subnet-manager": "true"}}, "spec": "x"}
    assert [e.type for e in tracker.update(odd)] == [EventType.REJECTED]
    assert tracker.update({"metadata": ["not", "a", "dict"]}) == []
    assert tracker.update({"metadata": {"name": "n", "annotations": ["x"]}}) == []


def test_sqlite_next_expiry_skips_text_and_uses_the_index(tmp_path):
    """The watcher asks this on every wake: it must not scan the table, nor take garbage
    ("tomorrow") for a time."""
    db = tmp_path / "leases.db"
    SqliteStore(db).close()
    _raw_insert(db, "10.1.4.0-24", GOOD, expiration="tomorrow")
    conn = sqlite3.connect(db)
    try:
        assert _next_expiry(conn) is None
        _raw_insert(db, "10.1.5.0-24", GOOD, expiration=2000.5)
        _raw_insert(db, "10.1.6.0-24", GOOD, expiration=1000)
        _raw_insert(db, "10.1.7.0-24", GOOD)
        assert _next_expiry(conn) == 1000
        plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + NEXT_EXPIRY))
        assert "INDEX leases_expiration" in plan
    finally:
        conn.close()


# --- the fast paths agree with the Go-compatible ones ------------------------------------

def _corpus_entries():
    from hostile import corpus
    return corpus._Generator(7, Path(tempfile.gettempdir()) / "never-created").for_json_stores(600)


def test_plain_value_fast_path_agrees_with_the_go_decoder():
    """`from_json` tries the C decoder on flannel's plain form first; wherever it answers,
    the answer is the Go-compatible decoder's, and everything else falls through to it."""
    from flannel_ext._stores.lease import _plain_value
    values = [e.value for e in _corpus_entries() if isinstance(e.value, str)] + [
        GOOD, '{"PublicIP":"1.2.3.4"}', '{"PublicIP":null,"BackendData":null}', '{}',
        '{"PublicIP":"1.2.3.4","BackendData":"<a&b>"}', '{"PublicIP":"1.2.3.4","BackendType":""}',
        '{"PublicIP":"1.2.3.4","PublicIPv6":"","BackendData":"x","BackendV6Data":"y"}',
        '{"PublicIP":"1.2.3.4","BackendData":"a","BackendData":"b"}',   # duplicates: the last
        '{"PublicIP":"1.2.3.4","BackendData":{"VNI":1}}', '{"PublicIP":"1.2.3.4","Extra":1}',
        '{"PublicIP":"1.2.3.4","BackendData":"\\u00e9"}', ' {"PublicIP":"1.2.3.4"} ']
    answered = 0
    for value in values:
        fast = _plain_value(value)
        try:
            slow = LeaseAttrs.from_go_json(value)
        except ValueError:
            assert fast is None, value
            continue
        if fast is not None:
            answered += 1
            assert fast == slow, value
    assert answered > 50   # the fast path is taken, not only declined


@pytest.mark.parametrize("key", ["10.5.1.0-24", "0.0.0.0-0", "255.255.255.255-32", "10.0.0.0-8",
                                 "10.5.1.0-23", "10.5.1.1-24", "10.5.01.0-24", "10.5.1.0-33",
                                 "10.5.256.0-24", "10.5.1.0-024", "1.2.3.4-32"])
def test_v4_key_fast_path_agrees(key):
    from flannel_ext._stores.lease import _canonical_v4
    ip, plen = key.split("-")
    fast = _canonical_v4(ip, plen)
    try:
        slow = ipaddress.IPv4Network(f"{ip}/{plen}")
        canonical = f"{slow.network_address}-{slow.prefixlen}" == key
    except ValueError:
        slow, canonical = None, False
    assert fast == (slow if canonical else None)
