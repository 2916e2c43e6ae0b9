"""SqliteStore: flannel's acquire rules, TTL, watch across processes, garbage, compaction."""
import ipaddress
import multiprocessing
import queue
import sqlite3

import pytest

from flannel_ext._util.errors import ConfigError, LeaseConflict, OutOfSubnets
from flannel_ext._config.netconf import NetConf
from flannel_ext._stores import open_store
from flannel_ext._stores.base import AcquireRequest, LeaseStore
from flannel_ext._stores.lease import EventType, Lease, LeaseAttrs
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import EventCollector

V4 = ipaddress.IPv4Network
CONF = NetConf(network=V4("10.5.0.0/16"), subnet_len=24, subnet_min=ipaddress.IPv4Address("10.5.1.0"),
               subnet_max=ipaddress.IPv4Address("10.5.254.0"))
MP = multiprocessing.get_context("fork")
WAIT = 20  # seconds: a bound on how long a broken test hangs, not a latency assertion


def attrs(ip, data="x"):
    return LeaseAttrs.with_string_data(ip, data)


def req(ip, config=CONF, **kw):
    return AcquireRequest(attrs(ip), config, **kw)


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state" / "leases.db"


@pytest.fixture
def store(db):
    s = SqliteStore(db)
    yield s
    s.close()


@pytest.fixture
def watching():
    """watching(store, revision) -> an EventCollector fed by a watch closed at teardown."""
    watches = []

    def start(store, revision):
        collector = EventCollector()
        watches.append(store.watch(revision, collector))
        return collector
    yield start
    for watch in watches:
        watch.close()


# -- acquire ---------------------------------------------------------------------------


def test_protocol_url_and_stored_bytes(db):
    store = open_store(f"sqlite:{db}", etcd_prefix="/ignored")
    assert isinstance(store, SqliteStore) and isinstance(store, LeaseStore)
    assert db.parent.is_dir() and store.network_config() is None
    lease = store.acquire(req("192.168.1.10"))
    assert lease.subnet.subnet_of(V4("10.5.0.0/16")) and lease.subnet.prefixlen == 24
    raw = sqlite3.connect(db).execute("SELECT key, value FROM leases").fetchall()
    assert raw == [(lease.key, '{"PublicIP":"192.168.1.10","PublicIPv6":null,'
                               '"BackendType":"extension","BackendData":"x"}')]
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_unknown_store_url_is_a_config_error():
    with pytest.raises(ConfigError, match="--store.*redis://x.*sqlite:PATH"):
        open_store("redis://x")


def test_reuse_by_public_ip_with_new_attrs(store, db):
    first = store.acquire(req("192.168.1.10"))
    again = SqliteStore(db).acquire(AcquireRequest(attrs("192.168.1.10", "new"), CONF))
    assert again.subnet == first.subnet and again.attrs.backend_data == '"new"'
    other = store.acquire(req("192.168.1.11"))
    assert other.subnet != first.subnet
    assert {le.key: le.attrs.backend_data for le in store.list().leases} == {
        first.key: '"new"', other.key: '"x"'}


def test_incompatible_lease_of_ours_is_replaced(store):
    store.put_lease(Lease(V4("10.5.3.0/25"), attrs("192.168.1.10")))
    lease = store.acquire(req("192.168.1.10"))
    assert lease.subnet.prefixlen == 24
    assert [le.key for le in store.list().leases] == [lease.key]


def test_reservation_stays_without_expiry(store):
    store.put_lease(Lease(V4("10.5.9.0/24"), attrs("192.168.1.10")))  # no expiration
    lease = store.acquire(req("192.168.1.10"))
    assert lease.subnet == V4("10.5.9.0/24") and lease.expiration is None


def test_previous_subnet_env_subnet_is_preferred_when_free(store):
    assert store.acquire(req("192.168.1.10", previous_subnet=V4("10.5.77.0/24"))).subnet == V4(
        "10.5.77.0/24")
    taken = store.acquire(req("192.168.1.11", previous_subnet=V4("10.5.77.0/24")))
    assert taken.subnet != V4("10.5.77.0/24")


