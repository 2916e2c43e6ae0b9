"""Shared pieces of the policy e2e tests: the x/y/z lab of Kubernetes' e2e netpol suite,
the CLI calls, and `Reachability`, an expected truth table written from the spec.

Namespaces x, y, z (label ``ns: <name>``), pods a, b, c in each (label ``pod: <name>``),
spread over 3 nodes so that most pairs cross nodes; every pod serves 80 and 81 on TCP and
UDP, with the netpol suite's port names (``serve-80-tcp`` ...).
"""
from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
NAMESPACES = ("x", "y", "z")
PODS = [f"{ns}/{p}" for ns in NAMESPACES for p in "abc"]
NODES = ("n1", "n2", "n3")


def node_of(ns_index: int, pod_index: int) -> str:
    return NODES[(ns_index + pod_index) % 3]


def pods_yaml() -> str:
    docs = []
    for i, ns in enumerate(NAMESPACES):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}})
        for j, pod in enumerate("abc"):
            ports = [{"containerPort": port, "protocol": proto, "name": f"serve-{port}-{proto.lower()}"}
                     for port in (80, 81) for proto in ("TCP", "UDP")]
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                         "spec": {"nodeName": node_of(i, j), "containers": [{"name": "cont", "ports": ports}]}})
    return yaml.safe_dump_all(docs)


def lab_cmd(*args: str, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flannel_ext", "lab", *args], capture_output=True, check=False,
                          text=True, timeout=timeout, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def up_netpol_lab(name: str, net_conf: pathlib.Path, tmp: pathlib.Path) -> dict:
    """`lab up --pods` of the x/y/z lab; returns pod -> IP."""
    pods = tmp / "pods.yaml"
    pods.write_text(pods_yaml())
    lab_cmd("down", "--name", name)
    out = ok(lab_cmd("up", "--name", name, "--nodes", "3", "--net-conf", str(net_conf), "--pods", str(pods)))
    assert "72/72 pairs ok" in out, out
    status = json.loads(ok(lab_cmd("status", "--name", name, "--json")))
    return {f"{p['namespace']}/{p['name']}": p["ip"] for p in status["pods"]}


def apply(name: str, text: str, verb: str = "apply") -> str:
    return ok(lab_cmd(verb, "--name", name, "-f", "-", input=text))


class Reachability:
    """The expected table: every pair starts `default`; `expect` sets the pairs whose source
    and destination match the globs (``x/*``, ``*/a``, ``y/b``); later calls win."""

    def __init__(self, default: bool = True):
        self.cells = {(s, d): default for s in PODS for d in PODS if s != d}

    def expect(self, src: str = "*", dst: str = "*", allowed: bool = False) -> Reachability:
        for s, d in self.cells:
            if fnmatch.fnmatchcase(s, src) and fnmatch.fnmatchcase(d, dst):
                self.cells[(s, d)] = allowed
        return self

    def json(self) -> str:
        return json.dumps({"pairs": [{"src": s, "dst": d, "ok": v} for (s, d), v in self.cells.items()]})


def check_table(name: str, tmp: pathlib.Path, port: int, protocol: str, want: Reachability,
                wait: float = 15) -> dict:
    """`lab check --port --protocol --expect --wait` against `want`; fails with the diff."""
    path = tmp / f"expect-{os.getpid()}-{port}-{protocol}.json"
    path.write_text(want.json())
    proc = lab_cmd("check", "--name", name, "--port", str(port), "--protocol", protocol,
                   "--expect", str(path), "--wait", str(wait), "--json")
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    assert proc.returncode == 0 and doc.get("differences") == [], \
        f"{protocol}/{port}: " + "\n".join(doc.get("differences") or [proc.stderr])
    return doc
