"""The kube policy source against the wire-level fake API server (real `kubernetes` client)."""
from __future__ import annotations

import queue

import pytest
from kube_fake import kube_api  # noqa: F401 - the fixture

from flannel_ext._policy.compute import Cluster, compute_state
from flannel_ext._policy.kube_source import KubeSource

DENY = {"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}}}


def pod(name: str, labels: dict, ip: str | None = "10.0.0.2", node: str = "n1") -> dict:
    return {"metadata": {"name": name, "namespace": "x", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
            "status": {"podIP": ip} if ip else {}}


@pytest.fixture
def source(kube_api):  # noqa: F811
    kube_api.put("namespaces", {"metadata": {"name": "x", "labels": {"team": "blue"}}})
    kube_api.put("pods", pod("a", {"app": "db"}))
    kube_api.put("networkpolicies", DENY)
    got: queue.Queue = queue.Queue()
    src = KubeSource.from_options(got.put, kubeconfig=str(kube_api.kubeconfig_path), watch_timeout=30)
    src.start()
    yield src, got
    src.stop()


def next_cluster(got: queue.Queue, until=lambda c: True, timeout: float = 10.0) -> Cluster:
    """The next snapshot satisfying `until`; source errors (a broken watch) are skipped."""
    while True:
        item = got.get(timeout=timeout)
        if isinstance(item, Cluster) and until(item):
            return item


def local(cluster: Cluster):
    return compute_state(cluster, "n1").pods


def test_initial_list_then_watch_events(source, kube_api):  # noqa: F811
    src, got = source
    first = got.get(timeout=10)
    assert isinstance(first, Cluster)
    assert first.generation == kube_api.resource_version
    assert local(first)["10.0.0.2"].ingress == ()
    assert first.namespaces["x"].labels == {"team": "blue", "kubernetes.io/metadata.name": "x"}
    # A label change arrives as a watch event; the generation follows the resourceVersion.
    kube_api.put("pods", pod("a", {"app": "web"}))
    changed = next_cluster(got, lambda c: c.generation == kube_api.resource_version)
    assert local(changed)["10.0.0.2"].ingress is None
    kube_api.put("pods", pod("a", {"app": "db"}))
    kube_api.delete("networkpolicies", "x", "deny")
    gone = next_cluster(got, lambda c: c.generation == kube_api.resource_version)
    assert gone.policies == [] and local(gone)["10.0.0.2"].ingress is None
    assert src.relists == {"namespaces": 1, "pods": 1, "networkpolicies": 1}


def test_unknown_fields_reach_validation(source, kube_api):  # noqa: F811
    _, got = source
    next_cluster(got)
    bad = {"metadata": {"name": "bad", "namespace": "x"}, "spec": {"podSelector": {}, "ingres": []}}
    kube_api.put("networkpolicies", bad)
    cluster = next_cluster(got, lambda c: c.generation == kube_api.resource_version)
    assert str(cluster.rejected[0]).startswith("NetworkPolicy x/bad: spec.ingres: unknown field")
    assert [p.name for p in cluster.policies] == ["deny"]


def test_relists_after_410_gone(source, kube_api):  # noqa: F811
    src, got = source
    next_cluster(got)
    # Break the watches' connections and compact, so each watch resumes from a version
    # older than the history: the server answers 410 and the source must list again.
    from flannel_ext.testing import wait_for
    wait_for(lambda: len(src._streams) == 3 and all(getattr(w, "_resp", None) for w in src._streams.values()),
             10, what="three open watches")
    kube_api.compact()
    for stream in list(src._streams.values()):
        stream.stop()
    kube_api.put("pods", pod("b", {"app": "db"}, ip="10.0.0.3"))
    cluster = next_cluster(got, lambda c: "10.0.0.3" in local(c))
    assert local(cluster)["10.0.0.3"].ingress == ()
    assert all(n >= 2 for n in src.relists.values()), src.relists


def test_pod_without_ip_waits_for_one(source, kube_api):  # noqa: F811
    _, got = source
    next_cluster(got)
    kube_api.put("pods", pod("c", {"app": "db"}, ip=None))
    cluster = next_cluster(got, lambda c: c.generation == kube_api.resource_version)
    assert set(local(cluster)) == {"10.0.0.2"}
    kube_api.put("pods", pod("c", {"app": "db"}, ip="10.0.0.4"))
    cluster = next_cluster(got, lambda c: c.generation == kube_api.resource_version)
    assert set(local(cluster)) == {"10.0.0.2", "10.0.0.4"}


def test_a_failing_watch_is_reported_to_the_agent(kube_api):  # noqa: F811
    got: queue.Queue = queue.Queue()
    src = KubeSource.from_options(got.put, kubeconfig=str(kube_api.kubeconfig_path), watch_timeout=1,
                                  backoff_max=0.2)
    src.start()
    try:
        assert isinstance(got.get(timeout=10), Cluster)
        kube_api.forbidden.add("pods")   # RBAC taken away: the next watch and list get 403
        error = next(item for item in iter(lambda: got.get(timeout=10), None) if isinstance(item, Exception))
        assert str(error).startswith("kube policy source: watching pods failed: 403")
        assert "manifest --policy" in str(error)
        kube_api.forbidden.clear()
        assert isinstance(next_cluster(got), Cluster)   # recovered: snapshots again
    finally:
        src.stop()
