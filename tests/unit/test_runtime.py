"""The runtime with real threads and a real SQLite store: a Python hook's own timeout, one call
at a time even after a timeout, no thread leak and the stuck call reported; start-up retries
of any exception and a stop during them; the one event path, and a watch that dies being
reported (/readyz 503 with the reason) and restarted from a fresh list, missing nothing."""
from __future__ import annotations

import ipaddress
import logging
import threading

import pytest

from flannel_ext import Hook, HookContext, HookTimeout, RemoteLease
from flannel_ext._util.errors import HookStillRunning, StoreError
from flannel_ext._config.netconf import NetConf
from flannel_ext._runtime.calls import HookCaller
from flannel_ext._runtime.dispatch import Backoff
from flannel_ext._runtime.iface import ExternalInterface
from flannel_ext._runtime.node import NodeOptions, NodeRuntime, StartupFailed
from flannel_ext._runtime.stats import NodeStats
from flannel_ext._stores.base import Watch
from flannel_ext._stores.lease import Lease, LeaseAttrs
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import wait_for

WAIT = 10  # bounds a broken test, never a latency assertion


def remote(n: int) -> RemoteLease:
    net = ipaddress.IPv4Network(f"10.9.{n}.0/24")
    return RemoteLease(subnet=net, public_ip="192.0.2.10", key=f"10.9.{n}.0-24")


def context() -> HookContext:
    return HookContext(network=None, options={}, log=logging.getLogger("t"), state_dir=".")


class Blocking(Hook):
    """subnet_add blocks until `release` is set; counts calls running at once."""

    def __init__(self, timeout: float | None = None):
        super().__init__()
        if timeout is not None:
            self.timeout = timeout
        self.release = threading.Event()
        self.running = self.most_at_once = self.calls = 0
        self.lock = threading.Lock()

    def subnet_add(self, lease, ctx):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(WAIT)
        finally:
            with self.lock:
                self.running -= 1


def hook_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("hook-")]


def test_a_hooks_own_timeout_is_kept():
    class Slow(Blocking):
        timeout = 0.2

    hook, stats = Slow(), NodeStats()
    caller = HookCaller(hook, context(), stats, default_timeout=30)
    try:
        error = caller.apply("add", [remote(1)])["10.9.1.0-24"]
        assert isinstance(error, HookTimeout) and error.timeout == 0.2
        assert hook.timeout == 0.2 and caller.ctx.call_timeout == 0.2
    finally:
        hook.release.set()
        caller.close()


def test_one_call_at_a_time_even_after_a_timeout():
    hook, stats = Blocking(timeout=0.2), NodeStats()
    caller = HookCaller(hook, context(), stats, default_timeout=30)
    try:
        first = caller.apply("add", [remote(1)])["10.9.1.0-24"]
        assert isinstance(first, HookTimeout)          # still running in the worker
        second = caller.apply("add", [remote(2)])["10.9.2.0-24"]
        assert isinstance(second, HookStillRunning)    # waited, never started beside it
        assert "one call at a time" in str(second)
        assert hook.calls == 1 and "hook" in stats.problems
        hook.release.set()
        wait_for(lambda: hook.running == 0, WAIT)
        wait_for(lambda: "hook" not in stats.problems, WAIT)
        assert caller.apply("add", [remote(3)]) == {"10.9.3.0-24": None}
        assert hook.most_at_once == 1 and hook.calls == 2
    finally:
        hook.release.set()
        caller.close()


def test_a_hook_that_never_returns_costs_one_thread():
    before = set(hook_threads())
    hook = Blocking(timeout=0.05)
    caller = HookCaller(hook, context(), NodeStats(), default_timeout=30)
    try:
        for n in range(8):
            assert isinstance(caller.apply("add", [remote(n)])[f"10.9.{n}.0-24"], HookTimeout)
        (mine,) = set(hook_threads()) - before
        assert hook.calls == 1
    finally:
        hook.release.set()
        caller.close()
    mine.join(WAIT)
    assert not mine.is_alive()   # closed and idle: the worker ends


def test_any_exception_in_a_lifecycle_hook_is_traced_and_raised():
    class Broken(Hook):
        def post_startup(self, ctx):
            raise ValueError("bad option")

    calls = []
    stats = NodeStats()
    stats.add_monitor(calls.append)
    caller = HookCaller(Broken(), context(), stats, default_timeout=5)
    try:
        with pytest.raises(ValueError):
            caller.lifecycle("post_startup")
    finally:
        caller.close()
    assert [(c.hook, c.ok, c.error) for c in calls] == [
        ("PostStartupCommand", False, "ValueError: bad option")]


# --- start-up through the runtime ---------------------------------------------------
class FlakyStartup(Hook):
    """pre_startup raises ValueError `fail` times, then works; records every call."""

    def __init__(self, fail: int):
        super().__init__()
        self.fail, self.calls = fail, []

    def pre_startup(self, ctx):
        self.calls.append("pre_startup")
        if self.fail:
            self.fail -= 1
            raise ValueError("not yet")
        return None

    def post_startup(self, ctx):
        self.calls.append("post_startup")

    def shutdown(self, ctx):
        self.calls.append("shutdown")


