"""The node runtime: lease a subnet, run the lifecycle, keep every remote subnet programmed.

Order (flannel's RegisterNetwork + main, with its gaps filled):
PreStartup → acquire lease → PostStartup → subnet.env → reconcile with the state file →
watch events → … → ShutdownCommand on SIGTERM/SIGINT (flannel never runs it).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable

from flannel_ext._util.errors import FlannelExtError, HookError, StoreError
from flannel_ext._util.files import write_atomic
from flannel_ext._config.netconf import NetConf
from flannel_ext._hooks.base import Hook, HookContext
from flannel_ext._stores.base import AcquireRequest, LeaseStore
from flannel_ext._stores.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel_ext._runtime import subnetenv
from flannel_ext._runtime.calls import HookCaller
from flannel_ext._runtime.dispatch import Backoff, Dispatcher
from flannel_ext._runtime.iface import ExternalInterface
from flannel_ext._runtime.state import StateJournal
from flannel_ext._runtime.statedir import KernelIdentity, StateDirLock
from flannel_ext._runtime.stats import NodeStats
from flannel_ext._runtime.validate import RejectedLease, Skipped, to_remote

log = logging.getLogger("flannel_ext.node")


class StartupFailed(FlannelExtError):
    """PreStartup/PostStartup (or the lease) kept failing after every attempt."""

    exit_code = 3


@dataclass
class NodeOptions:
    subnet_file: str = subnetenv.DEFAULT_SUBNET_FILE
    state_dir: str = "/var/lib/flannel-ext"
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
        self._reload_requested = threading.Event()
        self._renew_retry_at = 0.0
        self._events: queue.Queue = queue.Queue()
        self._stats_written = ""
        os.makedirs(options.state_dir, exist_ok=True)
        self.ctx = HookContext(
            network=config.network, ipv6_network=config.ipv6_network, options=dict(config.backend),
            log=logging.getLogger("flannel_ext.hook"), state_dir=options.state_dir,
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
        if hasattr(hook, "timeout"):
            hook.timeout = self.options.hook_timeout
        return HookCaller(hook, self.ctx, self.stats, timeout=self.options.hook_timeout)

    # --- start-up ----------------------------------------------------------------
    def _with_retries(self, what: str, fn: Callable):
        """Retry a start-up step with backoff; flannel exits (and crash-loops) at once."""
        attempts = max(1, self.options.startup_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except (HookError, StoreError, OSError) as exc:
                if attempt == attempts or not getattr(exc, "temporary", True):
                    raise StartupFailed(f"{what} failed after {attempt} attempt(s): {exc}") from None
                delay = self.options.backoff.delay(attempt)
                log.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s",
                            what, attempt, attempts, delay, exc)
                time.sleep(delay)

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
        fields = dict(network=self.config.network, subnet=self.ctx.subnet,
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
        self._set_lease(self._acquire())
        if old is None or not self.lease.same_subnet(old):
            log.warning("subnet changed from %s to %s; running PostStartup again",
                        old and old.key, self.lease.key)
            self._with_retries("PostStartupCommand", lambda: self.caller.lifecycle("post_startup"))
            self._write_subnet_env()

    def _renew_if_due(self) -> None:
        lease = self.lease
        if lease is None or lease.expiration is None:
            return
        ttl = self.options.lease_ttl
        now = time.time()
        if now < max(lease.expiration - min(self.options.renew_margin, ttl / 2), self._renew_retry_at):
            return
        try:
            self._set_lease(self.store.renew(lease, ttl))
        except StoreError as exc:
            # flannel retries after 1 min; sooner for short (test) TTLs.
            self._renew_retry_at = now + min(60.0, ttl / 4)
            log.error("Error renewing lease (trying again soon): %s", exc)

    # --- reload ------------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload_requested.set()

    def _reload(self) -> None:
        self._reload_requested.clear()
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
        self.config, self.hook = config, hook
        self.ctx.options = dict(config.backend)
        self.caller = self._make_caller(hook)
        self.start_dataplane()
        self.dispatcher.forget_programmed()
        self.dispatcher.resume(self.caller)

    def _shutdown_hook(self) -> None:
        try:
            self.caller.lifecycle("shutdown")
        except FlannelExtError as exc:
            log.error("ShutdownCommand failed: %s", exc)

    # --- the main loop -----------------------------------------------------------
    def _save_programmed(self, programmed) -> None:
        self.journal.checkpoint()  # the journal is written around each call; this compacts it

    def _write_stats(self) -> None:
        if self.options.dry_run:
            return
        self.stats.leases_known = len(self.dispatcher.desired_keys())
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

    def _watch(self, revision: int, stop: threading.Event) -> None:
        try:
            for batch in self.store.watch(revision, stop):
                self._events.put(batch)
                if stop.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - reported to the main loop
            self._events.put(exc)

    def _dry_run_finish(self) -> int:
        while not self.dispatcher.idle():
            time.sleep(0.05)
        self.dispatcher.stop()
        self._shutdown_hook()
        log.info("(dry run) done: nothing was changed in the kernel or the store")
        return 0

    def run(self, stop: threading.Event) -> int:
        """Run until `stop`; the state dir is locked for the whole run (one daemon per dir)."""
        lock = None if self.options.dry_run else StateDirLock(self.options.state_dir).acquire()
        try:
            return self._run(stop)
        finally:
            self.journal.close()
            if lock is not None:
                lock.release()

    def _run(self, stop: threading.Event) -> int:
        self.start_dataplane()
        for callback in self.on_ready:
            callback(self)
        self.stats.ready = True
        snapshot = self.store.list()
        self.dispatcher.load_programmed(self.journal.recover())
        for event in snapshot.rejected:
            self._handle(event)
        for lease in snapshot.leases:
            self._handle(LeaseEvent.added(lease))
        self.stats.mark_reconciled()
        self.dispatcher.start()
        if self.options.dry_run:
            return self._dry_run_finish()
        watch_stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(snapshot.revision, watch_stop),
                                   name="watch", daemon=True)
        watcher.start()
        last_stats = 0.0
        try:
            while not stop.is_set():
                try:
                    item = self._events.get(timeout=0.1)
                except queue.Empty:
                    item = []
                if isinstance(item, Exception):
                    raise StoreError(f"lease watch failed: {item}")
                for event in item:
                    self._handle(event)
                if self._reload_requested.is_set():
                    self._reload()
                self._renew_if_due()
                self.journal.maintain()
                if time.monotonic() - last_stats > 0.5:
                    self._write_stats()
                    last_stats = time.monotonic()
        finally:
            watch_stop.set()
            self.dispatcher.stop()
            self._shutdown_hook()
            if self.options.release_on_exit and self.lease is not None:
                try:
                    self.store.release(self.lease)
                    log.info("released lease %s", self.lease.key)
                except StoreError as exc:
                    log.error("could not release lease %s: %s", self.lease.key, exc)
            self.stats.ready = False
            self._write_stats()
            watcher.join(2.0)
        log.info("Exiting cleanly...")
        return 0


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
