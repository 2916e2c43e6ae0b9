"""The lab's Kubernetes objects (cluster.json) and truth tables, without namespaces."""
from __future__ import annotations

import json
import pathlib

import pytest

from flannel_ext._lab import cluster, table
from flannel_ext._lab.state import Lab, LabError, Node, Pod

PODS = """\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a, tier: 1}}
spec:
  nodeName: n2
  containers:
  - name: web
    ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]
---
kind: Pod
metadata: {name: b}
spec: {nodeName: n1}
"""


def test_pods_file(tmp_path):
    path = tmp_path / "pods.yaml"
    path.write_text(PODS)
    namespaces, pods = cluster.read_pods_file(str(path), ["n1", "n2"])
    assert namespaces == {"x": {"ns": "x"}, "default": {}}
    assert [(p.namespace, p.name, p.node, p.labels) for p in pods] == [
        ("x", "a", "n2", {"pod": "a", "tier": "1"}), ("default", "b", "n1", {})]
    assert pods[0].ports == [{"containerPort": 80, "protocol": "TCP", "name": "http"},
                             {"containerPort": 53, "protocol": "UDP"}]
    with pytest.raises(LabError, match=r"document 2 \(Pod a\): spec.nodeName must name a lab node \(n1\)"):
        cluster.read_pods_file(str(path), ["n1"])


def _lab(tmp_path, monkeypatch) -> Lab:
    monkeypatch.setenv("FLANNEL_EXT_LAB_ROOT", str(tmp_path))
    lab = Lab(name="t", net_conf="nc.json", store="sqlite:x")
    node = Node(name="n1", ns="t-n1", index=1, ip="192.168.100.2")
    node.pods = {"t-n1-pod1": Pod("t-n1-pod1", "10.50.1.2", 1, "x", "a", [{"containerPort": 80, "protocol": "TCP"}]),
                 "t-n1-pod2": Pod("t-n1-pod2", "10.50.1.3", 2)}
    lab.nodes = {"n1": node}
    return lab


def _docs(text: str, tmp_path) -> list:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return cluster.read_documents(str(path))


def test_sync_apply_delete(tmp_path, monkeypatch):
    lab = _lab(tmp_path, monkeypatch)
    doc = cluster.load(lab)
    cluster.sync_pods(lab, doc, {"x": {"ns": "x"}}, {("x", "a"): {"pod": "a"}})
    assert cluster.save(lab, doc) == 1
    saved = json.loads(pathlib.Path(lab.cluster_file).read_text())
    assert [(p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["labels"], p["status"]["podIP"],
             p["spec"]["nodeName"]) for p in saved["pods"]] == [
        ("x", "a", {"pod": "a"}, "10.50.1.2", "n1"), ("default", "n1-pod2", {}, "10.50.1.3", "n1")]
    assert [n["metadata"] for n in saved["namespaces"]] == [{"name": "x", "labels": {"ns": "x"}},
                                                            {"name": "default", "labels": {}}]
    policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {}\n"
    assert cluster.apply(doc, _docs(policy, tmp_path)) == ["networkpolicy x/p created"]
    assert cluster.apply(doc, _docs(policy, tmp_path)) == ["networkpolicy x/p unchanged"]
    assert cluster.apply(doc, _docs(policy.replace("{}\n", "{podSelector: {}}\n"), tmp_path)) == \
        ["networkpolicy x/p configured"]
    assert cluster.apply(doc, _docs("kind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: z}}\n---\n"
                                    "kind: Namespace\nmetadata: {name: w}\n", tmp_path)) == \
        ["pod x/a labeled", "namespace w created"]
    # Labels survive a resync (a node added or removed rewrites the pods).
    cluster.sync_pods(lab, doc)
    assert doc["pods"][0]["metadata"]["labels"] == {"pod": "z"}
    with pytest.raises(LabError, match="no pod x/q in this lab"):
        cluster.apply(doc, _docs("kind: Pod\nmetadata: {name: q, namespace: x}\n", tmp_path))
    assert cluster.delete(doc, _docs(policy + "---\n" + policy.replace("name: p", "name: q"), tmp_path)) == \
        (["networkpolicy x/p deleted"], ["networkpolicy x/q not found"])
    assert doc["networkpolicies"] == []


def test_table_text_round_trip_and_differences():
    pods = ["x/a", "x/b", "y/a"]
    cells = {(s, d): not (s == "y/a" and d == "x/a") for s in pods for d in pods if s != d}
    t = table.Table("l", 80, "TCP", pods, cells, {("y/a", "x/a"): "timeout"})
    text = table.format_text(t)
    assert text.splitlines()[1].split() == ["-", "x/a", "x/b", "y/a"]
    assert text.splitlines()[4].split() == ["y/a", "X", ".", "-"]
    assert table.parse_text(text) == cells
    assert table.differences(t, table.parse_text(text)) == []
    want = {**cells, ("y/a", "x/a"): True}
    del want[("x/b", "x/a")]
    assert table.differences(t, want) == [
        "x/b -> x/a TCP/80: expected absent, got allowed",
        "y/a -> x/a TCP/80: expected allowed, got blocked (timeout)"]
    doc = table.to_json(t)
    assert doc["summary"] == {"pairs": 6, "allowed": 5, "blocked": 1}
    assert {"src": "y/a", "dst": "x/a", "port": 80, "protocol": "TCP", "ok": False, "error": "timeout"} in doc["pairs"]
    with pytest.raises(LabError, match="cell x/a -> x/b is '?'"):
        table.parse_text("- x/a x/b\nx/a - ?\n")
