"""The lab's Kubernetes objects: ``cluster.json``, read by every node's policy agent.

One JSON document, replaced atomically by each writer (``lab up``, ``apply``, ``delete``,
``add-node``, ``rm-node``)::

    {"generation": N, "namespaces": [v1 Namespace], "pods": [v1 Pod],
     "networkpolicies": [networking.k8s.io/v1 NetworkPolicy]}

Every write bumps the generation; each node's agent (``flannel-ext run --policy ...
--policy-source file:cluster.json``) answers with ``state/policy-status.json`` naming the
generation it applied, which is how `apply` knows a change is enforced everywhere.

The lab does not judge policies: a bad one is written as given, and the agents reject
and count it (so the lab shows exactly what a cluster would). Pods and namespaces are
the lab's own (made by ``lab up --pods``); `apply` changes only their labels.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from flannel_ext._lab.state import Lab, LabError
from flannel_ext._util.files import write_atomic

PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_NAMESPACE = "default"


@dataclass
class PodSpec:
    """A pod to make: what ``lab up --pods`` reads from a v1 Pod document."""
    namespace: str
    name: str
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[dict] = field(default_factory=list)   # {"containerPort", "protocol"[, "name"]}


def read_documents(path: str) -> list[tuple[str, dict]]:
    """The YAML documents of `path` (``-``: stdin) as (where, doc); empty documents dropped."""
    try:
        if path == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            with open(path, encoding="utf-8") as f:
                text, source = f.read(), path
        docs = list(yaml.safe_load_all(text))
    except OSError as exc:
        raise LabError(f"{path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        raise LabError(f"{path}: not YAML: {' '.join(str(exc).split())}")
    out = []
    for i, doc in enumerate(docs, 1):
        if doc is None:
            continue
        where = f"{source} document {i}"
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            raise LabError(f"{where}: not a Kubernetes object (a mapping with 'kind')")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise LabError(f"{where}: {doc['kind']} needs metadata.name (a non-empty string)")
        out.append((f"{where} ({doc['kind']} {meta['name']})", doc))
    return out


def _labels(where: str, meta: dict) -> dict[str, str]:
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                               for k, v in labels.items()):
        raise LabError(f"{where}: metadata.labels must map strings to strings, got {labels!r}")
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in labels.items()}


def _namespace(where: str, meta: dict) -> str:
    ns = meta.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(ns, str) or not ns:
        raise LabError(f"{where}: metadata.namespace must be a non-empty string, got {ns!r}")
    return ns


def _ports(where: str, spec: dict) -> list[dict]:
    ports: list[dict] = []
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        raise LabError(f"{where}: spec.containers must be a list")
    for c, container in enumerate(containers):
        for p, port in enumerate((container or {}).get("ports") or []):
            field_ = f"spec.containers[{c}].ports[{p}]"
            number = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                raise LabError(f"{where}: {field_}.containerPort must be a port number 1-65535, got {number!r}")
            proto = port.get("protocol", "TCP")
            if proto not in PROTOCOLS:
                raise LabError(f"{where}: {field_}.protocol must be TCP, UDP or SCTP, got {proto!r}")
            entry = {"containerPort": number, "protocol": proto}
            if port.get("name") is not None:
                if not isinstance(port["name"], str) or not 0 < len(port["name"]) <= 15:
                    raise LabError(f"{where}: {field_}.name must be a string of 1-15 characters")
                entry["name"] = port["name"]
            ports.append(entry)
    return ports


def read_pods_file(path: str, nodes: Iterable[str]) -> tuple[dict[str, dict[str, str]], list[PodSpec]]:
    """Namespaces (name -> labels) and pods of a ``--pods`` file, checked against the lab's nodes."""
    nodes = list(nodes)
    namespaces: dict[str, dict[str, str]] = {}
    pods: list[PodSpec] = []
    seen: set[tuple[str, str]] = set()
    for where, doc in read_documents(path):
        meta = doc["metadata"]
        if doc["kind"] == "Namespace":
            namespaces[meta["name"]] = _labels(where, meta)
        elif doc["kind"] == "Pod":
            ns = _namespace(where, meta)
            if (ns, meta["name"]) in seen:
                raise LabError(f"{where}: pod {ns}/{meta['name']} is defined twice")
            seen.add((ns, meta["name"]))
            spec = doc.get("spec") or {}
            node = spec.get("nodeName") if isinstance(spec, dict) else None
            if node not in nodes:
                raise LabError(f"{where}: spec.nodeName must name a lab node ({', '.join(nodes)}), got {node!r}")
            pods.append(PodSpec(ns, meta["name"], node, _labels(where, meta), _ports(where, spec)))
        else:
            raise LabError(f"{where}: --pods takes Namespace and Pod objects only, not {doc['kind']}")
    for pod in pods:
        namespaces.setdefault(pod.namespace, {})
    return namespaces, pods


