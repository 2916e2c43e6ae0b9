"""EtcdStore against a real etcd (Debian's etcd-server) on a free loopback port."""
from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from etcd_server import etcd_server  # noqa: E402,F401  (the fixture)

from flannel_ext._util.errors import ConfigError, StoreError  # noqa: E402
from flannel_ext._config.netconf import NetConf  # noqa: E402
from flannel_ext._stores import etcd as etcd_mod  # noqa: E402
from flannel_ext._stores.base import AcquireRequest, LeaseStore  # noqa: E402
from flannel_ext._stores.etcd import EtcdStore  # noqa: E402
from flannel_ext._stores.etcd_watch import parse_endpoints  # noqa: E402
from flannel_ext._stores.lease import EventType, Lease, LeaseAttrs  # noqa: E402
from flannel_ext.testing import EventCollector  # noqa: E402


PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
CONFIG_TEXT = '{"Network":"10.5.0.0/16","Backend":{"Type":"extension"}}'
# Built directly: the store's job starts after net-conf parsing (allocate applies defaults).
CONFIG = NetConf(network=ipaddress.IPv4Network("10.5.0.0/16"), backend_type="extension", text=CONFIG_TEXT)
# 10.5.1.0/24 .. 10.5.62.0/24: 62 subnets, so 50 allocators collide a lot.
SMALL = NetConf(network=ipaddress.IPv4Network("10.5.0.0/18"), subnet_len=24, backend_type="extension")
WAIT = 30.0   # only a guard against hanging; nothing asserts on time


def request(ip="192.168.1.1", data="aa:bb:cc:dd:ee:ff", config=CONFIG, ttl=600.0):
    return AcquireRequest(LeaseAttrs.with_string_data(ip, data), config, ttl=ttl)


def store_for(server, **options) -> EtcdStore:
    return EtcdStore.from_url(f"etcd://127.0.0.1:{server.client_port}", **options)


@pytest.fixture
def store(etcd_server):
    s = store_for(etcd_server)
    yield s
    s.close()


class Watcher:
    """store.watch into an EventCollector; `close()` checks the watch thread ends."""

    def __init__(self, store: EtcdStore, revision: int):
        self.collector = EventCollector()
        self.watch = store.watch(revision, self.collector)

    @property
    def events(self):
        return self.collector.events

    def wait_for(self, pred, what=""):
        events = self.collector.wait_for(lambda evs: any(pred(e) for e in evs), WAIT)
        return next(e for e in events if pred(e))

    def still_running(self, seconds):
        """The watch keeps going (reconnecting) instead of failing or hanging up."""
        time.sleep(seconds)
        assert self.watch.alive() and not self.collector.failures

    def close(self):
        self.watch.close(WAIT)
        assert not self.watch.alive(), "watch did not end after close()"


def is_event(kind, key):
    return lambda e: e.type is kind and e.key == key


def test_protocol_and_endpoint_parsing():
    assert issubclass(EtcdStore, LeaseStore)
    assert parse_endpoints("etcd://a:1,b") == [("http", "a", 1), ("http", "b", 2379)]
    assert parse_endpoints("http://127.0.0.1:4001,http://127.0.0.1:2379") == [
        ("http", "127.0.0.1", 4001), ("http", "127.0.0.1", 2379)]
    assert parse_endpoints("https://[::1]:2379") == [("https", "::1", 2379)]
    assert parse_endpoints("etcd://h:1", tls=True) == [("https", "h", 1)]
    https = EtcdStore.from_url("etcd://h:1", scheme="https", kube_api_url=None)   # run_cmd's options
    assert https.gateway.endpoints == ["https://h:1"]
    https.close()
    for bad in ("etcd://", "ftp://h:1", "http://h:port", "http://h:1/v3"):
        with pytest.raises(ConfigError):
            parse_endpoints(bad)


