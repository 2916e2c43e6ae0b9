"""Run one command with a timeout, killing its whole process group when it expires.

Used for every shell hook. stdin is written while the output is read (no pipe-buffer
deadlock for large data, unlike flannel), and the child gets its own session so a
timeout kills the shell *and* everything it started. Output is capped *while* it is
read: only the last `limit` bytes of each stream are kept, so a hook printing 100 MB
costs the daemon a few KiB, not 100 MB.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

OUTPUT_LIMIT = 4096  # bytes of each stream kept (for logs, traces and PreStartup's data)
_CHUNK = 65536


@dataclass
class ProcessResult:
    argv: list[str]
    returncode: int | None   # None when killed by the timeout
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    dropped: int = 0         # output bytes beyond the cap, not kept


class _Tail:
    """The last `limit` bytes written to it, and how many were dropped."""

    def __init__(self, limit: int):
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.limit:   # trim in steps, not on every chunk
            cut = len(self.data) - self.limit
            self.dropped += cut
            del self.data[:cut]

    def text(self) -> str:
        if len(self.data) > self.limit:
            self.dropped += len(self.data) - self.limit
            del self.data[:len(self.data) - self.limit]
        return self.data.decode(errors="replace")


def run_process(argv: list[str], *, env: dict[str, str], cwd: str | None, stdin: str,
                timeout: float, limit: int = OUTPUT_LIMIT) -> ProcessResult:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
    out, err = _Tail(limit), _Tail(limit)
    deadline = start + timeout
    timed_out = not _pump(proc, stdin.encode(), {proc.stdout: out, proc.stderr: err}, deadline)
    if not timed_out:
        try:   # the pipes closed; the command may still run (it closed them itself)
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill_group(proc)
    returncode = proc.wait()
    return ProcessResult(argv, None if timed_out else returncode, out.text(), err.text(),
                         time.monotonic() - start, timed_out, out.dropped + err.dropped)


def _pump(proc: subprocess.Popen, data: bytes, sinks: dict, deadline: float) -> bool:
    """Feed stdin and drain stdout/stderr until both close; False if the deadline passed."""
    with selectors.DefaultSelector() as sel:
        for stream in sinks:
            sel.register(stream, selectors.EVENT_READ)
        assert proc.stdin is not None
        if data:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        try:
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                for key, _ in sel.select(left):
                    stream = key.fileobj
                    if stream is proc.stdin:
                        data = _write_some(proc.stdin, data)
                        if not data:
                            sel.unregister(stream)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, _CHUNK)
                    if chunk:
                        sinks[stream].add(chunk)
                    else:
                        sel.unregister(stream)
            return True
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None and not stream.closed:
                    stream.close()


def _write_some(stdin, data: bytes) -> bytes:
    """Write what the pipe takes now; the rest is returned. A reader that exited ends it."""
    try:
        written = os.write(stdin.fileno(), data[:_CHUNK])
    except BlockingIOError:
        return data
    except BrokenPipeError:
        return b""   # the command does not read its stdin: fine, as with communicate()
    return data[written:]


def _kill_group(proc: subprocess.Popen) -> None:
    # The shell may have forked children that hold the pipes open: kill the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
