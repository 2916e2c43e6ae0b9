"""The etcd lease store: flannel's etcd v3 registry, key for key and byte for byte.

Layout under the prefix (default `/coreos.com/network`): `<prefix>/config` holds the
net-conf JSON; `<prefix>/subnets/<a.b.c.d>-<len>[&<v6>-<len>]` holds `LeaseAttrs.to_json()`
attached to its own etcd lease of `ttl` seconds (a fresh grant on every create/update).

Where flannel is fragile we are not: a lost create race (`subnet already exists`, fatal
in flanneld) tries the next candidate; an unparsable key or value is one REJECTED event,
not a Reset that removes every lease. See Documentation/stores.md.
"""
from __future__ import annotations

import builtins
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flannel_ext._util.errors import LeaseConflict, OutOfSubnets, StoreError
from flannel_ext._stores.allocate import out_of_subnets, plan_acquire
from flannel_ext._stores.base import DEFAULT_TTL, AcquireRequest, EventSink, Snapshot, Watch
from flannel_ext._stores.etcd_watch import Gateway, WatchStream, b64, parse_endpoints, prefix_end, unb64
from flannel_ext._stores.lease import Lease, LeaseAttrs, LeaseEvent, display_key, parse_entry, parse_subnet_key

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
_SOMEONE_ELSE = LeaseAttrs("")   # attrs of a lease acquire only needs the subnet of
RACE_ROUNDS = 10          # re-plans after losing every candidate (flannel's raceRetries)
HEARTBEAT = 1.0           # how long a liveness probe may take
PROBE_AFTER = 5.0         # a quiet stream is checked with a cheap call after this long
BACKOFF = (0.1, 5.0)      # reconnect delay, doubling (flannel's watch backoff)


@dataclass(frozen=True)
class _Entry:
    """One key under subnets/ with the etcd metadata acquire needs."""

    key: str
    lease: Lease | None          # None when the key or value does not parse
    reason: str = ""
    mod_revision: int = 0
    create_revision: int = 0
    lease_id: int = 0