def test_acquire_writes_flannels_layout_byte_for_byte(etcd_server, store):
    assert store.network_config() is None
    etcd_server.etcdctl("put", PREFIX + "/config", CONFIG_TEXT)
    assert store.network_config() == CONFIG_TEXT
    lease = store.acquire(request(ttl=600))
    assert CONFIG.network.supernet_of(lease.subnet) and lease.subnet.prefixlen == 24
    out = etcd_server.etcdctl("get", "--prefix", SUBNETS).splitlines()
    assert out == [f"{SUBNETS}{lease.subnet.network_address}-24",
                   '{"PublicIP":"192.168.1.1","PublicIPv6":null,"BackendType":"extension",'
                   '"BackendData":"aa:bb:cc:dd:ee:ff"}']
    # Attached to an etcd lease of the requested TTL, as flannel's Grant(86400) + Put.
    kv = json.loads(etcd_server.etcdctl("get", "-w", "json", out[0]))["kvs"][0]
    ttl = etcd_server.etcdctl("lease", "timetolive", format(kv["lease"], "x"))
    assert "granted with TTL(600s)" in ttl


def test_expiration_from_time_to_live_when_asked(etcd_server, store):
    ours = store.acquire(request(ttl=600))
    assert store.list().leases[0].expiration == ours.expiration   # ours is known for free
    plain, with_ttl = store_for(etcd_server), store_for(etcd_server, resolve_ttl=True)
    try:
        assert plain.list().leases[0].expiration is None   # others' expiry is opt-in (cost)
        (listed,) = with_ttl.list().leases
        assert ours.expiration - 600 <= listed.expiration <= ours.expiration + 1
    finally:
        plain.close()
        with_ttl.close()


def _value(ip: str) -> str:
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "extension",
                       "BackendData": "aa:bb:cc:dd:ee:ff"}, separators=(",", ":"))


def _paths(store: EtcdStore) -> list[str]:
    """Record the gateway paths `store` calls from now on."""
    calls: list[str] = []
    real = store.gateway.call

    def call(path, payload):
        calls.append(path)
        return real(path, payload)
    store.gateway.call = call   # type: ignore[method-assign]
    return calls


def test_list_after_acquire_reads_only_what_changed(etcd_server, store):
    """Start-up reads the prefix once: the list after acquire is acquire's read plus the
    keys written since, and the same snapshot a fresh read gives. The keys written by hand
    are 10.5.2xx: acquire draws from the first 100 free subnets, and one it drew would be
    overwritten (a CI run once had 4 leases instead of 5 that way)."""
    for i in range(3):
        etcd_server.etcdctl("put", SUBNETS + f"10.5.{210 + i}.0-24", _value(f"192.168.2.{i}"))
    ours = store.acquire(request())
    etcd_server.etcdctl("put", SUBNETS + "10.5.220.0-24", _value("192.168.2.20"))     # added
    etcd_server.etcdctl("put", SUBNETS + "10.5.210.0-24", _value("192.168.2.99"))     # changed
    etcd_server.etcdctl("put", SUBNETS + "10.5.230.0-24", "garbage{")                 # rejected
    calls = _paths(store)
    snap = store.list()
    assert calls == ["/kv/txn"]
    reference = store_for(etcd_server)
    try:
        fresh = reference.list()
    finally:
        reference.close()
    assert snap.revision == fresh.revision
    assert sorted((x.key, x.attrs) for x in snap.leases) == sorted((x.key, x.attrs) for x in fresh.leases)
    assert len(snap.leases) == 5 and ours.key in {x.key for x in snap.leases}
    assert [e.key for e in snap.rejected] == [e.key for e in fresh.rejected] == ["10.5.230.0-24"]
    assert store.list().revision == snap.revision and calls[-1] == "/kv/range"   # only once

    # A key deleted meanwhile shows only in the count: the list reads everything again.
    store.acquire(request())
    etcd_server.etcdctl("del", SUBNETS + "10.5.211.0-24")
    calls.clear()
    snap = store.list()
    assert calls == ["/kv/txn", "/kv/range"]
    assert "10.5.211.0-24" not in {x.key for x in snap.leases} and len(snap.leases) == 4

    # Once watching (a re-acquire in a running node), acquire keeps no copy of its read.
    watcher = Watcher(store, snap.revision)
    try:
        store.acquire(request())
        calls.clear()
        store.list()
        assert calls == ["/kv/range"]
    finally:
        watcher.close()


