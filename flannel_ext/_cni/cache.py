"""The per-attachment cache of delegate configs, keyed as the CNI spec keys an attachment.

An attachment is (network name, container ID, interface name), so the delegate config
that ADD ran is kept at ``<dataDir>/<network>/<containerID>/<ifname>``: one container on
two networks, or with two interfaces on one, has two entries, and DEL, CHECK and GC each
find exactly their own. flannel's plugin keys the file by container ID alone
(``<dataDir>/<containerID>``); such a file is still honoured by DEL when its delegate
``name`` is this network, so an upgrade does not strand the pods already running.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from flannel_ext._cni.errors import INVALID_CONFIG, INVALID_ENV, IO_FAILURE, CniError
from flannel_ext._util.files import write_atomic


@dataclass(frozen=True)
class Attachment:
    network: str
    container_id: str
    ifname: str


def _segment(value: str, what: str) -> str:
    """`value` as one path component, or a CniError naming `what`."""
    if not value or "/" in value or "\0" in value or value in (".", ".."):
        code = INVALID_CONFIG if what == "name" else INVALID_ENV
        raise CniError(code, f"{what} {value!r} cannot key the plugin's cache",
                       "it must be non-empty, not '.' or '..', and contain no '/'")
    return value


class Cache:
    """The cache under one `dataDir`."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir

    def path(self, att: Attachment) -> str:
        return os.path.join(self.data_dir, _segment(att.network, "name"),
                            _segment(att.container_id, "CNI_CONTAINERID"), _segment(att.ifname, "CNI_IFNAME"))

    def _legacy_path(self, att: Attachment) -> str:
        return os.path.join(self.data_dir, _segment(att.container_id, "CNI_CONTAINERID"))

    def save(self, att: Attachment, delegate: dict) -> None:
        path = self.path(att)
        try:
            write_atomic(path, json.dumps(delegate), 0o600, dir_mode=0o700)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot save the delegate config to {path}", exc.strerror or str(exc))

    def load(self, att: Attachment) -> tuple[str, bytes] | None:
        """(path, saved bytes) of the attachment, or None when ADD never saved one."""
        path = self.path(att)
        saved = self._read(path)
        if saved is not None:
            return path, saved
        legacy = self._legacy_path(att)
        saved = self._read(legacy) if os.path.isfile(legacy) else None
        if saved is not None and _delegate_name(saved) == att.network:
            return legacy, saved
        return None

    def remove(self, path: str) -> None:
        """Forget one entry (and its now empty container directory)."""
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot remove {path}", exc.strerror or str(exc))
        parent = os.path.dirname(path)
        # <dataDir>/<network>/<cid> goes once empty; a legacy entry's parent is dataDir itself.
        if os.path.dirname(os.path.dirname(parent)) == os.path.normpath(self.data_dir):
            try:
                os.rmdir(parent)
            except OSError:
                pass

    def attachments(self, network: str) -> list[Attachment]:
        """Every cached attachment of `network`, oldest layout excluded (it has no ifname)."""
        root = os.path.join(self.data_dir, _segment(network, "name"))
        found = []
        try:
            containers = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot list {root}", exc.strerror or str(exc))
        for cid in containers:
            try:
                found += [Attachment(network, cid, ifname) for ifname in sorted(os.listdir(os.path.join(root, cid)))
                          if not ifname.startswith(".")]   # write_atomic's temporary files
            except NotADirectoryError:
                continue
        return found

    @staticmethod
    def _read(path: str) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot read {path}", exc.strerror or str(exc))


def _delegate_name(saved: bytes) -> object:
    try:
        return json.loads(saved).get("name")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
