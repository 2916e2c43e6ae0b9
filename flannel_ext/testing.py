"""pytest fixtures for dataplane tests (``pytest_plugins = ["flannel_ext.testing"]``).

`netns_prefix` gives each test a unique namespace prefix, and everything created under
it is deleted at teardown, even when the test fails.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from flannel_ext._runtime import subnetenv
from flannel_ext._util import netns as _netns
from flannel_ext._util.netns import Underlay, delete_netns, list_netns
from flannel_ext._stores.lease import LeaseEvent

_counter = itertools.count()


def _needs_root():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")


@pytest.fixture
def netns_prefix():
    """A unique prefix like ``fxt1234a3-``; all namespaces starting with it are removed after."""
    _needs_root()
    prefix = f"fxt{os.getpid() % 100000}{next(_counter)}-"
    yield prefix
    left = [name for name in list_netns(prefix) if not delete_netns(name)]
    assert not left, f"network namespaces could not be removed: {left}"


@pytest.fixture
def underlay(netns_prefix):
    """An `Underlay` (hub bridge namespace) under the test's prefix; destroyed after."""
    net = Underlay(netns_prefix).create()
    yield net
    net.destroy()


class NodeDaemon:
    """A `flannel-ext run` process inside a namespace, for end-to-end tests.

    ``NodeDaemon(ns, net_conf, store, workdir).start()``; `stop()` sends SIGTERM to its PID
    (never a pattern kill) and waits. Its log is ``<workdir>/<ns>.log``.
    """

    def __init__(self, ns: str, net_conf, store: str, workdir, *, iface: str = "eth0", extra=(),
                 env: dict | None = None):
        self.ns, self.net_conf, self.store = ns, str(net_conf), store
        self.dir = pathlib.Path(workdir) / ns
        self.dir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = self.dir / "subnet.env"
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "daemon.log"
        self.iface, self.extra, self.env = iface, list(extra), env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, "-m", "flannel_ext", "run",
                "--net-conf", self.net_conf, "--store", self.store, "--iface", self.iface,
                "--subnet-file", str(self.subnet_file), "--state-dir", str(self.state_dir),
                "--node-name", self.ns, "--hook-backoff", "0.2", *self.extra]

    def start(self, wait: bool = True, timeout: float = 20.0) -> NodeDaemon:
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        proc = self.proc
        assert proc is not None, "start() the daemon first"
        wait_for(lambda: self.subnet_file.exists() or proc.poll() is not None, timeout)
        if proc.poll() is not None:
            raise AssertionError(f"daemon in {self.ns} exited {proc.returncode}:\n{self.log()}")
        wait_for(lambda: (self.state_dir / "stats.json").exists(), timeout)

    def subnet_env(self) -> dict[str, str]:
        return subnetenv.parse(self.subnet_file.read_text())

    @property
    def subnet(self) -> str:
        return str(ipaddress.ip_network(self.subnet_env()["FLANNEL_SUBNET"], strict=False))

    def stats(self) -> dict:
        try:
            return json.loads((self.state_dir / "stats.json").read_text())
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def signal(self, sig) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if not self.proc:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, *, what: str = ""):
    """Poll until `predicate()` is truthy; returns its value, or raises AssertionError
    naming `what` (or the predicate)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def ip_json(ns: str, *args: str):
    """`ip -j ARGS` inside namespace `ns`, parsed; a failure fails the test."""
    return _netns.ip_json(ns, *args, check=True)


def routes(ns: str) -> list[dict]:
    return ip_json(ns, "route", "show")


@pytest.fixture
def daemons():
    """Collects NodeDaemon objects; every one still running is stopped at teardown."""
    started: list[NodeDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()


class EventCollector:
    """A lease store watch's sink for tests: ``watch = store.watch(rev, collector)``, then
    ``collector.wait_for(lambda events: ...)``. A watch failure fails the wait."""

    def __init__(self) -> None:
        self.events: list[LeaseEvent] = []
        self.batches = 0
        self.failures: list[BaseException] = []
        self._cond = threading.Condition()

    def deliver(self, batch: list[LeaseEvent]) -> None:
        with self._cond:
            self.events.extend(batch)
            self.batches += 1
            self._cond.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._cond:
            self.failures.append(error)
            self._cond.notify_all()

    def wait_for(self, want: Callable[[list[LeaseEvent]], object], timeout: float = 20.0) -> list[LeaseEvent]:
        """The events so far, once `want(events)` is true; AssertionError after `timeout`."""
        with self._cond:
            done = self._cond.wait_for(lambda: self.failures or want(self.events), timeout)
            if self.failures:
                raise AssertionError(f"the watch failed: {self.failures[0]!r}")
            if not done:
                raise AssertionError(f"the watch never delivered the expected events: {self.events}")
            return list(self.events)

    def take(self, want: Callable[[list[LeaseEvent]], object], timeout: float = 20.0) -> list[LeaseEvent]:
        """Like `wait_for`, then forget those events (the next wait starts empty)."""
        events = self.wait_for(want, timeout)
        with self._cond:
            del self.events[:len(events)]
        return events
