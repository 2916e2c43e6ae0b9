"""What this node has programmed, kept in a state file so a restart can reconcile.

After a restart (or kill -9) the runtime compares this record with the store: leases
that vanished while it was down get SubnetRemove with the data they were added with
(flannel#2554), and every current lease gets SubnetAdd again.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os

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


# A save after every batch or event used to rewrite the whole record: O(leases) per
# event, quadratic over a 50,000-lease join. Now the first save writes the record, later
# ones append the difference to `<path>.log` (one JSON line per change), and the record
# is rewritten (and the log removed) once the log is as long as the record. Each record
# names its log generation and each log line carries it, so the lines of an older record
# (a crash between the rewrite and the log's removal) are never replayed onto a newer one.
COMPACT_AFTER = 1000            # log lines allowed whatever the record's size


class _Saved:
    def __init__(self, own: str, programmed: dict[str, RemoteLease], generation: str):
        self.own, self.programmed, self.log_lines = own, dict(programmed), 0
        self.generation = generation


_saved: dict[str, _Saved] = {}


def _log_path(path: str) -> str:
    return path + ".log"


def save(path: str, programmed: dict[str, RemoteLease], *, own: str = "") -> None:
    """Record `programmed`: a difference appended to the log, or the whole record."""
    before = _saved.get(path)
    if before is None or before.own != own or before.log_lines >= max(COMPACT_AFTER, len(programmed)):
        _write_record(path, programmed, own)
        return
    old = before.programmed
    gen = before.generation
    lines = [json.dumps({"gen": gen, "put": key, "lease": _encode(lease)})
             for key, lease in programmed.items() if old.get(key) is not lease]
    lines += [json.dumps({"gen": gen, "del": key}) for key in old if key not in programmed]
    if lines:
        with open(_log_path(path), "a") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        before.log_lines += len(lines)
    before.programmed = dict(programmed)


def _write_record(path: str, programmed: dict[str, RemoteLease], own: str) -> None:
    generation = os.urandom(6).hex()
    lines = [f"{json.dumps(key)}: {json.dumps(_encode(programmed[key]))}" for key in sorted(programmed)]
    head = f'{{"version": 1, "own": {json.dumps(own)}, "log": "{generation}", "programmed": {{'
    write_atomic(path, head + ("\n" if lines else "") + ",\n".join(lines) + "}}\n")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_log_path(path))       # after the record is in place; a stale log is ignored
    _saved[path] = _Saved(own, programmed, generation)


def load(path: str) -> dict[str, RemoteLease]:
    """The recorded leases (record + log); a missing or corrupt file means nothing recorded."""
    try:
        with open(path) as handle:
            doc = json.load(handle)
        programmed = {key: _decode(key, item) for key, item in doc.get("programmed", {}).items()}
        generation = doc.get("log")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return {}
    try:
        with open(_log_path(path)) as handle:
            for line in handle:
                try:
                    change = json.loads(line)
                    if change.get("gen") != generation:
                        continue                  # an older record's log, already in this one
                    if "del" in change:
                        programmed.pop(change["del"], None)
                    else:
                        programmed[change["put"]] = _decode(change["put"], change["lease"])
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring a torn line in %s", _log_path(path))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("ignoring unreadable state log %s: %s", _log_path(path), exc)
    return programmed