def test_dual_stack_key(etcd_server, store):
    config = NetConf(network=ipaddress.IPv4Network("10.5.0.0/16"), enable_ipv6=True,
                     ipv6_network=ipaddress.IPv6Network("fc00::/48"), backend_type="extension")
    lease = store.acquire(request(config=config))
    assert lease.ipv6_subnet is not None and lease.ipv6_subnet.prefixlen == 64
    key = etcd_server.etcdctl("get", "--prefix", "--keys-only", SUBNETS).split()[0]
    assert key == SUBNETS + f"{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address}-64"
    assert "&fc00:0:" in key
    assert [x.key for x in store.list().leases] == [lease.key]


def test_reuse_keeps_the_subnet_and_updates_attrs(etcd_server, store):
    first = store.acquire(request(data="one"))
    again = store_for(etcd_server).acquire(request(data="two"))   # a restarted node
    assert again.subnet == first.subnet
    out = etcd_server.etcdctl("get", "--prefix", SUBNETS, "--print-value-only").split()
    assert out == ['{"PublicIP":"192.168.1.1","PublicIPv6":null,"BackendType":"extension","BackendData":"two"}']
    other = store.acquire(request(ip="192.168.1.2"))
    assert other.subnet != first.subnet


def test_collision_picks_another_candidate(etcd_server, store, monkeypatch):
    stolen = []
    intruder = '{"PublicIP":"10.9.9.9","PublicIPv6":null}'

    def racing_plan(req, leases, rng=None):
        plan = etcd_mod_plan(req, leases, rng)
        if not stolen:   # another node takes our first choice between list and create
            stolen.append(plan.candidates[0])
            etcd_server.etcdctl("put", f"{SUBNETS}{plan.candidates[0].network_address}-24", intruder)
        return plan

    etcd_mod_plan = etcd_mod.plan_acquire
    monkeypatch.setattr(etcd_mod, "plan_acquire", racing_plan)
    lease = store.acquire(request())
    assert stolen and lease.subnet != stolen[0]
    values = etcd_server.etcdctl("get", f"{SUBNETS}{stolen[0].network_address}-24", "--print-value-only")
    assert values.strip() == intruder   # theirs is untouched
    assert len(store.list().leases) == 2


def test_release_and_renew(etcd_server, store):
    lease = store.acquire(request(ttl=600))
    snap = store.list()
    watcher = Watcher(store, snap.revision)
    try:
        renewed = store.renew(lease, ttl=900)
        assert renewed.subnet == lease.subnet and renewed.expiration > lease.expiration
        kv = json.loads(etcd_server.etcdctl("get", "-w", "json", SUBNETS + lease.key))["kvs"][0]
        assert "granted with TTL(900s)" in etcd_server.etcdctl("lease", "timetolive", format(kv["lease"], "x"))
        store.release(renewed)
        store.release(renewed)   # idempotent
        removed = watcher.wait_for(is_event(EventType.REMOVED, lease.key), "REMOVED")
        assert removed.lease.attrs == lease.attrs   # the cached attrs, not an empty lease
        assert etcd_server.etcdctl("get", "--prefix", SUBNETS) == ""
    finally:
        watcher.close()


def test_ttl_expiry_reaches_the_watcher_as_removed(etcd_server, store):
    watcher = Watcher(store, store.list().revision)
    try:
        lease = store.acquire(request(ttl=2))
        watcher.wait_for(is_event(EventType.ADDED, lease.key), "ADDED")
        removed = watcher.wait_for(is_event(EventType.REMOVED, lease.key), "REMOVED on expiry")
        assert removed.lease.attrs.public_ip == "192.168.1.1"
    finally:
        watcher.close()


