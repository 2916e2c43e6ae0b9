"""A worked example: append every hook event as one JSON line, to trace a cluster.

    {"Network": "10.50.0.0/16",
     "Backend": {"Type": "extension", "Hook": "hooks/event_log.py:EventLogHook",
                 "Path": "/var/log/flannel-events.jsonl"}}

Path defaults to ``<state dir>/events.jsonl``. Each line is self-contained and written
with one append, so ``tail -f`` and ``jq`` work while the daemon runs.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from flannel_ext import Hook, HookContext, RemoteLease


class EventLogHook(Hook):
    description = "Append every hook event as a JSON line (Path option, default <state dir>/events.jsonl)"

    def pre_startup(self, ctx: HookContext) -> None:
        self._write(ctx, "pre_startup", iface=ctx.iface, public_ip=ctx.public_ip)

    def post_startup(self, ctx: HookContext) -> None:
        self._write(ctx, "post_startup", subnet=_str(ctx.subnet), network=_str(ctx.network),
                    public_ip=ctx.public_ip)

    def subnet_add(self, lease: RemoteLease, ctx: HookContext) -> None:
        self._write(ctx, "subnet_add", **_lease(lease))

    def subnet_remove(self, lease: RemoteLease, ctx: HookContext) -> None:
        self._write(ctx, "subnet_remove", **_lease(lease))

    def subnet_add_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._write_many(ctx, [("subnet_add", _lease(lease)) for lease in leases])

    def subnet_remove_batch(self, leases: Sequence[RemoteLease], ctx: HookContext) -> None:
        self._write_many(ctx, [("subnet_remove", _lease(lease)) for lease in leases])

    def shutdown(self, ctx: HookContext) -> None:
        self._write(ctx, "shutdown")

    def _path(self, ctx: HookContext) -> Path:
        return Path(ctx.option("Path") or Path(ctx.state_dir) / "events.jsonl")

    def _write(self, ctx: HookContext, event: str, **fields: Any) -> None:
        self._write_many(ctx, [(event, fields)])

    def _write_many(self, ctx: HookContext, events: list[tuple[str, dict]]) -> None:
        if not events:
            return
        now = time.time()
        text = "".join(json.dumps({"time": now, "event": e, **f}, sort_keys=True) + "\n" for e, f in events)
        path = self._path(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: concurrent writers never interleave inside a line.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _lease(lease: RemoteLease) -> dict:
    return {"subnet": _str(lease.subnet), "public_ip": lease.public_ip, "key": lease.key,
            "ipv6_subnet": _str(lease.ipv6_subnet), "public_ipv6": lease.public_ipv6,
            "backend_data": lease.backend_data}
