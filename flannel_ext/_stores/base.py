"""The LeaseStore protocol: one seam, three implementations (sqlite, etcd, kube).

A store turns its backend's records into `Lease` objects and `LeaseEvent` batches.
It parses keys and values, and reports an entry it cannot parse as a REJECTED event
(never as a removal of everything else). Semantic checks (subnet inside Network,
unicast PublicIP, BackendData limits) are the runtime's job: see `_runtime.validate`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flannel_ext._config.netconf import NetConf
from flannel_ext._stores.lease import IPv4Network, IPv6Network, Lease, LeaseAttrs, LeaseEvent

DEFAULT_TTL = 24 * 3600.0


@dataclass(frozen=True)
class AcquireRequest:
    """What a node asks for when it takes (or re-takes) a lease."""

    attrs: LeaseAttrs
    config: NetConf
    ttl: float = DEFAULT_TTL
    # The subnets recorded in the previous subnet.env (flannel's second choice).
    previous_subnet: IPv4Network | None = None
    previous_ipv6_subnet: IPv6Network | None = None
    node_name: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Every lease at one revision, plus the entries that could not be parsed."""

    leases: list[Lease]
    revision: int
    rejected: list[LeaseEvent]


@runtime_checkable
class LeaseStore(Protocol):
    """acquire, renew, list, watch from a revision, release."""

    def network_config(self) -> str | None:
        """The store's own net-conf JSON text (etcd's `<prefix>/config`), if it has one."""

    def acquire(self, request: AcquireRequest) -> Lease:
        """Take a subnet as flannel does: reuse ours, else subnet.env's, else random free."""

    def renew(self, lease: Lease, ttl: float = DEFAULT_TTL) -> Lease:
        """Extend the lease; returns it with the new expiration."""

    def release(self, lease: Lease) -> None:
        """Give the subnet back; other nodes see REMOVED. Idempotent."""

    def list(self) -> Snapshot:
        """Every live lease (expired ones excluded) and the revision they were read at."""

    def watch(self, revision: int, sink: EventSink) -> Watch:
        """Deliver every batch of events after `revision` to `sink`, from a store thread,
        until the returned `Watch` is closed.

        Batches are never empty and arrive in order. Connection loss is retried inside; if
        the store lost history since `revision` (compaction), it lists again and delivers
        the diff. Expired leases are reported as REMOVED. The node's own lease is included.
        Anything that ends the watch otherwise is reported once, to `sink.failed`.
        """

    def close(self) -> None:
        """Release connections and threads."""


class EventSink(Protocol):
    """Where a watch delivers; called from the store's watch thread."""

    def deliver(self, batch: list[LeaseEvent]) -> None:
        """One non-empty batch of events, in store order."""

    def failed(self, error: BaseException) -> None:
        """The watch ended for good (it delivers nothing more): `error` says why."""


class Watch:
    """A running watch: a daemon thread that runs a store's `loop(watch)` until `close()`.

    The loop delivers through `watch.sink`, checks `watch.closing` and registers with
    `on_close` whatever interrupts its blocking waits (close a socket, set an event), so
    close() is prompt. An exception (or a return) that ends the loop before close() is
    reported to `sink.failed`: a watch never dies silently.
    """

    def __init__(self, name: str, loop: Callable[[Watch], None], sink: EventSink):
        self.sink, self._loop = sink, loop
        self.closing = threading.Event()
        self._wakers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def deliver(self, batch: list[LeaseEvent]) -> None:
        if batch and not self.closing.is_set():
            self.sink.deliver(batch)

    def on_close(self, waker: Callable[[], None]) -> None:
        """Call `waker` on close() (at once if already closed)."""
        with self._lock:
            self._wakers.append(waker)
        if self.closing.is_set():
            waker()

    def close(self, timeout: float = 2.0) -> None:
        """Stop delivering and wait up to `timeout` for the thread to end."""
        self.closing.set()
        with self._lock:
            wakers = list(self._wakers)
        for waker in wakers:
            try:
                waker()
            except Exception:  # noqa: BLE001 - closing a half-open connection may fail
                pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop(self)
        except BaseException as exc:  # noqa: BLE001 - reported to the sink, never lost
            if not self.closing.is_set():
                self.sink.failed(exc)
            return
        if not self.closing.is_set():
            self.sink.failed(RuntimeError("the watch loop returned before close()"))