def test_watch_survives_an_etcd_restart(etcd_server, store):
    watcher = Watcher(store, store.list().revision)
    try:
        etcd_server.stop()
        watcher.still_running(2)   # reconnecting while etcd is down, never failing
        etcd_server.start()
        lease = store_for(etcd_server).acquire(request(ip="192.168.1.7"))
        watcher.wait_for(is_event(EventType.ADDED, lease.key), "ADDED after restart")
    finally:
        watcher.close()


def test_watch_returns_on_stop_while_etcd_is_down(etcd_server, store):
    revision = store.list().revision
    etcd_server.stop()
    watcher = Watcher(store, revision)
    watcher.still_running(1)
    watcher.close()
    with pytest.raises(StoreError, match="unreachable"):
        store.list()


def test_compaction_relists_and_yields_the_diff(etcd_server, store):
    gone = store.acquire(request(ip="192.168.1.1"))
    kept = store.acquire(request(ip="192.168.1.2"))
    revision = store.list().revision    # the cache now knows both
    # `fresh` before the release: acquired after it, it could draw gone's subnet at random
    # (about 1 run in 100), and the re-list would then see that key changed, not removed.
    fresh = store.acquire(request(ip="192.168.1.3"))
    store.release(gone)
    changed = store.acquire(request(ip="192.168.1.2", data="new"))
    etcdctl_rev = json.loads(etcd_server.etcdctl("get", "-w", "json", "x"))["header"]["revision"]
    etcd_server.etcdctl("compaction", str(etcdctl_rev))
    watcher = Watcher(store, revision)
    try:
        watcher.wait_for(is_event(EventType.ADDED, fresh.key), "ADDED from re-list")
        events = {(e.type, e.key): e for e in watcher.events}
        assert events[(EventType.REMOVED, gone.key)].lease.attrs == gone.attrs
        assert events[(EventType.ADDED, kept.key)].lease.attrs == changed.attrs
        # After the re-list the watch goes on from the new revision.
        late = store.acquire(request(ip="192.168.1.4"))
        watcher.wait_for(is_event(EventType.ADDED, late.key), "ADDED after re-list")
    finally:
        watcher.close()


@pytest.mark.parametrize("value, data", [
    ('{"PublicIP":"192.168.1.20","PublicIPv6":null,"BackendType":"extension","BackendData":"aa:bb:cc:dd:ee:ff"}',
     "aa:bb:cc:dd:ee:ff"),
    ('{"PublicIP":"192.168.1.21","PublicIPv6":null,"BackendType":"vxlan",'
     '"BackendData":{"VNI":1,"VtepMAC":"0e:4f:1a:2b:3c:4d"}}',
     {"VNI": 1, "VtepMAC": "0e:4f:1a:2b:3c:4d"}),
])
def test_reads_leases_written_by_flannel(etcd_server, store, value, data):
    watcher = Watcher(store, store.list().revision)
    try:
        etcd_server.etcdctl("put", SUBNETS + "10.5.220.0-24", value)
        added = watcher.wait_for(is_event(EventType.ADDED, "10.5.220.0-24"), "ADDED")
    finally:
        watcher.close()
    (lease,) = store.list().leases
    assert added.lease.attrs == lease.attrs
    assert lease.subnet == ipaddress.IPv4Network("10.5.220.0/24")
    assert lease.attrs.backend_data_value() == data
    assert lease.attrs.to_json() == value   # re-encodes to flannel's exact bytes
    assert lease.expiration is None         # written without an etcd lease: a reservation


