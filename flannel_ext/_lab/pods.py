"""Pods: a namespace wired by `flannel-ext-cni` exactly as a container runtime does it.

The plugin runs inside the node namespace (so the bridge is the node's ``cni0``) with the
``CNI_*`` variables and the network config on stdin; ``CNI_PATH`` holds the reference
plugins. Each pod then runs its server (`podserver`): the lab's port 7777 and every port
its Pod object declares, each answering with the pod's name, so a probe proves which pod
was reached.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from flannel_ext._util.netns import create_netns, delete_netns
from flannel_ext._lab.cluster import PodSpec
from flannel_ext._lab.state import Lab, LabError, Node, Pod
from flannel_ext._lab.topology import alive, kill, spawn

PORT = 7777   # every pod serves it (TCP), for the lab's connectivity matrix
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "podserver.py")


def cni_argv() -> list[str]:
    """The installed console script beside this interpreter (not a pyenv-style shim on
    PATH, which costs more than the plugin itself), else the module."""
    here = os.path.join(os.path.dirname(sys.executable), "flannel-ext-cni")
    path = here if os.access(here, os.X_OK) else shutil.which("flannel-ext-cni")
    return [path] if path else [sys.executable, "-m", "flannel_ext.cni"]


def cni_conf(lab: Lab, node: Node) -> dict:
    """The node's network config, as /etc/cni/net.d would hold it on a real node."""
    d = lab.node_dir(node.name)
    return {
        "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
        "subnetFile": lab.subnet_env(node.name), "dataDir": os.path.join(d, "cni"),
        "ipam": {"dataDir": os.path.join(d, "ipam")},  # host-local state stays in the lab dir
        # As kube-flannel.yml; no masquerade so a pod sees the other pod's own address.
        "delegate": {"hairpinMode": True, "ipMasq": False},
    }


def invoke_cni(lab: Lab, node: Node, command: str, pod: str) -> dict:
    conf = cni_conf(lab, node)
    with open(os.path.join(lab.node_dir(node.name), "cni.conf"), "w", encoding="utf-8") as f:
        json.dump(conf, f, indent=2)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": pod, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": lab.cni_path}
    proc = subprocess.run(["ip", "netns", "exec", node.ns, *cni_argv()], input=json.dumps(conf),
                          capture_output=True, text=True, env=env, timeout=60)
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        out = {"msg": proc.stdout.strip()}
    if proc.returncode != 0:
        raise LabError(f"CNI {command} for pod {pod} on {node.name} failed: "
                       f"[{out.get('code')}] {out.get('msg')} {out.get('details', '')}".rstrip()
                       + (f"\n{proc.stderr.strip()}" if proc.stderr.strip() else ""))
    return out


def server_specs(pod: Pod) -> list[str]:
    """``PORT/PROTO`` for the lab's port and every declared one.

    The server skips (and logs) a protocol the kernel lacks; for SCTP the lab first tries
    `modprobe sctp`.
    """
    specs = [f"{PORT}/TCP"]
    for port in pod.ports:
        spec = f"{port['containerPort']}/{port.get('protocol', 'TCP')}"
        if spec not in specs:
            specs.append(spec)
    if any(s.endswith("/SCTP") for s in specs):
        sctp_available()
    return specs


def sctp_available() -> bool:
    """Whether this kernel speaks SCTP (after a `modprobe sctp`, which may not exist here)."""
    global _sctp
    if _sctp is None:
        subprocess.run(["modprobe", "sctp"], capture_output=True, check=False)
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
            _sctp = True
        except OSError:
            _sctp = False
    return _sctp


_sctp: bool | None = None


def _start_listener(lab: Lab, pod: Pod) -> int:
    """The pod's server (podserver.py): answers with the pod's namespace name on each port."""
    os.makedirs(os.path.dirname(lab.pod_log(pod.name)), exist_ok=True)
    return spawn(["ip", "netns", "exec", pod.name, sys.executable, "-S", SERVER, pod.name,
                  *server_specs(pod)], lab.pod_log(pod.name))


def add_pod(lab: Lab, node: Node, k: int, spec: PodSpec | None = None) -> Pod:
    pod = Pod(name=lab.pod_ns(node.name, k))
    if spec is not None:
        pod.namespace, pod.kube_name, pod.ports = spec.namespace, spec.name, spec.ports
    create_netns(pod.name)
    result = invoke_cni(lab, node, "ADD", pod.name)
    try:
        pod.ip = result["ips"][0]["address"].split("/")[0]
    except (KeyError, IndexError, AttributeError):
        raise LabError(f"CNI ADD for {pod.name} returned no IP: {result}")
    pod.listener_pid = _start_listener(lab, pod)
    node.pods[pod.name] = pod
    return pod


def _next_index(node: Node) -> int:
    return max((int(p.rsplit("pod", 1)[1]) for p in node.pods), default=0) + 1


def add_pods(lab: Lab, nodes: list[Node], per_node: int) -> list[Pod]:
    """Create `per_node` pods on each node (see `_make`)."""
    return _make(lab, [[(node, _next_index(node) + k, None) for k in range(per_node)] for node in nodes])


def add_spec_pods(lab: Lab, specs: list[PodSpec]) -> list[Pod]:
    """Create the pods of a ``--pods`` file on their nodes (see `_make`)."""
    jobs: list[list[tuple[Node, int, PodSpec | None]]] = []
    for node in lab.nodes.values():
        mine = [s for s in specs if s.node == node.name]
        jobs.append([(node, _next_index(node) + k, spec) for k, spec in enumerate(mine)])
    return _make(lab, jobs)


def _make(lab: Lab, jobs: list[list[tuple[Node, int, PodSpec | None]]]) -> list[Pod]:
    """Create pods (one job list per node) in parallel, except each node's first pod.

    Two bridge plugins racing to create and address a fresh cni0 can fail with EEXIST
    (plugins 1.1.1), so a node's first pod goes in a round of its own, as on a real node
    whose cni0 exists before the second pod arrives.
    """
    first = [j[0] for j in jobs if j and not j[0][0].pods]
    rest = [job for j in jobs for job in j if job not in first]
    made = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for batch in (first, rest):
            made += list(pool.map(lambda job: add_pod(lab, *job), batch))
    return made


def listener_alive(pod: Pod) -> bool:
    return alive(pod.listener_pid, pod.name)


def remove_pods(lab: Lab, node: Node) -> None:
    """Stop each pod's listener, CNI DEL it (frees the IP, removes the veth), drop its netns."""
    kill([(p.listener_pid, p.name) for p in node.pods.values()])
    errors = []
    for pod in list(node.pods.values()):
        try:
            invoke_cni(lab, node, "DEL", pod.name)
        except LabError as exc:
            errors.append(str(exc))
        delete_netns(pod.name)
        del node.pods[pod.name]
    if errors:
        raise LabError("; ".join(errors))
