"""Pods: a namespace wired by `flannel-ext-cni` exactly as a container runtime does it.

The plugin runs inside the node namespace (so the bridge is the node's ``cni0``) with the
``CNI_*`` variables and the network config on stdin; ``CNI_PATH`` holds the reference
plugins. Each pod then runs a tiny TCP listener that answers with the pod's name, so a
connect proves which pod was reached.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from flannel_ext._util.netns import create_netns, delete_netns
from flannel_ext._lab.state import Lab, LabError, Node, Pod
from flannel_ext._lab.topology import alive, kill, spawn

PORT = 7777
# -S: no site import, so each listener starts in a few ms.
LISTENER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1])))
s.listen(256)
name = (sys.argv[2] + "\\n").encode()
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    except OSError:
        pass
    c.close()
"""


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


def _start_listener(lab: Lab, pod: Pod) -> int:
    os.makedirs(os.path.dirname(lab.pod_log(pod.name)), exist_ok=True)
    return spawn(["ip", "netns", "exec", pod.name, sys.executable, "-S", "-c", LISTENER, str(PORT), pod.name],
                 lab.pod_log(pod.name))


def add_pod(lab: Lab, node: Node, k: int) -> Pod:
    pod = Pod(name=lab.pod_ns(node.name, k))
    create_netns(pod.name)
    result = invoke_cni(lab, node, "ADD", pod.name)
    try:
        pod.ip = result["ips"][0]["address"].split("/")[0]
    except (KeyError, IndexError, AttributeError):
        raise LabError(f"CNI ADD for {pod.name} returned no IP: {result}")
    pod.listener_pid = _start_listener(lab, pod)
    node.pods[pod.name] = pod
    return pod


def add_pods(lab: Lab, nodes: list[Node], per_node: int) -> list[Pod]:
    """Create `per_node` pods on each node, in parallel, except each node's first pod.

    Two bridge plugins racing to create and address a fresh cni0 can fail with EEXIST
    (plugins 1.1.1), so a node's first pod goes in a round of its own, as on a real node
    whose cni0 exists before the second pod arrives.
    """
    jobs = []
    for node in nodes:
        start = max((int(p.rsplit("pod", 1)[1]) for p in node.pods), default=0)
        jobs.append([(node, start + k) for k in range(1, per_node + 1)])
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
