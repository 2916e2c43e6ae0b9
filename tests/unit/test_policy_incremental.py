"""The incremental computer gives exactly what a fresh computation gives, change after change."""
from __future__ import annotations

import copy
import random

from flannel_ext._policy.compute import Cluster, PolicyComputer, compute_state

LABELS = {"app": ["db", "web", "cache"], "tier": ["front", "back"]}


def pod(i: int, rng: random.Random) -> dict:
    labels = {k: rng.choice(v) for k, v in LABELS.items() if rng.random() < 0.8}
    ports = [{"containerPort": rng.choice([80, 8080]), "name": "http"}] if rng.random() < 0.7 else []
    return {"metadata": {"name": f"p{i}", "namespace": rng.choice(["x", "y"]), "labels": labels},
            "spec": {"nodeName": rng.choice(["n1", "n2"]), "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": f"10.0.{i // 200}.{i % 200 + 2}"} if rng.random() < 0.9 else {}}


POLICIES = [
    {"metadata": {"name": "db", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                               "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]}]}},
    {"metadata": {"name": "out", "namespace": "y"}, "spec": {
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]},
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "http"}]}, {"ports": [{"port": "http"}]},
                   {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}]}]}},
    {"metadata": {"name": "deny", "namespace": "y"}, "spec": {"podSelector": {"matchLabels": {"tier": "back"}}}},
]
NAMESPACES = [{"metadata": {"name": "x", "labels": {"team": "a"}}},
              {"metadata": {"name": "y", "labels": {"team": "b"}}}]


def test_incremental_equals_fresh_over_random_changes():
    rng = random.Random(10)
    pods = [pod(i, rng) for i in range(60)]
    namespaces = copy.deepcopy(NAMESPACES)
    computer = {node: PolicyComputer(node) for node in ("n1", "n2")}
    for step in range(120):
        kind = rng.random()
        if kind < 0.5:      # relabel a pod
            p = rng.choice(pods)
            p["metadata"]["labels"] = {k: rng.choice(v) for k, v in LABELS.items() if rng.random() < 0.8}
        elif kind < 0.65:   # a pod goes, another comes, or gets/loses its IP
            i = rng.randrange(len(pods))
            pods[i] = pod(int(pods[i]["metadata"]["name"][1:]), rng)
        elif kind < 0.75:   # a pod moves node
            rng.choice(pods)["spec"]["nodeName"] = rng.choice(["n1", "n2"])
        elif kind < 0.85:   # a namespace is relabelled (full recompute)
            rng.choice(namespaces)["metadata"]["labels"]["team"] = rng.choice(["a", "b"])
        policies = POLICIES[:1 + step % 3] if kind > 0.95 else POLICIES
        for node, comp in computer.items():
            fresh = compute_state(Cluster.from_objects(step, namespaces, pods, policies), node)
            incremental = comp.compute(Cluster.from_objects(step, namespaces, pods, policies))
            assert incremental == fresh, f"step {step} on {node}"
