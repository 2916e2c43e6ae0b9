"""The node runtime: lease a subnet, run the lifecycle, keep every remote subnet programmed.

Order (flannel's RegisterNetwork + main, with its gaps filled):
PreStartup → acquire lease → PostStartup → subnet.env → reconcile with the state file →
watch events → … → ShutdownCommand on SIGTERM/SIGINT (flannel never runs it), also when
the stop comes during the start-up retries.

The main loop blocks on the `Inbox` until the next item (a batch of lease events, a
reload or stop request, a stats change) or its next deadline (lease renewal, a watch
restart: see `LeaseWatch`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannel_ext._util.errors import FlannelExtError, HookError, StoreError
from flannel_ext._util.files import write_atomic
from flannel_ext._config.netconf import NetConf
from flannel_ext._config import paths
from flannel_ext._hooks.base import Hook, HookContext
from flannel_ext._stores.base import AcquireRequest, LeaseStore, Snapshot
from flannel_ext._stores.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel_ext._runtime import subnetenv
from flannel_ext._runtime.calls import HookCaller
from flannel_ext._runtime.dispatch import Backoff, Dispatcher
from flannel_ext._runtime.inbox import Inbox, Request, Stopped, WatchFailed
from flannel_ext._runtime.leasewatch import LeaseWatch
from flannel_ext._runtime.iface import ExternalInterface
from flannel_ext._runtime.state import StateJournal
from flannel_ext._runtime.statedir import KernelIdentity, StateDirError, StateDirLock
from flannel_ext._runtime.stats import NodeStats
from flannel_ext._runtime.validate import RejectedLease, Skipped, to_remote

log = logging.getLogger("flannel_ext.node")
STATS_INTERVAL = 0.5          # write stats.json at most this often
RENEW_PROBLEM = "renew"


class StartupFailed(FlannelExtError):
    """PreStartup/PostStartup (or the lease) kept failing after every attempt."""

    exit_code = 3


@dataclass
class NodeOptions:
    subnet_file: str = subnetenv.DEFAULT_SUBNET_FILE
    state_dir: str = paths.STATE_DIR
    node_name: str = ""
    hook_timeout: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    startup_attempts: int = 5
    lease_ttl: float = 24 * 3600.0
    renew_margin: float = 3600.0          # seconds (flag is in minutes, as flanneld's)
    ip_masq: bool = False
    release_on_exit: bool = False
    public_ipv6: str | None = None
    dry_run: bool = False                 # one traced pass; nothing written to kernel or store


class NodeRuntime:
    def __init__(self, config: NetConf, store: LeaseStore, hook: Hook, iface: ExternalInterface,
                 public_ip: str, options: NodeOptions, *, stats: NodeStats | None = None):
        self.config, self.store, self.hook, self.iface = config, store, hook, iface
        self.public_ip, self.options = public_ip, options
        self.stats = stats or NodeStats()
        self.lease: Lease | None = None
        self.on_ready: list[Callable[[NodeRuntime], None]] = []
        self.reload_source: Callable[[], tuple[NetConf, Hook] | None] | None = None
        self.inbox = Inbox()
        self._renew_retry_at = 0.0
        self._stats_written, self._stats_at = "", 0.0
        self._stats_due: float | None = None
        self._stats_queued = False
        self.watch = LeaseWatch(store, self.inbox, self.stats, self._resync)
        self._dispatching = False
        if not options.dry_run:
            try:
                os.makedirs(options.state_dir, exist_ok=True)
            except OSError as exc:   # one line, as the lock's own error, not a traceback
                raise StateDirError(f"cannot create the state dir: {exc.filename}: {exc.strerror}; "
                                    "pass a writable --state-dir") from None
        self.ctx = HookContext(
            network=config.network, ipv6_network=config.ipv6_network, options=dict(config.backend),
            log=logging.getLogger("flannel_ext.hook"), state_dir=Path(options.state_dir),
            public_ip=public_ip, public_ipv6=options.public_ipv6, iface=iface.name, iface_mtu=iface.mtu,
            dry_run=options.dry_run)
        self.caller = self._make_caller(hook)
        network = " ".join(str(n) for n in (config.network, config.ipv6_network) if n)
        self.journal = StateJournal(options.state_dir, KernelIdentity.current(network), stats=self.stats,
                                    enabled=not options.dry_run)
        self.dispatcher = Dispatcher(self.caller, self.stats, backoff=options.backoff,
                                     on_programmed=self._save_programmed, journal=self.journal)

    @property
    def state_file(self) -> str:
        return self.journal.snapshot_path

    def _make_caller(self, hook: Hook) -> HookCaller:
        return HookCaller(hook, self.ctx, self.stats, default_timeout=self.options.hook_timeout)

    # --- start-up ----------------------------------------------------------------
    def _with_retries(self, what: str, fn: Callable[[], Any]) -> Any:
        """Retry a start-up step with backoff, whatever it raises (`PermanentError` ends it
        at once); flannel exits (and crash-loops) at once. A stop request ends the wait."""
        attempts = max(1, self.options.startup_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - any exception is retried, as documented
                why = str(exc) if isinstance(exc, FlannelExtError) else f"{type(exc).__name__}: {exc}"
                if attempt == attempts or (isinstance(exc, HookError) and not exc.temporary):
                    self.stats.record_giveup(what.split()[-1] if "Command" in what else "lease")
                    raise StartupFailed(f"{what} failed after {attempt} attempt(s): {why}") from None
                delay = self.options.backoff.delay(attempt)
                log.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s",
                            what, attempt, attempts, delay, why)
                self.inbox.sleep(delay)
        raise AssertionError("unreachable")

    def _acquire(self) -> Lease:
        attrs = self._wanted_attrs()
        prev4, prev6 = subnetenv.previous_subnets(self.options.subnet_file)
        request = AcquireRequest(attrs=attrs, config=self.config, ttl=self.options.lease_ttl,
                                 previous_subnet=prev4, previous_ipv6_subnet=prev6,
                                 node_name=self.options.node_name)
        if self.options.dry_run:
            return self._planned_lease(request)
        lease = self._with_retries("acquiring a lease", lambda: self.store.acquire(request))
        log.info("acquired lease %s (public ip %s)", lease.key, self.public_ip)
        return lease

    def _planned_lease(self, request: AcquireRequest) -> Lease:
        """Dry run: the lease acquire would take, without writing it."""
        from flannel_ext._stores.allocate import plan_acquire
        plan = plan_acquire(request, self.store.list().leases)
        if plan.reuse is not None:
            return plan.reuse.with_attrs(request.attrs)
        if not plan.candidates:
            raise StoreError("out of subnets")
        log.info("(dry run) would acquire %s", plan.candidates[0])
        return Lease(plan.candidates[0], request.attrs,
                     plan.ipv6_candidates[0] if plan.ipv6_candidates else None)

    def _set_lease(self, lease: Lease) -> None:
        self.lease = lease
        self.journal.own = lease.key
        self.ctx.subnet, self.ctx.ipv6_subnet = lease.subnet, lease.ipv6_subnet
        self.stats.subnet = str(lease.subnet or "")

    def _write_subnet_env(self) -> None:
        fields: dict[str, Any] = dict(network=self.config.network, subnet=self.ctx.subnet,
                      ipv6_network=self.config.ipv6_network, ipv6_subnet=self.ctx.ipv6_subnet,
                      mtu=self.hook.mtu(self.ctx) or self.iface.mtu, ip_masq=self.options.ip_masq)
        if self.options.dry_run:
            log.info("(dry run) would write %s:\n%s", self.options.subnet_file,
                     subnetenv.render(**fields).rstrip())
        else:
            subnetenv.write(self.options.subnet_file, **fields)

    def start_dataplane(self) -> None:
        """PreStartup → lease → PostStartup → subnet.env. Safe to call again on reload."""
        data = self._with_retries("PreStartupCommand", lambda: self.caller.lifecycle("pre_startup"))
        self.ctx.backend_data = data or ""
        if self.lease is None or self.lease.attrs != self._wanted_attrs():
            self._set_lease(self._acquire())
        self._with_retries("PostStartupCommand", lambda: self.caller.lifecycle("post_startup"))
        self._write_subnet_env()

    def _wanted_attrs(self) -> LeaseAttrs:
        if self.hook.backend_type != "extension" and self.ctx.backend_data:
            return LeaseAttrs(self.public_ip, self.options.public_ipv6, self.hook.backend_type,
                              self.ctx.backend_data)
        return LeaseAttrs.with_string_data(self.public_ip, self.ctx.backend_data or None,
                                           public_ipv6=self.options.public_ipv6,
                                           backend_type=self.hook.backend_type)

    # --- events ------------------------------------------------------------------
    def _handle(self, event: LeaseEvent) -> None:
        if event.type is EventType.REJECTED:
            self._reject(event.key, "unparsable", event.reason)
            return
        lease = event.lease
        assert lease is not None   # only REJECTED events come without one
        if self.lease is not None and lease.same_subnet(self.lease):
            if event.type is EventType.REMOVED:
                log.warning("our lease %s was revoked or expired; acquiring again", lease.key)
                self._reacquire()
            return
        if event.type is EventType.REMOVED:
            self.dispatcher.set_desired(lease.key, None)
            return
        try:
            remote = to_remote(lease, self.config, self.hook)
        except RejectedLease as exc:
            self._reject(exc.rejection.key, exc.rejection.reason, exc.rejection.detail)
            self.dispatcher.set_desired(lease.key, None)
            return
        except Skipped as exc:
            log.info("%s (%s)", exc, lease.key)
            self.dispatcher.set_desired(lease.key, None)
            return
        self.dispatcher.set_desired(lease.key, remote)

    def _reject(self, key: str, reason: str, detail: str) -> None:
        self.stats.record_rejected(reason)
        log.warning("rejected lease %s (%s): %s", key, reason, detail)

    def _reacquire(self) -> None:
        old = self.lease
        self.lease = None
        new = self._acquire()
        self._set_lease(new)
        if old is None or not new.same_subnet(old):
            log.warning("subnet changed from %s to %s; running PostStartup again",
                        old and old.key, new.key)
            self._with_retries("PostStartupCommand", lambda: self.caller.lifecycle("post_startup"))
            self._write_subnet_env()

    def _renew_due(self) -> float | None:
        """When (time.time()) the lease must be renewed; None if it never expires."""
        lease = self.lease
        if lease is None or lease.expiration is None:
            return None
        ttl = self.options.lease_ttl
        return max(lease.expiration - min(self.options.renew_margin, ttl / 2), self._renew_retry_at)

    def _renew(self) -> None:
        assert self.lease is not None
        ttl = self.options.lease_ttl
        try:
            self._set_lease(self.store.renew(self.lease, ttl))
        except Exception as exc:  # noqa: BLE001 - a renewal bug must not stop the node either
            # flannel retries after 1 min; sooner for short (test) TTLs.
            self._renew_retry_at = time.time() + min(60.0, ttl / 4)
            log.error("Error renewing lease (trying again soon): %s", exc)
            if not isinstance(exc, StoreError):
                self.stats.set_problem(RENEW_PROBLEM, f"{type(exc).__name__}: {exc}")
            return
        self.stats.clear_problem(RENEW_PROBLEM)

    # --- the lease watch ---------------------------------------------------------
    def _resync(self, snapshot: Snapshot) -> None:
        """After a watch restart: leases gone from the fresh list are removed, the rest applied."""
        gone = self.dispatcher.desired_keys() - {lease.key for lease in snapshot.leases} \
            - {event.key for event in snapshot.rejected}
        for key in gone:
            self.dispatcher.set_desired(key, None)
        self._apply_snapshot(snapshot)

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        for event in snapshot.rejected:
            self._handle(event)
        for lease in snapshot.leases:
            self._handle(LeaseEvent.added(lease))

    # --- reload and stop ---------------------------------------------------------
    def request_reload(self) -> None:
        self.inbox.put(Request.RELOAD)

    def request_stop(self) -> None:
        """Safe to call from a signal handler: the main loop (or a start-up retry) ends,
        and ShutdownCommand runs."""
        self.inbox.request_stop()

    def _reload(self) -> None:
        try:
            loaded = self.reload_source() if self.reload_source else None
        except FlannelExtError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return
        if loaded is None:
            return
        config, hook = loaded
        if (config.network, config.subnet_len, config.ipv6_network) != \
                (self.config.network, self.config.subnet_len, self.config.ipv6_network):
            log.error("reload rejected: Network or SubnetLen changed; restart the daemon for that")
            return
        log.info("configuration changed: restarting the dataplane with the new hook")
        self.dispatcher.pause()
        self._shutdown_hook()
        self.caller.close()
        self.config, self.hook = config, hook
        self.ctx.options = dict(config.backend)
        self.caller = self._make_caller(hook)
        self.start_dataplane()
        self.dispatcher.forget_programmed()
        self.dispatcher.resume(self.caller)

    def _shutdown_hook(self) -> None:
        try:
            self.caller.lifecycle("shutdown")
        except Exception as exc:  # noqa: BLE001 - logged; the daemon is exiting or reloading
            log.error("ShutdownCommand failed: %s", exc)

    # --- stats -------------------------------------------------------------------
    def _save_programmed(self) -> None:
        if self.options.dry_run:
            return
        self.journal.checkpoint()  # the journal is written around each call; this compacts it

    def _stats_changed(self) -> None:
        """NodeStats.on_change, from any thread: one queued request at a time."""
        if not self._stats_queued:
            self._stats_queued = True
            self.inbox.put(Request.STATS)

    def _stats_requested(self) -> None:
        self._stats_queued = False
        if self._stats_due is None:
            self._stats_due = max(time.monotonic(), self._stats_at + STATS_INTERVAL)

    def _write_stats(self) -> None:
        self._stats_due = None
        if self.options.dry_run:
            return
        self._stats_at = time.monotonic()
        self.stats.leases_known = self.dispatcher.desired_count()
        snap = self.stats.snapshot()
        snap.update(node=self.options.node_name, public_ip=self.public_ip, pid=os.getpid())
        text = json.dumps(snap, sort_keys=True)
        if text != self._stats_written:
            path = os.path.join(self.options.state_dir, "stats.json")
            try:
                write_atomic(path, text + "\n")
            except OSError:
                if not _overwrite_in_place(path, text + "\n"):
                    return  # the state dir is unwritable: the journal reports that
            self._stats_written = text

    # --- the main loop -----------------------------------------------------------
    def _dry_run_finish(self) -> int:
        while not self.dispatcher.idle():
            time.sleep(0.05)
        log.info("(dry run) done: nothing was changed in the kernel or the store")
        return 0

    def run(self) -> int:
        """Run until `request_stop()`; the state dir is locked for the whole run (one daemon per dir)."""
        lock = None if self.options.dry_run else StateDirLock(self.options.state_dir).acquire()
        try:
            return self._run()
        finally:
            self.journal.close()
            if lock is not None:
                lock.release()

    def _run(self) -> int:
        """Start up, then serve events until `request_stop()`; ShutdownCommand runs on the
        way out whenever start-up began (also after a stop during its retries)."""
        self.stats.on_change = self._stats_changed
        try:
            self.start_dataplane()
            for callback in self.on_ready:
                callback(self)
            self.stats.ready = True
            snapshot = self.store.list()
            self.dispatcher.load_programmed(self.journal.recover())
            self._apply_snapshot(snapshot)
            self.stats.mark_reconciled()
            self.dispatcher.start()
            self._dispatching = True
            if self.options.dry_run:
                return self._dry_run_finish()
            self.watch.start(snapshot.revision)
            self._write_stats()
            self._loop()
        except Stopped:
            log.info("stop requested during start-up")
        finally:
            self._finish()
        log.info("Exiting cleanly...")
        return 0

    def _next_timeout(self) -> float | None:
        now, wall = time.monotonic(), time.time()
        # the journal's retry is on time.monotonic too: without a deadline here, a full disk
        # that frees up would wait for the next event to be noticed
        deadlines = [d - now for d in (self.watch.restart_at, self._stats_due, self.journal.retry_at)
                     if d is not None]
        renew = self._renew_due()
        if renew is not None:
            deadlines.append(renew - wall)
        return max(0.0, min(deadlines)) if deadlines else None

    def _loop(self) -> None:
        while not self.inbox.stop_requested:
            item = self.inbox.get(self._next_timeout())
            if isinstance(item, list):
                for event in item:
                    self._handle(event)
            elif isinstance(item, WatchFailed):
                self.watch.failed(item)
            elif item is Request.RELOAD:
                self._reload()
            elif item is Request.STATS:
                self._stats_requested()
            now = time.monotonic()
            self.watch.restart_if_due()
            renew = self._renew_due()
            if renew is not None and time.time() >= renew:
                self._renew()
            if self._stats_due is not None and now >= self._stats_due:
                self._write_stats()
            self.journal.maintain()

    def _finish(self) -> None:
        self.watch.stop()
        if self._dispatching:
            self.dispatcher.stop()
        self._shutdown_hook()
        self.caller.close()
        if self.options.release_on_exit and self.lease is not None and not self.options.dry_run:
            try:
                self.store.release(self.lease)
                log.info("released lease %s", self.lease.key)
            except StoreError as exc:
                log.error("could not release lease %s: %s", self.lease.key, exc)
        self.stats.on_change = None
        self.stats.ready = False
        self._write_stats()


def _overwrite_in_place(path: str, text: str) -> bool:
    """Rewrite a small file in its own blocks: works on a full disk, where a temp file cannot
    be created, so `lab status` still sees the error. False if that failed too."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