# -- cluster.json --------------------------------------------------------------------------

def load(lab: Lab) -> dict:
    try:
        with open(lab.cluster_file, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        doc = {}
    except ValueError as exc:
        raise LabError(f"{lab.cluster_file} is unreadable ({exc})")
    for key in ("namespaces", "pods", "networkpolicies"):
        doc.setdefault(key, [])
    doc.setdefault("generation", 0)
    return doc


def save(lab: Lab, doc: dict) -> int:
    """Write `doc` with the next generation (atomically: the agents never see half a file).

    The temporary file is written in a subdirectory, so the rename into the watched lab
    directory is a lone IN_MOVED_TO there: watchdog holds an IN_MOVED_FROM for up to 0.5 s
    to pair it, and a pair split across two inotify reads stalls its event queue that long.
    """
    doc["generation"] = int(doc.get("generation", 0)) + 1
    staging = os.path.join(lab.dir, ".staging", "cluster.json")
    write_atomic(staging, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(staging, lab.cluster_file)
    return doc["generation"]


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", DEFAULT_NAMESPACE), meta.get("name", "")


def namespace_object(name: str, labels: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}}


def sync_pods(lab: Lab, doc: dict, namespaces: dict[str, dict[str, str]] | None = None,
              labels: dict[tuple[str, str], dict[str, str]] | None = None) -> None:
    """Make ``doc["pods"]`` the lab's pods (IPs from lab.json), keeping labels already set.

    Pods made by ``--pods-per-node`` live in namespace ``default`` as ``<node>-pod<k>``.
    """
    old = {_key(p): (p.get("metadata") or {}).get("labels") or {} for p in doc["pods"]}
    labels = {**old, **(labels or {})}
    have_ns = {n["metadata"]["name"] for n in doc["namespaces"]}
    for name, ns_labels in (namespaces or {}).items():
        if name not in have_ns:
            doc["namespaces"].append(namespace_object(name, ns_labels))
            have_ns.add(name)
    pods = []
    for node, pod in lab.pods():
        ns = pod.namespace or DEFAULT_NAMESPACE
        name = pod.kube_name or pod.name[len(lab.prefix):]
        if ns not in have_ns:
            doc["namespaces"].append(namespace_object(ns, {}))
            have_ns.add(ns)
        pods.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels.get((ns, name), {}))},
            "spec": {"nodeName": node.name, "containers": [{"name": "server", "ports": pod.ports}]},
            "status": {"podIP": pod.ip} if pod.ip else {},
        })
    doc["pods"] = pods


def pod_labels(doc: dict) -> dict[tuple[str, str], dict[str, str]]:
    return {_key(p): (p.get("metadata") or {}).get("labels") or {} for p in doc["pods"]}


# -- apply / delete ------------------------------------------------------------------------

def apply(doc: dict, documents: list[tuple[str, dict]]) -> list[str]:
    """Create/update NetworkPolicies, set Namespace and Pod labels; one kubectl-like line each."""
    lines = []
    pods = {_key(p): p for p in doc["pods"]}
    namespaces = {n["metadata"]["name"]: n for n in doc["namespaces"]}
    policies = {_key(p): i for i, p in enumerate(doc["networkpolicies"])}
    for where, obj in documents:
        meta, kind = obj["metadata"], obj["kind"]
        if kind == "NetworkPolicy":
            obj = {**obj, "metadata": {**meta, "namespace": _namespace(where, meta)}}
            key = _key(obj)
            if key in policies:
                same = doc["networkpolicies"][policies[key]] == obj
                doc["networkpolicies"][policies[key]] = obj
                lines.append(f"networkpolicy {key[0]}/{key[1]} {'unchanged' if same else 'configured'}")
            else:
                policies[key] = len(doc["networkpolicies"])
                doc["networkpolicies"].append(obj)
                lines.append(f"networkpolicy {key[0]}/{key[1]} created")
        elif kind == "Namespace":
            labels = _labels(where, meta)
            if meta["name"] in namespaces:
                namespaces[meta["name"]]["metadata"]["labels"] = labels
                lines.append(f"namespace {meta['name']} labeled")
            else:
                namespaces[meta["name"]] = namespace_object(meta["name"], labels)
                doc["namespaces"].append(namespaces[meta["name"]])
                lines.append(f"namespace {meta['name']} created")
        elif kind == "Pod":
            key = (_namespace(where, meta), meta["name"])
            if key not in pods:
                raise LabError(f"{where}: no pod {key[0]}/{key[1]} in this lab; pods are made by "
                               "`lab up --pods FILE`, apply only changes their labels")
            pods[key]["metadata"]["labels"] = _labels(where, meta)
            lines.append(f"pod {key[0]}/{key[1]} labeled")
        else:
            raise LabError(f"{where}: lab apply takes NetworkPolicy, Namespace and Pod objects, not {kind}")
    return lines


