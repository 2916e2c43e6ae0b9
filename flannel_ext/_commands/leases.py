"""`flannel-ext leases`: list the leases in a store, as every node sees them.

One row per lease: subnet(s), public IP(s), backend type, backend data and expiry; an
entry the store cannot parse is shown as rejected, with the reason (nodes never run a
hook for it). The store is opened read-only: nothing is created or written.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from flannel_ext._commands import flags, store_args
from flannel_ext._stores.base import Snapshot
from flannel_ext._stores.lease import Lease


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("leases", help="list the leases in a store",
                              description="List the leases in a store, as every node sees them: subnets, public "
                                          "IPs, backend type and data, expiry; unparsable entries as rejected. "
                                          "The store is only read.")
    store_args.add_store_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    flags.flanneld_style(p)      # the store flags as a flanneld command line or unit has them
    p.set_defaults(func=run_leases)


def read_leases(args: argparse.Namespace) -> Snapshot:
    from flannel_ext._stores.readonly import open_read_only   # the stores load only when used

    url, options = store_args.store_url(args), store_args.store_options(args)
    if url.startswith("etcd"):
        options["resolve_ttl"] = True     # one extra call per etcd lease, for EXPIRES IN
    store = open_read_only(url, missing_ok=False, **options)
    try:
        return store.list()
    finally:
        store.close()


def expires_in(expiration: float | None, now: float) -> str:
    """``23h59m``, ``59s``, ``expired`` or ``never`` (a reservation)."""
    if expiration is None:
        return "never"
    left = int(expiration - now)
    if left <= 0:
        return "expired"
    hours, rest = divmod(left, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else (f"{rest // 60}m{rest % 60:02d}s" if rest >= 60
                                                        else f"{rest}s")


def lease_json(lease: Lease, now: float) -> dict[str, Any]:
    attrs = lease.attrs

    def data(raw: str | None) -> Any:
        return None if raw is None else json.loads(raw)
    return {"key": lease.key, "subnet": str(lease.subnet) if lease.subnet else None,
            "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
            "public_ip": attrs.public_ip, "public_ipv6": attrs.public_ipv6,
            "backend_type": attrs.backend_type, "backend_data": data(attrs.backend_data),
            "backend_v6_data": data(attrs.backend_v6_data), "expiration": lease.expiration,
            "expires_in": None if lease.expiration is None else max(0.0, round(lease.expiration - now, 3))}


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def render_table(snap: Snapshot, now: float) -> str:
    v6 = any(lease.ipv6_subnet or lease.attrs.public_ipv6 for lease in snap.leases)
    header = ["SUBNET", *(["IPV6 SUBNET"] if v6 else []), "PUBLIC IP", *(["PUBLIC IPV6"] if v6 else []),
              "BACKEND", "EXPIRES IN", "BACKEND DATA"]
    rows = []
    for lease in sorted(snap.leases, key=lambda item: item.key):
        a = lease.attrs
        rows.append([str(lease.subnet or "-"), *([str(lease.ipv6_subnet or "-")] if v6 else []), a.public_ip,
                     *([a.public_ipv6 or "-"] if v6 else []), a.backend_type or "-",
                     expires_in(lease.expiration, now), _short(a.backend_data or "-")])
    for event in sorted(snap.rejected, key=lambda item: item.key):
        rows.append([event.key, *(["-"] if v6 else []), "-", *(["-"] if v6 else []), "REJECTED", "-",
                     _short(event.reason, 72)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    summary = f"{len(snap.leases)} lease(s)" + (f", {len(snap.rejected)} rejected" if snap.rejected else "")
    return "\n".join([*lines, summary])


def run_leases(args: argparse.Namespace) -> int:
    snap = read_leases(args)
    now = time.time()
    if args.json:
        print(json.dumps({"store": store_args.store_url(args), "revision": snap.revision,
                          "leases": [lease_json(lease, now) for lease in sorted(snap.leases, key=lambda x: x.key)],
                          "rejected": [{"key": e.key, "reason": e.reason}
                                       for e in sorted(snap.rejected, key=lambda x: x.key)]}, indent=2))
    else:
        print(render_table(snap, now))
    return 0
