"""What this node has programmed, kept in a state file so a restart can reconcile.

After a restart (or kill -9) the runtime compares this record with the store: leases
that vanished while it was down get SubnetRemove with the data they were added with
(flannel#2554), and every current lease gets SubnetAdd again.
"""
from __future__ import annotations

import ipaddress
import json
import logging

from flannel_ext._util.files import write_atomic
from flannel_ext._hooks.base import RemoteLease

log = logging.getLogger("flannel_ext.state")


def _encode(lease: RemoteLease) -> dict:
    return {
        "subnet": str(lease.subnet) if lease.subnet else None,
        "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
        "public_ip": lease.public_ip, "public_ipv6": lease.public_ipv6,
        "backend_type": lease.backend_type, "backend_data": lease.backend_data,
        "backend_data_raw": lease.backend_data_raw,
    }


def _decode(key: str, item: dict) -> RemoteLease:
    return RemoteLease(
        subnet=ipaddress.IPv4Network(item["subnet"]) if item.get("subnet") else None,
        ipv6_subnet=ipaddress.IPv6Network(item["ipv6_subnet"]) if item.get("ipv6_subnet") else None,
        public_ip=item["public_ip"], public_ipv6=item.get("public_ipv6"),
        backend_type=item.get("backend_type", "extension"), backend_data=item.get("backend_data", ""),
        backend_data_raw=item.get("backend_data_raw"), key=key)


def save(path: str, programmed: dict[str, RemoteLease], *, own: str = "") -> None:
    doc = {"version": 1, "own": own, "programmed": {k: _encode(v) for k, v in sorted(programmed.items())}}
    write_atomic(path, json.dumps(doc, indent=1) + "\n")


def load(path: str) -> dict[str, RemoteLease]:
    """The recorded leases; a missing or corrupt file means nothing recorded (logged)."""
    try:
        with open(path) as handle:
            doc = json.load(handle)
        return {key: _decode(key, item) for key, item in doc.get("programmed", {}).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return {}