def delete(doc: dict, documents: list[tuple[str, dict]]) -> tuple[list[str], list[str]]:
    """Remove the NetworkPolicies named in `documents`; returns (done lines, not-found lines).

    Namespaces and Pods live as long as the lab: their documents are skipped with a line.
    """
    done, missing = [], []
    for where, obj in documents:
        meta, kind = obj["metadata"], obj["kind"]
        if kind == "NetworkPolicy":
            key = (_namespace(where, meta), meta["name"])
            before = len(doc["networkpolicies"])
            doc["networkpolicies"] = [p for p in doc["networkpolicies"] if _key(p) != key]
            if len(doc["networkpolicies"]) < before:
                done.append(f"networkpolicy {key[0]}/{key[1]} deleted")
            else:
                missing.append(f"networkpolicy {key[0]}/{key[1]} not found")
        elif kind in ("Namespace", "Pod"):
            done.append(f"{kind.lower()} {meta['name']} kept (the lab's pods and namespaces stay until `lab down`)")
        else:
            raise LabError(f"{where}: lab delete takes NetworkPolicy objects, not {kind}")
    return done, missing


# -- the agents' answers -------------------------------------------------------------------

def read_status(lab: Lab, node: str) -> dict | None:
    """The node agent's ``policy-status.json``, or None before its first apply."""
    try:
        with open(lab.policy_status(node), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def wait_generation(lab: Lab, generation: int, timeout: float, running=None) -> dict[str, dict]:
    """Wait until every node's agent reports `generation` (or later); node -> its status.

    `running(node) -> bool` lets a dead daemon fail the wait at once instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        statuses = {n: read_status(lab, n) for n in lab.nodes}
        behind = [n for n, s in statuses.items() if not s or int(s.get("generation") or 0) < generation]
        if not behind:
            return statuses  # type: ignore[return-value]
        dead = [n for n in behind if running is not None and not running(lab.nodes[n])]
        if dead or time.monotonic() > deadline:
            why = "its daemon is not running" if dead else f"no answer after {timeout:g}s"
            node = (dead or behind)[0]
            got = statuses[node]
            raise LabError(f"generation {generation} not enforced on {', '.join(dead or behind)} ({why}; "
                           f"{node} reports {got.get('generation') if got else 'nothing'}"
                           f"{', error: ' + str(got['error']) if got and got.get('error') else ''}); "
                           f"see `flannel-ext lab logs --name {lab.name} {node}`")
        time.sleep(0.01)


def rejected(statuses: dict[str, Any]) -> dict[str, str]:
    """object -> error, over every node's status (the agents judge policies alike)."""
    out: dict[str, str] = {}
    for status in statuses.values():
        for item in (status or {}).get("rejected") or []:
            out.setdefault(str(item.get("object")), str(item.get("error")))
    return out


# -- lab status ----------------------------------------------------------------------------

def pod_rows(lab: Lab) -> list[dict]:
    """Each pod as `lab status --json` lists it: namespace, name, labels, node, IP."""
    doc = load(lab)
    by_ip = {(p.get("status") or {}).get("podIP"): p for p in doc["pods"]}
    rows = []
    for node, pod in lab.pods():
        obj = by_ip.get(pod.ip) or {"metadata": {}}
        meta = obj["metadata"]
        rows.append({"namespace": meta.get("namespace", pod.namespace or DEFAULT_NAMESPACE),
                     "name": meta.get("name", pod.kube_name or pod.name[len(lab.prefix):]),
                     "labels": meta.get("labels") or {}, "node": node.name, "ip": pod.ip,
                     "netns": pod.name, "ports": pod.ports})
    return rows


def format_policy(lab: Lab, statuses: dict[str, dict | None]) -> list[str]:
    """Status lines: the generation written and, per node, what its agent applied."""
    if not lab.policy:
        return ["policy: off (lab up --no-policy)"]
    doc = load(lab)
    lines = [(f"policy: {lab.policy}, {lab.cluster_file} generation {doc['generation']}, "
              f"{len(doc['networkpolicies'])} networkpolicies")]
    for node, st in statuses.items():
        if not st:
            lines.append(f"  {node}: no policy-status.json yet")
            continue
        lines.append(f"  {node}: generation {st.get('generation')}, {st.get('local_pods')} local pods, "
                     f"{st.get('rejected_total', 0)} rejected" +
                     (f", error: {st['error']}" if st.get("error") else ""))
        lines += [f"    rejected {r.get('kind')} {r.get('object')}: {r.get('error')}"
                  for r in st.get("rejected") or []]
    return lines
