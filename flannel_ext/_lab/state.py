"""A lab's directory and its record, ``lab.json``: how another process finds a lab by name.

Layout of ``<root>/<name>/`` (root: ``$FLANNEL_EXT_LAB_ROOT`` or ``/run/flannel-ext/lab``,
on tmpfs like ``/run/netns``, so a reboot forgets both together)::

    lab.json            the record below (written atomically)
    lock                flock'd by every command that changes the lab
    store.db            the default SQLite lease store
    cluster.json        namespaces, pods and network policies for the nodes' policy agents
    .staging/           where cluster.json is written before its rename (see cluster.save)
    nodes/<node>/       subnet.env, flannel-ext.log, state/ (stats.json), cni/, ipam/, cni.conf
    pods/<pod>.log      the pod's listener output

The record is plain data so `lab status` (or a test) can read it without this module.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field

from flannel_ext._util.errors import FlannelExtError
from flannel_ext._util.files import write_atomic

DEFAULT_ROOT = "/run/flannel-ext/lab"
# No "-" in lab or node names: then "<lab>-" prefixes exactly this lab's namespaces and
# never another lab's, and "<lab>-<node>-pod<k>" parses back unambiguously.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")


class LabError(FlannelExtError):
    """A lab command could not do what was asked (the message says what to do next)."""

    exit_code = 1


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise LabError(f"invalid {kind} name {name!r}: use 1-24 of a-z, 0-9 and _ (no '-'), "
                       "starting with a letter or digit")
    if kind == "node" and name == "hub":
        raise LabError("'hub' is reserved for the underlay bridge namespace")
    return name


def root() -> str:
    return os.environ.get("FLANNEL_EXT_LAB_ROOT") or DEFAULT_ROOT


def lab_dir(name: str) -> str:
    return os.path.join(root(), check_name("lab", name))


@dataclass
class Pod:
    name: str            # also its namespace and its CNI container id
    ip: str = ""
    listener_pid: int = 0
    namespace: str = ""  # Kubernetes namespace and name, for pods from `lab up --pods`
    kube_name: str = ""
    ports: list[dict] = field(default_factory=list)  # containerPort/protocol/name it serves

    @property
    def display(self) -> str:
        """``namespace/name`` for pods from --pods, else the namespace name (``<lab>-n1-pod1``)."""
        return f"{self.namespace}/{self.kube_name}" if self.kube_name else self.name


@dataclass
class Node:
    name: str
    ns: str
    index: int           # underlay position: hub port p<index>, address cidr[index + 1]
    ip: str              # underlay (public) IP
    pid: int = 0         # the flannel-ext run process
    subnet: str = ""     # the lease, from subnet.env
    pods: dict[str, Pod] = field(default_factory=dict)


@dataclass
class Lab:
    name: str
    net_conf: str
    store: str
    underlay_cidr: str = "192.168.100.0/24"
    cni_path: str = "/usr/lib/cni"
    pods_per_node: int = 2
    watch: bool = True
    policy: str = ""     # the daemons' --policy hook ("" = none); source: cluster.json
    nodes: dict[str, Node] = field(default_factory=dict)
    kernel: dict = field(default_factory=dict)   # `--tune-kernel`: {"old": {sysctl: v}, "set": {…}}

    # -- paths ------------------------------------------------------------------------
    @property
    def dir(self) -> str:
        return lab_dir(self.name)

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    def node_dir(self, node: str) -> str:
        return os.path.join(self.dir, "nodes", node)

    def subnet_env(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "subnet.env")

    def state_dir(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "state")

    def log_file(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "flannel-ext.log")

    @property
    def cluster_file(self) -> str:
        """The Kubernetes objects the policy agents read (`--policy-source file:`)."""
        return os.path.join(self.dir, "cluster.json")

    def policy_status(self, node: str) -> str:
        return os.path.join(self.state_dir(node), "policy-status.json")

    def pod_log(self, pod: str) -> str:
        return os.path.join(self.dir, "pods", f"{pod}.log")

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def pod_ns(self, node: str, k: int) -> str:
        return f"{self.prefix}{node}-pod{k}"

    def pods(self) -> list[tuple[Node, Pod]]:
        return [(n, p) for n in self.nodes.values() for p in n.pods.values()]

    def next_index(self) -> int:
        used = {n.index for n in self.nodes.values()}
        return next(i for i in range(1, 1 << 16) if i not in used)

    # -- persistence ------------------------------------------------------------------
    def save(self) -> None:
        write_atomic(os.path.join(self.dir, "lab.json"), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, name: str) -> Lab:
        path = os.path.join(lab_dir(name), "lab.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r} (no {path}); start one with `flannel-ext lab up`")
        except ValueError as exc:
            raise LabError(f"{path} is unreadable ({exc}); `flannel-ext lab down --name {name}` "
                           "still cleans up")
        nodes = {}
        for key, node in data.pop("nodes", {}).items():
            pods = {p: Pod(**pod) for p, pod in node.pop("pods", {}).items()}
            nodes[key] = Node(**node, pods=pods)
        return cls(**data, nodes=nodes)


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(lab_dir(name), "lab.json"))


def list_labs() -> list[str]:
    try:
        return sorted(d for d in os.listdir(root()) if os.path.exists(os.path.join(root(), d, "lab.json")))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def locked(name: str):
    """Serialise commands that change lab `name` (up, add-node, rm-node, down)."""
    d = lab_dir(name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def remove_dir(name: str) -> None:
    shutil.rmtree(lab_dir(name), ignore_errors=True)
