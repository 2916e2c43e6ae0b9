"""Run one command with a timeout, killing its whole process group when it expires.

Used for every shell hook. stdin is fed by `communicate` (no pipe-buffer deadlock for
large data, unlike flannel), and the child gets its own session so a timeout kills the
shell *and* everything it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class ProcessResult:
    argv: list[str]
    returncode: int | None   # None when killed by the timeout
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False


def run_process(argv: list[str], *, env: dict[str, str], cwd: str | None, stdin: str,
                timeout: float) -> ProcessResult:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        return ProcessResult(argv, proc.returncode, out, err, time.monotonic() - start)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return ProcessResult(argv, None, out or "", err or "", time.monotonic() - start, True)


def _kill_group(proc: subprocess.Popen) -> None:
    # The shell may have forked children that hold the pipes open: kill the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
