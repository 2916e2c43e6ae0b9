"""Network namespaces and an underlay to join them: used by the lab and by the tests.

Everything here is idempotent and touches only namespaces whose names it is given;
the root namespace's links and routes are never changed. The underlay bridge lives in
its own "hub" namespace, and each node namespace gets one veth into it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from dataclasses import dataclass, field

from flannel_ext._util.errors import CommandError

NETNS_DIR = "/run/netns"


def sh(argv: list[str], *, check: bool = True, input: str | None = None, timeout: float = 30,
       env: dict | None = None) -> subprocess.CompletedProcess:
    """Run argv (never a shell string); raise CommandError with argv, rc and output on failure."""
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, stderr=proc.stderr)
    return proc


def ip_json(ns: str | None, *args: str, check: bool = False) -> list:
    """`ip -j ARGS` (inside namespace `ns` when given), parsed; [] on failure unless `check`."""
    proc = sh(["ip", *(["-n", ns] if ns else []), "-j", *args], check=check)
    if proc.returncode != 0:
        return []
    try:
        return json.loads(proc.stdout or "[]")
    except ValueError:
        if check:
            raise
        return []


def in_ns(ns: str | None, argv: list[str]) -> list[str]:
    """argv prefixed to run inside namespace `ns` (unchanged for None)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def ns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_netns(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def create_netns(name: str) -> str:
    """Create namespace `name` with loopback up; an existing one is kept."""
    if not ns_exists(name):
        sh(["ip", "netns", "add", name])
    sh(["ip", "-n", name, "link", "set", "lo", "up"])
    return name


def delete_netns(name: str, timeout: float = 5.0) -> bool:
    """Kill what still runs inside `name`, then delete it; True once it is gone (missing is fine).

    A process that was just killed, or one in another mount namespace (`unshare -m`) holding a
    copy of the /run/netns mount, keeps the name busy (EBUSY) until it has really exited, so
    the delete is retried until then rather than tried once and left behind.
    """
    deadline = time.monotonic() + timeout
    while ns_exists(name):
        for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh(["ip", "netns", "del", name], check=False)
        if not ns_exists(name) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return not ns_exists(name)


@dataclass
class Underlay:
    """A bridge in namespace `<prefix>hub` joining node namespaces on `cidr`.

    Node i gets address `cidr[i + 1]` on interface `eth0`; the hub bridge has no address.
    """

    prefix: str
    cidr: str = "192.168.77.0/24"
    mtu: int = 1500
    nodes: dict[str, str] = field(default_factory=dict)  # namespace -> underlay IP

    @property
    def hub(self) -> str:
        return f"{self.prefix}hub"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    def create(self) -> Underlay:
        create_netns(self.hub)
        if sh(["ip", "-n", self.hub, "link", "show", "br0"], check=False).returncode != 0:
            sh(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        return self

    def add_node(self, ns: str, index: int) -> str:
        """Create node namespace `ns` (if needed) wired to the hub; returns its underlay IP."""
        ip = str(self.network.network_address + index + 1)
        create_netns(ns)
        port = f"p{index}"
        if sh(["ip", "-n", self.hub, "link", "show", port], check=False).returncode != 0:
            sh(["ip", "-n", ns, "link", "del", "eth0"], check=False)
            sh(["ip", "-n", self.hub, "link", "add", port, "mtu", str(self.mtu), "type", "veth",
                "peer", "name", "eth0", "netns", ns])
            sh(["ip", "-n", self.hub, "link", "set", port, "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "replace", f"{ip}/{self.network.prefixlen}", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.nodes[ns] = ip
        return ip

    def destroy(self) -> None:
        for ns in list(self.nodes):
            delete_netns(ns)
        delete_netns(self.hub)
        self.nodes.clear()