def test_random_among_the_first_free(store):
    subnets = [store.acquire(req(f"192.168.1.{i}")).subnet for i in range(1, 21)]
    assert len(set(subnets)) == 20
    assert all(s.network_address <= ipaddress.IPv4Address("10.5.120.0") for s in subnets)
    assert sorted(subnets) != subnets  # not handed out in address order


def test_out_of_subnets_changes_nothing(store):
    small = NetConf(network=V4("10.5.0.0/28"))  # two /30s between the defaults
    store.acquire(req("192.168.1.1", small))
    store.acquire(req("192.168.1.2", small))
    before = store.list()
    with pytest.raises(OutOfSubnets, match="10.5.0.4 and 10.5.0.8"):
        store.acquire(req("192.168.1.3", small))
    assert store.list() == before


def test_garbage_entry_holds_its_subnet(store):
    small = NetConf(network=V4("10.5.0.0/28"))
    store.put_raw("10.5.0.4-30", "garbage")
    assert store.acquire(req("192.168.1.1", small)).subnet == V4("10.5.0.8/30")


def test_renew_extends_and_detects_takeover(db):
    clock = FakeClock()
    store = SqliteStore(db, ttl_clock=clock)
    lease = store.acquire(req("192.168.1.10", ttl=100))
    assert lease.expiration == 1100
    clock.now = 1050
    assert store.renew(lease, ttl=100).expiration == 1150
    clock.now = 1200  # expired: nobody took it, so renewal re-creates it
    assert store.renew(lease, ttl=100).expiration == 1300
    store.put_lease(Lease(lease.subnet, attrs("192.168.1.99")))
    with pytest.raises(LeaseConflict):
        store.renew(lease)


def test_ttl_expiry_is_swept_into_expire_events(db, watching):
    clock = FakeClock()
    store = SqliteStore(db, ttl_clock=clock)
    lease = store.acquire(req("192.168.1.10", ttl=10))
    snap = store.list()
    collector = watching(store, snap.revision)
    clock.now = 1011
    assert store.list().leases == []
    events = collector.wait_for(lambda ev: ev)
    assert [(e.type, e.lease) for e in events] == [(EventType.REMOVED, lease)]
    types = [t for (t,) in sqlite3.connect(db).execute("SELECT type FROM events ORDER BY rev")]
    assert types == ["put", "expire"]


# -- watch -----------------------------------------------------------------------------


def test_release_and_snapshot_watch_report_full_leases(store, db, watching):
    a = store.acquire(req("192.168.1.10"))
    snap = store.list()
    SqliteStore(db).release(a)  # between list() and watch(): the watch still reports it
    store.release(a)            # idempotent
    events = watching(store, snap.revision).wait_for(lambda ev: ev)
    assert [(e.type, e.lease.attrs) for e in events] == [(EventType.REMOVED, a.attrs)]


def test_garbage_is_rejected_never_removes_others(store, watching):
    a = store.acquire(req("192.168.1.10"))
    watch = watching(store, store.list().revision)
    store.put_raw("not-a-key", "{}")
    store.put_raw("10.5.200.0-24", "{")
    store.put_raw(a.key, '{"PublicIP": 7}')  # a known lease overwritten with junk
    events = watch.take(lambda ev: len(ev) >= 3)
    assert [(e.type, e.key) for e in events] == [(EventType.REJECTED, "not-a-key"),
                                                 (EventType.REJECTED, "10.5.200.0-24"),
                                                 (EventType.REJECTED, a.key)]
    assert all(e.reason for e in events)
    snap = store.list()
    assert sorted(e.key for e in snap.rejected) == sorted(["not-a-key", "10.5.200.0-24", a.key])
    assert snap.leases == []
    store.delete_key("not-a-key")
    b = store.acquire(req("192.168.1.11"))
    assert [(e.type, e.key) for e in watch.take(lambda ev: ev)] == [(EventType.ADDED, b.key)]


