"""A tiny ctypes inotify wrapper: wake a waiter when files in a directory change.

Used by the sqlite store to wake watchers on commits (a WAL commit modifies `<db>-wal`)
instead of polling. No dependency: the stdlib has no inotify, and three libc calls do.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
DEFAULT_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_libc = None


def _lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = lib
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


class Inotify:
    """One inotify instance. `wait(timeout)` returns the (name, mask) events that arrived."""

    def __init__(self):
        self._fd = _check(_lib().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str | os.PathLike, mask: int = DEFAULT_MASK) -> int:
        """Watch a directory (or file); returns the watch descriptor."""
        return _check(_lib().inotify_add_watch(self._fd, os.fsencode(path), mask),
                      f"inotify_add_watch {os.fspath(path)!r}")

    def read(self) -> list[tuple[str, int]]:
        """Drain pending events without blocking. An overflow shows as ("", IN_Q_OVERFLOW)."""
        events: list[tuple[str, int]] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return events
            except OSError as exc:  # EINTR is retried by Python; anything else is a real error
                if exc.errno == errno.EAGAIN:
                    return events
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset:offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                events.append((name, mask))

    def wait(self, timeout: float | None) -> list[tuple[str, int]]:
        """Block up to `timeout` seconds (None: forever) for events; [] on timeout."""
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        if not self._poll.poll(ms):
            return []
        return self.read()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
