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
import time

import pytest

from flannel_ext._util import netns as _netns
from flannel_ext._util.netns import Underlay, delete_netns, list_netns

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
    for name in list_netns(prefix):
        delete_netns(name)


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
        self.proc = None

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
        wait_for(lambda: self.subnet_file.exists() or self.proc.poll() is not None, timeout)
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon in {self.ns} exited {self.proc.returncode}:\n{self.log()}")
        wait_for(lambda: (self.state_dir / "stats.json").exists(), timeout)

    def subnet_env(self) -> dict[str, str]:
        lines = self.subnet_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

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
