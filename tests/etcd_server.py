"""A real etcd for tests and benches: loopback only, a free port, a temp data dir.

Debian's `etcd-server` package provides /usr/bin/etcd. The server is started as a child
process and stopped by its PID (never by name, so a developer's own etcd is safe).
`stop()` + `start()` restarts it on the same ports and data dir, for reconnect tests.

Use the `etcd_server` fixture (import it into a test module), or `EtcdServer` directly.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdServer:
    """One single-member etcd on 127.0.0.1 with its own data dir."""

    def __init__(self, data_dir: str | None = None, *, start_timeout: float = 20.0,
                 netns: str | None = None, host: str = "127.0.0.1"):
        # With `netns`, etcd runs inside that namespace on `host` (e.g. the lab's hub), so
        # daemons in node namespaces can reach it; the root namespace is never involved.
        self.netns, self.host = netns, host
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="flannel-ext-etcd-")
        self.client_port, self.peer_port = _free_port(), _free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> EtcdServer:
        if self.proc is not None:
            return self
        peer = f"http://{self.host}:{self.peer_port}"
        argv = self._in_ns() + [ETCD, "--name", "test", "--data-dir", os.path.join(self.data_dir, "member-data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"test={peer}", "--logger", "zap", "--log-level", "error"]
        self._log = open(os.path.join(self.data_dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_tail()
                self.stop()
                raise RuntimeError(f"etcd did not become healthy on {self.endpoint}:\n{log}")
            time.sleep(0.05)
        return self

    def _in_ns(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _healthy(self) -> bool:
        if self.netns:
            res = subprocess.run(self._in_ns() + [ETCDCTL, "--endpoints", self.endpoint, "endpoint", "health"],
                                 capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"))
            return res.returncode == 0
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM the process we started (SIGKILL after 10 s); the data dir stays."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def etcdctl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run etcdctl (API v3) against this server; returns stdout."""
        env = dict(os.environ, ETCDCTL_API="3")
        res = subprocess.run(self._in_ns() + [ETCDCTL, "--endpoints", self.endpoint, *args], input=input,
                             capture_output=True, text=True, env=env, timeout=30)
        if check and res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.data_dir, "etcd.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


@pytest.fixture
def etcd_server():
    """A fresh etcd per test (it starts in well under a second)."""
    # a missing etcd is a broken set-up (.ci/install installs it), never a reason to skip
    assert shutil.which("etcd"), "etcd is not installed: apt-get install etcd-server (or run .ci/install)"
    with EtcdServer() as server:
        yield server