def runtime(tmp_path, hook: Hook, *, attempts: int, backoff: float, store_class=SqliteStore) -> NodeRuntime:
    config = NetConf(network=ipaddress.IPv4Network("10.9.0.0/16"), subnet_len=24,
                     subnet_min=ipaddress.IPv4Address("10.9.1.0"), subnet_max=ipaddress.IPv4Address("10.9.250.0"))
    options = NodeOptions(subnet_file=str(tmp_path / "subnet.env"), state_dir=str(tmp_path / "state"),
                          node_name="n0", startup_attempts=attempts, backoff=Backoff(initial=backoff))
    store = store_class(tmp_path / "leases.db")
    return NodeRuntime(config, store, hook, ExternalInterface("lo", "192.0.2.1", 1500), "192.0.2.1", options)


def run_in_thread(rt: NodeRuntime) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["rc"] = rt.run()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_a_value_error_from_pre_startup_is_retried(tmp_path):
    hook = FlakyStartup(fail=2)
    rt = runtime(tmp_path, hook, attempts=5, backoff=0.01)
    thread, outcome = run_in_thread(rt)
    wait_for(lambda: (tmp_path / "subnet.env").exists() or not thread.is_alive(), WAIT)
    rt.request_stop()
    thread.join(WAIT)
    assert outcome == {"rc": 0}
    assert hook.calls == ["pre_startup"] * 3 + ["post_startup", "shutdown"]
    rt.store.close()


def test_start_up_that_keeps_failing_is_one_line_with_exit_code_3(tmp_path):
    hook = FlakyStartup(fail=99)
    rt = runtime(tmp_path, hook, attempts=3, backoff=0.01)
    with pytest.raises(StartupFailed) as info:
        rt.run()
    assert info.value.exit_code == 3
    assert str(info.value) == "PreStartupCommand failed after 3 attempt(s): ValueError: not yet"
    assert hook.calls == ["pre_startup"] * 3 + ["shutdown"]
    assert rt.stats.hook_giveups["PreStartupCommand"] == 1
    rt.store.close()


def test_a_stop_during_start_up_retries_ends_them_and_shutdown_runs(tmp_path):
    hook = FlakyStartup(fail=99)
    rt = runtime(tmp_path, hook, attempts=50, backoff=3600)   # would wait an hour
    thread, outcome = run_in_thread(rt)
    wait_for(lambda: hook.calls == ["pre_startup"], WAIT)
    rt.request_stop()
    thread.join(WAIT)
    assert not thread.is_alive() and outcome == {"rc": 0}
    assert hook.calls == ["pre_startup", "shutdown"]
    rt.store.close()


# --- the event path -----------------------------------------------------------------
class Recording(Hook):
    def __init__(self):
        super().__init__()
        self.added: list[str] = []
        self.removed: list[str] = []

    def subnet_add(self, lease, ctx):
        self.added.append(lease.key)

    def subnet_remove(self, lease, ctx):
        self.removed.append(lease.key)


def remote_lease(n: int) -> Lease:
    attrs = LeaseAttrs(public_ip=f"192.0.2.{n}", backend_type="extension")
    return Lease(ipaddress.IPv4Network(f"10.9.{n}.0/24"), attrs)


class WatchDiesOnce(SqliteStore):
    """A real SQLite store whose first watch fails once `die` is set (a disk error, say)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.die = threading.Event()
        self.watches = 0

    def watch(self, revision, sink):
        self.watches += 1
        if self.watches > 1:
            return super().watch(revision, sink)

        def loop(watch: Watch) -> None:
            inner = SqliteStore.watch(self, revision, watch.sink)
            watch.on_close(inner.close)
            self.die.wait()
            inner.close()
            raise StoreError("sqlite store: disk I/O error")
        return Watch("dies-once", loop, sink).start()


def test_store_events_reach_the_hook(tmp_path):
    hook = Recording()
    rt = runtime(tmp_path, hook, attempts=1, backoff=0.01)
    thread, outcome = run_in_thread(rt)
    writer = SqliteStore(tmp_path / "leases.db")
    try:
        wait_for(lambda: rt.stats.is_ready(), WAIT)
        writer.put_lease(remote_lease(7))
        wait_for(lambda: hook.added == ["10.9.7.0-24"], WAIT)
        writer.delete_key("10.9.7.0-24")
        wait_for(lambda: hook.removed == ["10.9.7.0-24"], WAIT)
    finally:
        rt.request_stop()
        thread.join(WAIT)
        writer.close()
    assert outcome == {"rc": 0}


def test_a_failed_watch_makes_the_node_unready_and_is_restarted(tmp_path):
    hook = Recording()
    rt = runtime(tmp_path, hook, attempts=1, backoff=0.01, store_class=WatchDiesOnce)
    store = rt.store
    thread, outcome = run_in_thread(rt)
    writer = SqliteStore(tmp_path / "leases.db")
    try:
        wait_for(lambda: rt.stats.is_ready(), WAIT)
        writer.put_lease(remote_lease(1))
        wait_for(lambda: hook.added == ["10.9.1.0-24"], WAIT)
        store.die.set()
        wait_for(lambda: "watch" in rt.stats.problems, WAIT)
        assert "disk I/O error" in rt.stats.not_ready_reason() and not rt.stats.is_ready()
        writer.put_lease(remote_lease(2))       # while no watch runs
        writer.delete_key("10.9.1.0-24")
        wait_for(lambda: rt.stats.is_ready(), WAIT)   # restarted from a fresh list
        wait_for(lambda: "10.9.2.0-24" in hook.added and hook.removed == ["10.9.1.0-24"], WAIT)
        writer.put_lease(remote_lease(3))       # and the new watch delivers
        wait_for(lambda: "10.9.3.0-24" in hook.added, WAIT)
        assert store.watches == 2
    finally:
        rt.request_stop()
        thread.join(WAIT)
        writer.close()
    assert outcome == {"rc": 0}