class EtcdStore:
    """LeaseStore over etcd's JSON gRPC gateway (etcd >= 3.3). Thread-safe for one watcher."""

    def __init__(self, gateway: Gateway, prefix: str = DEFAULT_PREFIX, *, resolve_ttl: bool = False):
        self.gateway = gateway
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._subnets = f"{self.prefix}/subnets/".encode()
        # Other nodes' expiry costs a TimeToLive call per etcd lease (3.6 s for 1000 leases,
        # +5 ms per event: bench/bench_etcd.py) and nothing uses it, so it is opt-in;
        # without it a listed/watched lease has expiration None. Our own lease always has one.
        self.resolve_ttl = resolve_ttl
        self._lock = threading.Lock()
        self._cache: dict[str, Lease] = {}       # last seen lease per key (for REMOVED attrs)
        self._rejected: set[str] = set()          # keys whose entry did not parse
        self._expiry: dict[int, float] = {}       # etcd lease ID -> absolute expiry
        self._granted: dict[str, int] = {}        # key -> etcd lease ID this store granted
        # acquire's read (raw), its revision and the keys it deleted, for the next list();
        # kept only before a watch starts (start-up), so a later re-acquire holds no copy
        self._pending: tuple[builtins.list[dict], int, set[str]] | None = None
        self._watching = False

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, keyfile: str | None = None,
                 certfile: str | None = None, cafile: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0, resolve_ttl: bool = False,
                 scheme: str | None = None, **ignored) -> EtcdStore:
        """`etcd://h:p[,h:p]` or flanneld's `--etcd-endpoints` list of http(s) URLs.

        `scheme="https"` (or any TLS file) makes bare `etcd://h:p` endpoints use HTTPS.
        Other stores' options (a CLI passes all its flags) are ignored.
        """
        if ignored:
            log.debug("etcd store ignores options %s", sorted(ignored))
        endpoints = parse_endpoints(url, tls=bool(certfile or cafile) or scheme == "https")
        gateway = Gateway(endpoints, cafile=cafile, certfile=certfile, keyfile=keyfile,
                          username=username, password=password, timeout=timeout)
        return cls(gateway, prefix or DEFAULT_PREFIX, resolve_ttl=resolve_ttl)

    # -- reads -------------------------------------------------------------------------

    def network_config(self) -> str | None:
        reply = self.gateway.call("/kv/range", {"key": b64(f"{self.prefix}/config")})
        kvs = reply.get("kvs") or []
        return unb64(kvs[0].get("value", "")).decode("utf-8", "replace") if kvs else None

    def _read_raw(self) -> tuple[builtins.list[dict], int]:
        reply = self.gateway.call("/kv/range", {"key": b64(self._subnets),
                                                "range_end": b64(prefix_end(self._subnets))})
        return reply.get("kvs") or [], int(reply["header"]["revision"])

    def _read(self) -> tuple[dict[str, _Entry], int]:
        kvs, revision = self._read_raw()
        entries = self._resolved([self._entry(kv) for kv in kvs])
        self._prune_expiries(entries)
        return entries, revision

    def _plan_view(self, kvs: builtins.list[dict], public_ip: str) -> tuple[builtins.list[Lease], dict[str, _Entry]]:
        """What acquire plans with, parsing only the values that may be ours: a value with
        neither our PublicIP's text nor an escape or non-ASCII byte (that could spell it)
        cannot be, and counts only as its key's subnet, taken. (A garbage value counts as
        taken too, where a full parse would call it free and the create would then fail on
        the existing key.) Every value is parsed later, by list(), after subnet.env."""
        needle = public_ip.encode()
        leases: builtins.list[Lease] = []
        ours: dict[str, _Entry] = {}
        for kv in kvs:
            value = unb64(kv.get("value", ""))
            if needle in value or b"\\" in value or not value.isascii() or public_ip == "0.0.0.0":
                entry = self._entry(kv)
                if entry.lease is not None:
                    leases.append(entry.lease)
                    ours[entry.key] = entry
                continue
            try:
                subnet, ipv6_subnet = parse_subnet_key(unb64(kv["key"])[len(self._subnets):].decode("utf-8"))
            except ValueError:          # UnicodeDecodeError included: rejected by list() anyway
                continue
            leases.append(Lease(subnet if subnet.prefixlen else None, _SOMEONE_ELSE, ipv6_subnet))
        return leases, ours

    def _refresh(self, entries: dict[str, _Entry], revision: int) -> tuple[dict[str, _Entry], int] | None:
        """`entries` read at `revision` brought up to date with one small read: the keys
        written since, and the key count at the same revision. None when a key was deleted
        meanwhile (it shows only as a count mismatch): the caller reads everything again."""
        span = {"key": b64(self._subnets), "range_end": b64(prefix_end(self._subnets))}
        reply = self.gateway.call("/kv/txn", {"success": [
            {"request_range": dict(span, min_mod_revision=revision + 1)},
            {"request_range": dict(span, count_only=True)}]})
        changed, counted = (r.get("response_range", {}) for r in reply.get("responses") or [{}, {}])
        fresh = dict(entries)
        fresh.update(self._resolved([self._entry(kv) for kv in changed.get("kvs") or []]))
        if int(counted.get("count", 0)) != len(fresh):
            return None
        self._prune_expiries(fresh)
        return fresh, int(reply["header"]["revision"])

    def _prune_expiries(self, entries: dict[str, _Entry]) -> None:
        live = {e.lease_id for e in entries.values()} | set(self._granted.values())
        self._expiry = {i: t for i, t in self._expiry.items() if i in live}   # bounded by the keys

    def _resolved(self, entries: builtins.list[_Entry]) -> dict[str, _Entry]:
        """Entries with their expiry (when `resolve_ttl`), by key."""
        if self.resolve_ttl:
            self._resolve_expiries({e.lease_id for e in entries if e.lease_id})
        return {e.key: self._with_expiry(e) for e in entries}

    def _entry(self, kv: dict) -> _Entry:
        """One key-value as etcd returned it; a key or value flannel would not write (bad
        UTF-8, deep nesting, huge...) becomes an entry with no lease and the reason."""
        raw_key = unb64(kv["key"])[len(self._subnets):]
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            key = display_key(raw_key)   # never a valid subnet key, so rejected below
        mod, lease_id, create = (int(kv.get(name, 0)) for name in ("mod_revision", "lease", "create_revision"))
        try:
            lease = parse_entry(key, unb64(kv.get("value", "")))
        except ValueError as exc:
            return _Entry(key, None, str(exc), mod_revision=mod, lease_id=lease_id, create_revision=create)
        return _Entry(key, lease, mod_revision=mod, lease_id=lease_id, create_revision=create)

    def _resolve_expiries(self, lease_ids: set[int]) -> None:
        # flannel never extends a lease (each renewal is a new grant), so an ID's expiry is
        # fixed: ask once per ID, in parallel for a big first list.
        todo = [i for i in lease_ids if i not in self._expiry]
        if not todo:
            return
        now = time.time()
        ask = lambda i: self.gateway.call("/kv/lease/timetolive", {"ID": i})  # noqa: E731
        if len(todo) == 1:
            replies = [ask(todo[0])]
        else:
            with ThreadPoolExecutor(max_workers=8) as pool:
                replies = list(pool.map(ask, todo))
        for lease_id, reply in zip(todo, replies, strict=True):
            self._expiry[lease_id] = now + max(0, int(reply.get("TTL", -1)))

    def _with_expiry(self, entry: _Entry) -> _Entry:
        if entry.lease is None or not entry.lease_id or entry.lease_id not in self._expiry:
            return entry
        lease = Lease(entry.lease.subnet, entry.lease.attrs, entry.lease.ipv6_subnet,
                      self._expiry[entry.lease_id])
        return _Entry(entry.key, lease, entry.reason, entry.mod_revision, entry.create_revision, entry.lease_id)

    def list(self) -> Snapshot:
        """Every lease at one revision; also seeds the cache the watch diffs against.

        Right after acquire this is acquire's read plus what changed since (one small
        read instead of every lease again: start-up reads the prefix once)."""
        pending, self._pending = self._pending, None
        fresh = None
        if pending is not None:
            kvs, read_at, deleted = pending
            parsed = self._resolved([self._entry(kv) for kv in kvs])
            fresh = self._refresh({k: e for k, e in parsed.items() if k not in deleted}, read_at)
        entries, revision = fresh if fresh is not None else self._read()
        leases = [e.lease for e in entries.values() if e.lease is not None]
        rejected = [LeaseEvent.rejected(e.key, e.reason) for e in entries.values() if e.lease is None]
        with self._lock:
            self._cache = {lease.key: lease for lease in leases}
            self._rejected = {ev.key for ev in rejected}
        return Snapshot(leases, revision, rejected)

    # -- writes ------------------------------------------------------------------------

    def _put(self, lease: Lease, ttl: float, compare: dict) -> Lease | None:
        """Put `lease` under a fresh etcd lease if `compare` holds; None if it does not."""
        key = b64(self._subnets + lease.key.encode())
        lease_id = 0
        if ttl > 0:
            grant = self.gateway.call("/lease/grant", {"TTL": max(1, math.ceil(ttl)), "ID": 0})
            lease_id = int(grant["ID"])
        put: dict[str, str | int] = {"key": key, "value": b64(lease.attrs.to_json())}
        if lease_id:
            put["lease"] = lease_id
        reply = self.gateway.call("/kv/txn", {"compare": [dict(compare, key=key)],
                                              "success": [{"request_put": put}],
                                              "failure": [{"request_range": {"key": key}}]})
        if not reply.get("succeeded"):
            kvs = (reply.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or []
            # A retried txn whose first try did land (timeout, failover) finds our own put.
            if not (lease_id and kvs and int(kvs[0].get("lease", 0)) == lease_id):
                self._revoke(lease_id)
                return None
        old = self._granted.pop(lease.key, 0)
        expiry = time.time() + math.ceil(ttl) if lease_id else None
        if lease_id and expiry is not None:
            self._granted[lease.key] = lease_id
            self._expiry[lease_id] = expiry
        if old and old != lease_id:
            self._revoke(old)   # ours and now unused: don't leave it to expire
        return Lease(lease.subnet, lease.attrs, lease.ipv6_subnet, expiry)

    def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            self.gateway.call("/kv/lease/revoke", {"ID": lease_id})
        except StoreError as exc:   # expired already, or etcd away: it expires on its own
            log.debug("revoking etcd lease %x: %s", lease_id, exc)

    def _delete(self, key: str) -> None:
        self.gateway.call("/kv/deleterange", {"key": b64(self._subnets + key.encode())})
        self._revoke(self._granted.pop(key, 0))

    def acquire(self, request: AcquireRequest) -> Lease:
        """flannel's tryAcquireLease, but a lost create race tries the next candidate."""
        config = request.config
        self._pending = None
        for _ in range(RACE_ROUNDS):
            kvs, revision = self._read_raw()
            leases, ours = self._plan_view(kvs, request.attrs.public_ip)
            plan = plan_acquire(request, leases)
            deleted: set[str] = set()
            for stale in plan.delete:
                log.info("deleting our incompatible lease %s", stale.key)
                self._delete(stale.key)
                deleted.add(stale.key)
            if plan.reuse is not None:
                entry = ours[plan.reuse.key]
                # A reservation (a key with no etcd lease) stays one, as in flannel.
                ttl = request.ttl if entry.lease_id else 0
                got = self._put(plan.reuse.with_attrs(request.attrs), ttl,
                                {"target": "MOD", "result": "EQUAL", "mod_revision": entry.mod_revision})
                if got is not None:
                    self._keep_for_list(kvs, revision, deleted)
                    return got
                continue   # it changed behind our back: plan again
            if out_of_subnets(plan, config):
                raise OutOfSubnets(f"no free subnet left in {config.network or config.ipv6_network} "
                                   f"({len(leases)} leases in etcd at {', '.join(self.gateway.endpoints)})")
            v4 = plan.candidates if config.enable_ipv4 else [None] * len(plan.ipv6_candidates)
            v6 = plan.ipv6_candidates if config.enable_ipv6 else [None] * len(v4)
            for subnet, ipv6_subnet in zip(v4, v6, strict=True):
                lease = Lease(subnet, request.attrs, ipv6_subnet)
                got = self._put(lease, request.ttl, {"target": "VERSION", "result": "EQUAL", "version": 0})
                if got is not None and (ipv6_subnet is None or subnet is None or self._won_dual(got)):
                    self._keep_for_list(kvs, revision, deleted)
                    return got
                log.info("subnet %s was taken concurrently; trying the next candidate", lease.key)
        raise LeaseConflict(f"lost the race for every free subnet {RACE_ROUNDS} times")

    def _keep_for_list(self, kvs: builtins.list[dict], revision: int, deleted: set[str]) -> None:
        if not self._watching:
            self._pending = (kvs, revision, deleted)

    def _won_dual(self, ours: Lease) -> bool:
        # A dual-stack key only guards the exact v4&v6 pair, so two nodes can hold the same
        # v4 with different v6 halves. The older key wins; the newer one steps aside.
        entries, _ = self._read()
        mine = entries.get(ours.key)
        if mine is None:
            return False
        for entry in entries.values():
            other = entry.lease
            if (other is not None and entry.key != ours.key and entry.create_revision < mine.create_revision
                    and (other.subnet == ours.subnet or other.ipv6_subnet == ours.ipv6_subnet)):
                self._delete(ours.key)
                return False
        return True

    def renew(self, lease: Lease, ttl: float = DEFAULT_TTL) -> Lease:
        """A new grant and the same value (flannel's renewLease); recreates an expired key."""
        value = b64(lease.attrs.to_json())
        for compare in ({"target": "VALUE", "result": "EQUAL", "value": value},
                        {"target": "VERSION", "result": "EQUAL", "version": 0}):
            got = self._put(lease, ttl, compare)
            if got is not None:
                return got
        raise LeaseConflict(f"lease {lease.key} now holds another node's value; acquire again")

    def release(self, lease: Lease) -> None:
        self._delete(lease.key)

    def close(self) -> None:
        self.gateway.close()

    # -- watch -------------------------------------------------------------------------

    def watch(self, revision: int, sink: EventSink) -> Watch:
        """Events after `revision`; reconnects with backoff; re-lists after compaction."""
        self._watching, self._pending = True, None
        return Watch("etcd-watch", lambda watch: self._watch_loop(revision, watch), sink).start()

    def _watch_loop(self, revision: int, watch: Watch) -> None:
        """Supervise one stream at a time. The stream's reader thread turns messages into
        events and delivers them itself; this loop reconnects, probes a quiet stream and
        re-lists after a compaction."""
        cursor = _Cursor(revision + 1)
        current: list[WatchStream] = []

        def close_current() -> None:
            if current:
                current[0].close()
        watch.on_close(close_current)
        delay = BACKOFF[0]
        while not watch.closing.is_set():
            cursor.resync = cursor.error = None
            stream = WatchStream(self.gateway, self._subnets, prefix_end(self._subnets), cursor.next_rev,
                                 lambda item: self._on_message(item, cursor, watch))
            current[:] = [stream]
            if watch.closing.is_set():
                stream.close()
            while not stream.ended.wait(PROBE_AFTER):
                if time.monotonic() - stream.last_activity > PROBE_AFTER and \
                        not self.gateway.ping(timeout=HEARTBEAT):
                    cursor.error = {"error": "etcd did not answer a liveness probe"}
                    stream.close()   # we reconnect below
            stream.close()
            if watch.closing.is_set():
                return
            if stream.messages:
                delay = BACKOFF[0]
            if cursor.resync is not None:
                try:
                    batch, cursor.next_rev = self._resync(cursor.resync)
                except StoreError as exc:   # etcd went away while we re-list: try again
                    log.info("etcd re-list failed: %s", exc)
                else:
                    watch.deliver(batch)
                    continue
            else:
                log.info("etcd watch lost (%s); reconnecting in %.1fs", cursor.error or stream.error, delay)
            watch.closing.wait(delay)
            delay = min(delay * 2, BACKOFF[1])

    def _on_message(self, item: dict, cursor: _Cursor, watch: Watch) -> bool:
        """One gateway message, on the stream's reader thread; False ends the stream."""
        if "error" in item:
            cursor.error = item
            return False
        result = item.get("result", {})
        if result.get("canceled") or int(result.get("compact_revision", 0)):
            cursor.resync = result
            return False
        batch: builtins.list[LeaseEvent] = []
        for event in result.get("events", []):
            batch.extend(self._event(event))
            cursor.next_rev = max(cursor.next_rev, int(event["kv"].get("mod_revision", 0)) + 1)
        watch.deliver(batch)
        return True

    def _resync(self, result: dict) -> tuple[builtins.list[LeaseEvent], int]:
        """History is gone (compaction): list again and report the difference."""
        log.info("etcd watch canceled (compacted at %s, %s); listing again",
                 result.get("compact_revision"), result.get("cancel_reason", ""))
        with self._lock:
            old = dict(self._cache)
        snap = self.list()
        batch = [LeaseEvent.removed(lease) for key, lease in old.items() if key not in self._cache]
        batch += [LeaseEvent.added(lease) for lease in snap.leases
                  if lease.key not in old or old[lease.key].attrs != lease.attrs]
        return batch + snap.rejected, snap.revision

    def _event(self, event: dict) -> builtins.list[LeaseEvent]:
        entry = self._entry(event["kv"])
        with self._lock:
            if event.get("type") == "DELETE":
                cached = self._cache.pop(entry.key, None)
                if entry.key in self._rejected:
                    self._rejected.discard(entry.key)
                    if cached is None:
                        return []
                if cached is None:
                    try:   # never seen: flannel's attr-less Removed
                        subnet, ipv6_subnet = parse_subnet_key(entry.key)
                    except ValueError:
                        return []
                    cached = Lease(subnet, LeaseAttrs(), ipv6_subnet)
                return [LeaseEvent.removed(cached)]
        if entry.lease is None:
            with self._lock:
                self._rejected.add(entry.key)   # a previously good lease stays cached
            return [LeaseEvent.rejected(entry.key, entry.reason)]
        if self.resolve_ttl and entry.lease_id:
            try:
                self._resolve_expiries({entry.lease_id})
            except StoreError as exc:
                log.debug("lease TTL of %s: %s", entry.key, exc)
        lease = self._with_expiry(entry).lease
        assert lease is not None   # entry.lease is set, and _with_expiry keeps it
        with self._lock:
            self._cache[entry.key] = lease
            self._rejected.discard(entry.key)
        return [LeaseEvent.added(lease)]



@dataclass
class _Cursor:
    """Where a watch is: the next revision to ask for, and why its last stream ended."""

    next_rev: int
    resync: dict | None = None   # a canceled/compacted result: list again
    error: dict | None = None    # an error message from the gateway
