"""The lab's namespaces: a hub (the underlay bridge) and one namespace per node.

Built on `_util.netns.Underlay` with the prefix ``<lab>-``: hub ``<lab>-hub``, node
``<lab>-<node>``, pods ``<lab>-<node>-pod<k>``. Nothing outside those namespaces is
touched; deleting a node namespace also deletes its veth's hub end.

Processes are only ever killed by PID, and a recorded PID only after checking that its
command line still carries the marker it was started with (PIDs get reused).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from flannel_ext._util.netns import Underlay, delete_netns, list_netns
from flannel_ext._lab.state import Lab, LabError, Node, check_name


def underlay(lab: Lab) -> Underlay:
    net = Underlay(lab.prefix, lab.underlay_cidr)
    net.nodes = {n.ns: n.ip for n in lab.nodes.values()}
    return net


def create_hub(lab: Lab) -> None:
    underlay(lab).create()


def add_node(lab: Lab, name: str) -> Node:
    """Create node namespace `<lab>-<name>` on the underlay and record it (not yet saved)."""
    check_name("node", name)
    if name in lab.nodes:
        raise LabError(f"lab {lab.name!r} already has a node {name!r}")
    index = lab.next_index()
    net = underlay(lab)
    if index + 2 >= net.network.num_addresses:
        raise LabError(f"underlay {lab.underlay_cidr} is full; pick a larger --underlay-cidr")
    ns = lab.node_ns(name)
    ip = net.add_node(ns, index)
    node = Node(name=name, ns=ns, index=index, ip=ip)
    os.makedirs(lab.node_dir(name), exist_ok=True)
    lab.nodes[name] = node
    return node


def lab_namespaces(name: str) -> list[str]:
    return list_netns(f"{name}-")


def delete_namespaces(names: list[str]) -> None:
    """Kill whatever runs inside each namespace (`ip netns pids`), then delete it."""
    for ns in names:
        delete_netns(ns)


# -- processes --------------------------------------------------------------------------

def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and is still the process we started (its argv holds `marker`)."""
    if pid <= 0:
        return False
    own = next((p for p in _children if p.pid == pid), None)
    if own is not None:  # started by this process: its exit status is the truth
        return own.poll() is None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X"):
                return False  # exited, not yet reaped by its parent
    except (OSError, IndexError):
        return False
    argv = cmdline(pid)
    # Empty while the process is inside execve (`ip netns exec` becoming the daemon).
    return not argv or marker in argv


def terminate(procs: list[tuple[int, str]], grace: float = 5.0) -> list[int]:
    """SIGTERM each owned (pid, marker); SIGKILL what is left after `grace` s; return survivors."""
    owned = [(pid, m) for pid, m in procs if alive(pid, m)]
    for pid, _ in owned:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while owned and time.monotonic() < deadline:
        _reap()
        owned = [(pid, m) for pid, m in owned if alive(pid, m)]
        if owned:
            time.sleep(0.05)
    for pid, _ in owned:
        _signal(pid, signal.SIGKILL)
    _reap()
    return [pid for pid, _ in owned]


def kill(procs: list[tuple[int, str]]) -> list[int]:
    """SIGKILL each owned (pid, marker); returns the PIDs signalled."""
    killed = [pid for pid, marker in procs if alive(pid, marker)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    _reap()
    return killed


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_children: list[subprocess.Popen] = []


def spawn(argv: list[str], log_path: str, cwd: str | None = None) -> int:
    """Start a long-lived process in its own session (a Ctrl-C of the lab leaves it be).

    The Popen is kept so that, when the lab runs in-process (tests), its exit is reaped
    rather than left as a zombie that still looks alive.
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd,
                                start_new_session=True)
    _children.append(proc)
    return proc.pid


def _reap() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def reap(timeout: float = 10.0) -> None:
    """Wait for the processes this one started to exit (after `lab down` killed them from
    another process), so none is left unreaped when this interpreter exits."""
    for proc in list(_children):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        _children.remove(proc)