def test_compaction_relists_and_diffs(db, watching):
    store = SqliteStore(db, history=3)
    a = store.acquire(req("192.168.1.1"))
    b = store.acquire(req("192.168.1.2"))
    snap = store.list()
    c = store.acquire(req("192.168.1.3"))  # before a's release: c must not reuse a's subnet
    store.release(a)
    store.acquire(AcquireRequest(attrs("192.168.1.2", "changed"), CONF))
    store.put_raw("junk", "1")
    watch = watching(store, snap.revision)   # history since snap is gone by now
    first = watch.take(lambda ev: len(ev) >= 4)
    assert {(e.type, e.key) for e in first} == {
        (EventType.REMOVED, a.key), (EventType.ADDED, c.key), (EventType.ADDED, b.key),
        (EventType.REJECTED, "junk")}
    # Mid-watch (falling behind or not): the same outcome against what was reported.
    d = store.acquire(req("192.168.1.4"))
    for _ in range(5):
        store.renew(c)
    store.release(c)
    events = watch.take(lambda ev: {(EventType.ADDED, d.key), (EventType.REMOVED, c.key)}
                        <= {(e.type, e.key) for e in ev})
    assert {(e.type, e.key) for e in events} >= {(EventType.ADDED, d.key), (EventType.REMOVED, c.key)}


class _QueueSink:
    def __init__(self, out):
        self.out = out

    def deliver(self, batch):
        for e in batch:
            self.out.put((e.type.value, e.key))

    def failed(self, error):
        self.out.put(("failed", repr(error)))


def _child_watch(path, revision, out, stop, ready):
    store = SqliteStore(path)
    watch = store.watch(revision, _QueueSink(out))
    ready.set()
    stop.wait(60)
    watch.close()


def _child_acquire(path, ip, ttl, start, out):
    store = SqliteStore(path)
    start.wait(WAIT)
    out.put(store.acquire(AcquireRequest(attrs(ip), CONF, ttl=ttl)).key)


def test_watch_across_processes_add_release_and_expiry(store, db):
    stop, ready, out = MP.Event(), MP.Event(), MP.Queue()
    watcher = MP.Process(target=_child_watch, args=(db, store.list().revision, out, stop, ready))
    watcher.start()
    try:
        assert ready.wait(WAIT)
        a = store.acquire(req("192.168.1.10"))
        assert out.get(timeout=WAIT) == ("added", a.key)
        store.release(a)
        assert out.get(timeout=WAIT) == ("removed", a.key)
        # Expiry: nobody writes; the watcher wakes at the expiration and sweeps itself.
        b = store.acquire(req("192.168.1.11", ttl=0.3))
        assert out.get(timeout=WAIT) == ("added", b.key)
        assert out.get(timeout=WAIT) == ("removed", b.key)
        # A writer in yet another process.
        start, keys = MP.Event(), MP.Queue()
        writer = MP.Process(target=_child_acquire, args=(db, "192.168.1.12", 3600, start, keys))
        writer.start()
        start.set()
        assert out.get(timeout=WAIT) == ("added", keys.get(timeout=WAIT))
        writer.join(WAIT)
    finally:
        stop.set()
        watcher.join(WAIT)
    assert watcher.exitcode == 0
    with pytest.raises(queue.Empty):
        out.get(timeout=0.2)


@pytest.mark.parametrize("precreate", [True, False])
def test_50_concurrent_allocators_never_share_a_subnet(db, precreate):
    if precreate:
        SqliteStore(db).close()
    start, out = MP.Event(), MP.Queue()
    procs = [MP.Process(target=_child_acquire, args=(db, f"192.168.{i // 200}.{i % 200 + 1}", 3600,
                                                     start, out)) for i in range(50)]
    for p in procs:
        p.start()
    start.set()
    keys = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(WAIT)
    assert [p.exitcode for p in procs] == [0] * 50
    assert len(set(keys)) == 50  # 0 duplicates
    assert sorted(le.key for le in SqliteStore(db).list().leases) == sorted(keys)
