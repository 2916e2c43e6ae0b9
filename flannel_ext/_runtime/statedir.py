"""One daemon per state dir, and the identity of the kernel a state dir describes.

Two daemons on one `--state-dir` would load each other's records and run each other's
removes, so `lock()` takes an exclusive flock on ``<state-dir>/lock`` for the daemon's
whole life (the kernel drops it when the process dies, even by kill -9) and writes the
holder's PID into it, so the second daemon can name the PID in its one-line error.

`KernelIdentity` says which kernel and network the recorded kernel state belongs to:
the network namespace (inode of /proc/self/ns/net), the boot (boot_id) and the Network.
A record from another boot or namespace describes a kernel state that no longer exists.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import asdict, dataclass

from flannel_ext._util.errors import FlannelExtError

LOCK_NAME = "lock"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
LOCK_WAIT = 3.0     # a restarted daemon may start while the old one is still exiting


class StateDirError(FlannelExtError):
    """The state dir cannot be used (cannot be created or locked)."""

    exit_code = 1


class StateDirBusy(StateDirError):
    """Another daemon holds the state dir."""


@dataclass(frozen=True)
class KernelIdentity:
    netns: int          # inode of /proc/self/ns/net
    boot_id: str
    network: str        # "Network" (and IPv6Network) of the net-conf

    @classmethod
    def current(cls, network: str) -> KernelIdentity:
        try:
            netns = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            netns = 0
        try:
            with open(BOOT_ID, encoding="ascii") as handle:
                boot_id = handle.read().strip()
        except OSError:
            boot_id = ""
        return cls(netns, boot_id, network)

    def to_json(self) -> dict:
        return asdict(self)

    def mismatch(self, recorded: dict) -> str | None:
        """Why a record written under `recorded` does not describe this kernel (None: it does).
        Returns "reboot", "netns" or "network"; an older record without identity matches."""
        if recorded.get("boot_id") and recorded["boot_id"] != self.boot_id:
            return "reboot"
        if recorded.get("netns") and recorded["netns"] != self.netns:
            return "netns"
        if recorded.get("network") and recorded["network"] != self.network:
            return "network"
        return None


class StateDirLock:
    """The exclusive lock on a state dir; `release()` (or process exit) frees it."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self, wait: float = LOCK_WAIT) -> StateDirLock:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # O_CLOEXEC: a hook process must never inherit (and so keep) the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateDirError(f"cannot lock the state dir: {exc.filename}: {exc.strerror}; "
                                "pass a writable --state-dir") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"pid {holder}" if holder else "another process"
                    raise StateDirBusy(
                        f"state dir {os.path.dirname(self.path)} is in use by flannel-ext {who} "
                        f"(it holds {self.path}); stop that daemon or give this one its own "
                        "--state-dir") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
