"""The LeaseStore protocol: one seam, three implementations (sqlite, etcd, kube).

A store turns its backend's records into `Lease` objects and `LeaseEvent` batches.
It parses keys and values, and reports an entry it cannot parse as a REJECTED event
(never as a removal of everything else). Semantic checks (subnet inside Network,
unicast PublicIP, BackendData limits) are the runtime's job: see `_runtime.validate`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from collections.abc import Iterator

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

    def watch(self, revision: int, stop: threading.Event) -> Iterator[list[LeaseEvent]]:
        """Yield batches of events after `revision` until `stop` is set.

        A batch may be empty (a heartbeat), so the caller can check `stop`. If the store
        lost history since `revision` (compaction), it lists again and yields the diff.
        Expired leases are reported as REMOVED. The node's own lease is included.
        """

    def close(self) -> None:
        """Release connections and threads."""