def test_malformed_entries_are_rejected_and_nothing_else_changes(etcd_server, store):
    good = store.acquire(request())
    etcd_server.etcdctl("put", SUBNETS + "not-a-subnet", '{"PublicIP":"1.2.3.4"}')
    etcd_server.etcdctl("put", SUBNETS + "10.5.230.0-24", "garbage{")
    snap = store.list()
    assert [x.key for x in snap.leases] == [good.key]
    assert sorted(e.key for e in snap.rejected) == ["10.5.230.0-24", "not-a-subnet"]
    assert all(e.type is EventType.REJECTED and e.reason for e in snap.rejected)

    watcher = Watcher(store, snap.revision)
    try:
        etcd_server.etcdctl("put", SUBNETS + "10.5.231.0-24", "[1,2]")
        etcd_server.etcdctl("put", SUBNETS + "10.5.232.0/24", "{}")
        etcd_server.etcdctl("del", SUBNETS + "10.5.230.0-24")    # a rejected key goes away quietly
        late = store.acquire(request(ip="192.168.1.9"))
        watcher.wait_for(is_event(EventType.ADDED, late.key), "ADDED after the garbage")
    finally:
        watcher.close()
    kinds = [(e.type, e.key) for e in watcher.events]
    assert kinds == [(EventType.REJECTED, "10.5.231.0-24"), (EventType.REJECTED, "10.5.232.0/24"),
                     (EventType.ADDED, late.key)]


def test_fifty_concurrent_allocators_get_distinct_subnets(etcd_server):
    stores = [store_for(etcd_server) for _ in range(50)]
    results, errors = {}, []
    barrier = threading.Barrier(50)

    def node(i):
        try:
            barrier.wait()
            results[i] = stores[i].acquire(request(ip=f"192.168.2.{i + 1}", config=SMALL))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    for s in stores:
        s.close()
    assert not errors
    subnets = [lease.subnet for lease in results.values()]
    assert len(subnets) == 50 and len(set(subnets)) == 50
    keys = etcd_server.etcdctl("get", "--prefix", "--keys-only", SUBNETS).split()
    assert sorted(keys) == sorted(SUBNETS + lease.key for lease in results.values())


def test_failover_to_a_live_endpoint(etcd_server):
    dead = etcd_server.peer_port + 10000 if etcd_server.peer_port < 50000 else 1
    s = EtcdStore.from_url(f"http://127.0.0.1:{dead},http://127.0.0.1:{etcd_server.client_port}")
    try:
        assert s.acquire(request()).subnet is not None
        assert s.list().leases
    finally:
        s.close()


def test_custom_prefix(etcd_server):
    s = store_for(etcd_server, prefix="/my/net/")
    try:
        lease = s.acquire(request())
        assert etcd_server.etcdctl("get", "--prefix", "--keys-only", "/my/net/subnets/").split() == [
            f"/my/net/subnets/{lease.key}"]
        assert isinstance(s.list().leases[0], Lease)
    finally:
        s.close()


def test_acquire_finds_our_lease_however_it_is_spelled(etcd_server, store):
    """Acquire parses only the values that may be ours (the rest count as taken subnets);
    a value that spells our PublicIP with an escape is still ours, and reused."""
    for i in range(3):
        etcd_server.etcdctl("put", SUBNETS + f"10.5.{240 + i}.0-24", _value(f"192.168.3.{i}"))
    escaped = _value("192.168.1.7").replace("192.168.1.7", "192.168.1.\\u0037")
    etcd_server.etcdctl("put", SUBNETS + "10.5.250.0-24", escaped)
    etcd_server.etcdctl("put", SUBNETS + "10.5.251.0-24", "garbage{")
    ours = store.acquire(request(ip="192.168.1.7"))
    assert ours.key == "10.5.250.0-24"
    snap = store.list()   # the list after acquire parses every value, as a fresh read does
    assert sorted(x.key for x in snap.leases) == ["10.5.240.0-24", "10.5.241.0-24", "10.5.242.0-24",
                                                  "10.5.250.0-24"]
    assert [e.key for e in snap.rejected] == ["10.5.251.0-24"]
    assert etcd_server.etcdctl("get", SUBNETS + "10.5.251.0-24", "--print-value-only").strip() == "garbage{"
