"""The dispatcher against an in-memory hook: per-subnet order, retries, supersession."""
from __future__ import annotations

import ipaddress
import logging
import sys
import threading

from flannel_ext import Hook, HookContext, PermanentError, RemoteLease
from flannel_ext._runtime.calls import HookCaller
from flannel_ext._runtime.dispatch import Backoff, Dispatcher
from flannel_ext._runtime.stats import NodeStats
from flannel_ext.testing import wait_for


def lease(data: str, subnet: str = "10.9.1.0/24") -> RemoteLease:
    net = ipaddress.IPv4Network(subnet)
    return RemoteLease(subnet=net, public_ip="192.0.2.10", backend_data=data,
                       backend_data_raw=f'"{data}"' if data else None,
                       key=f"{net.network_address}-{net.prefixlen}")


class RecordingHook(Hook):
    """Adds fail permanently on empty data; the first add can be held in flight."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.hold = threading.Event()
        self.held = threading.Event()
        self.hold.set()

    def subnet_add(self, lease, ctx):
        self.held.set()
        self.hold.wait(10)
        self.calls.append(("add", lease.backend_data))
        if not lease.backend_data:
            raise PermanentError("no VTEP MAC")

    def subnet_remove(self, lease, ctx):
        self.calls.append(("remove", lease.backend_data))


def make(hook):
    ctx = HookContext(network=None, options={}, log=logging.getLogger("t"), state_dir=".")
    stats = NodeStats()
    dispatcher = Dispatcher(HookCaller(hook, ctx, stats, default_timeout=10), stats, backoff=Backoff(initial=0.01))
    dispatcher.start()
    return dispatcher


def test_changed_data_removes_old_then_adds_new():
    hook = RecordingHook()
    d = make(hook)
    try:
        d.set_desired("10.9.1.0-24", lease("aa"))
        wait_for(lambda: hook.calls == [("add", "aa")])
        d.set_desired("10.9.1.0-24", lease("bb"))
        wait_for(lambda: len(hook.calls) == 3)
        assert hook.calls == [("add", "aa"), ("remove", "aa"), ("add", "bb")]
    finally:
        d.stop()


def test_permanent_failure_of_superseded_data_does_not_block_the_new_data():
    """A peer publishes its VTEP MAC while an add with the old, empty data is in flight."""
    hook = RecordingHook()
    hook.hold.clear()
    d = make(hook)
    try:
        d.set_desired("10.9.1.0-24", lease(""))
        assert hook.held.wait(5)
        d.set_desired("10.9.1.0-24", lease("aa:bb:cc:dd:ee:ff"))
        hook.hold.set()
        wait_for(lambda: ("add", "aa:bb:cc:dd:ee:ff") in hook.calls, timeout=5)
        wait_for(lambda: d.programmed().get("10.9.1.0-24") is not None)
        assert d.programmed()["10.9.1.0-24"].backend_data == "aa:bb:cc:dd:ee:ff"
    finally:
        d.stop()


def test_permanent_failure_of_current_data_gives_up():
    hook = RecordingHook()
    d = make(hook)
    try:
        d.set_desired("10.9.1.0-24", lease(""))
        wait_for(lambda: hook.calls == [("add", "")])
        wait_for(lambda: d.idle())
        assert hook.calls == [("add", "")] and d.programmed() == {}
    finally:
        d.stop()


class FailingRemove(RecordingHook):
    """Every remove fails (the route it would delete is already gone)."""

    def subnet_remove(self, lease, ctx):
        self.calls.append(("remove", lease.backend_data))
        raise RuntimeError("RTNETLINK answers: No such process")


def test_a_remove_that_gives_up_never_strands_the_add_of_newer_data():
    hook = FailingRemove()
    stats = NodeStats()
    ctx = HookContext(network=None, options={}, log=logging.getLogger("t"), state_dir=".")
    d = Dispatcher(HookCaller(hook, ctx, stats, default_timeout=10), stats,
                   backoff=Backoff(initial=0.01, attempts=3))
    d.start()
    try:
        d.set_desired("10.9.1.0-24", lease("aa"))
        wait_for(lambda: d.programmed().get("10.9.1.0-24") is not None)
        d.set_desired("10.9.1.0-24", lease("bb"))   # the lease was rewritten with new data
        wait_for(lambda: ("add", "bb") in hook.calls)
        wait_for(lambda: d.programmed()["10.9.1.0-24"].backend_data == "bb")
        assert hook.calls == [("add", "aa")] + [("remove", "aa")] * 3 + [("add", "bb")]
        assert stats.hook_giveups == {"SubnetRemoveCommand": 1}
    finally:
        d.stop()


def test_an_error_in_the_dispatcher_thread_is_reported_and_retried():
    """Writing the programmed state fails: /readyz must say so, and the write is retried."""
    hook = RecordingHook()
    stats = NodeStats(ready=True)
    writes = []

    def save():
        writes.append(d.programmed())
        if len(writes) == 1:
            raise OSError(28, "No space left on device")

    ctx = HookContext(network=None, options={}, log=logging.getLogger("t"), state_dir=".")
    d = Dispatcher(HookCaller(hook, ctx, stats, default_timeout=10), stats, on_programmed=save)
    d.start()
    try:
        d.set_desired("10.9.1.0-24", lease("aa"))
        wait_for(lambda: "dispatcher" in stats.problems)
        assert not stats.is_ready() and "No space left on device" in stats.not_ready_reason()
        wait_for(lambda: len(writes) >= 2 and "dispatcher" not in stats.problems, timeout=10)
        assert "10.9.1.0-24" in writes[-1] and stats.is_ready()
        d.set_desired("10.9.2.0-24", lease("bb", "10.9.2.0/24"))   # the thread is still alive
        wait_for(lambda: ("add", "bb") in hook.calls)
    finally:
        d.stop()


def test_after_a_join_a_pass_costs_nothing_per_programmed_lease():
    """The ready set is rebuilt once drained (an emptied set still walks its whole table on
    every pass) and the desired count is kept, not counted: both O(1) per event at any N."""
    hook = RecordingHook()
    d = make(hook)
    try:
        subnets = [ipaddress.IPv4Network(f"10.9.{i >> 8}.{i & 255}/32") for i in range(3000)]
        for net in subnets:
            d.set_desired(f"{net.network_address}-32", lease("aa", str(net)))
        wait_for(lambda: len(d.programmed()) == 3000, timeout=30)
        drained = sys.getsizeof(set(range(8)))
        wait_for(lambda: sys.getsizeof(d._ready) <= drained)
        assert d.desired_count() == len(d.desired_keys()) == 3000
        for net in subnets[:1000]:
            d.set_desired(f"{net.network_address}-32", None)
        wait_for(lambda: len(d.programmed()) == 2000, timeout=30)
        assert d.desired_count() == len(d.desired_keys()) == 2000
    finally:
        d.stop()
