"""KubeStore against the fake API server, through the real `kubernetes` client over HTTP."""
from __future__ import annotations

import ipaddress
import json
import threading
from contextlib import closing

import pytest
import kube_fake

from flannel_ext._util.errors import ConfigError, StoreError
from flannel_ext._config.netconf import NetConf
from flannel_ext._stores.base import AcquireRequest, LeaseStore
from flannel_ext._stores.kube import KubeStore, PodCIDRNotAssigned
from flannel_ext._stores.kube_annotations import AnnotationNames
from flannel_ext._stores.lease import EventType, LeaseAttrs

P = "flannel.alpha.coreos.com/"
MAC = "aa:bb:cc:dd:ee:ff"
SMP = kube_fake.SMP
kube_api = kube_fake.kube_api   # the fixture
CONFIG = NetConf(network=ipaddress.IPv4Network("10.244.0.0/16"), backend_type="extension")


def flannel_vxlan(public_ip: str, mac: str = "6e:9c:1a:2b:3c:4d") -> dict:
    """A node as a native flanneld (vxlan backend) annotates it."""
    return {P + "backend-data": f'{{"VNI":1,"VtepMAC":"{mac}"}}', P + "backend-type": "vxlan",
            P + "kube-subnet-manager": "true", P + "public-ip": public_ip}


def request(public_ip="192.168.1.10", data=MAC, **kw) -> AcquireRequest:
    return AcquireRequest(attrs=LeaseAttrs.with_string_data(public_ip, data, **kw), config=CONFIG)


@pytest.fixture
def make_store(kube_api):
    stores = []

    def make(node="n1", **options):
        options = {"poll_interval": 0.05, "acquire_timeout": 2.0, "heartbeat": 0.1,
                   "watch_timeout": 5, **options}
        store = KubeStore.from_options(kubeconfig=str(kube_api.kubeconfig_path), node_name=node,
                                       env={}, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


class Batches:
    """A running store.watch whose delivered batches a test takes in order."""

    def __init__(self, store, revision):
        self.got: list[list] = []
        self.cond = threading.Condition()
        self.watch = store.watch(revision, self)

    def deliver(self, batch):
        with self.cond:
            self.got.append(batch)
            self.cond.notify_all()

    def failed(self, error):
        with self.cond:
            self.got.append(error)
            self.cond.notify_all()

    def close(self):
        self.watch.close()


def batches(gen: Batches, want: int, timeout: float = 20) -> list:
    """The next `want` batches (bounded so a bug fails, not hangs)."""
    with gen.cond:
        if not gen.cond.wait_for(lambda: len(gen.got) >= want, timeout):
            raise AssertionError(f"only {len(gen.got)} of {want} batches: {gen.got}")
        got, gen.got[:want] = gen.got[:want], []
    assert not any(isinstance(b, BaseException) for b in got), got
    return got


# -- acquire ---------------------------------------------------------------------------
def test_acquire_writes_flannels_exact_annotations_with_a_status_patch(kube_api, make_store):
    kube_api.add_node("n1", "10.244.1.0/24")
    store = make_store()
    assert isinstance(store, LeaseStore)

    lease = store.acquire(request())

    assert lease.subnet == ipaddress.IPv4Network("10.244.1.0/24")
    assert lease.key == "10.244.1.0-24" and lease.expiration is None
    assert lease.attrs.backend_data == '"aa:bb:cc:dd:ee:ff"'
    written = {P + "backend-data": '"aa:bb:cc:dd:ee:ff"', P + "backend-type": "extension",
               P + "kube-subnet-manager": "true", P + "public-ip": "192.168.1.10"}
    assert kube_api.node("n1")["metadata"]["annotations"] == written
    path, ctype, body = kube_api.patch_log[0]
    assert (path, ctype) == ("/api/v1/nodes/n1/status", SMP)
    assert json.loads(body) == {"metadata": {"annotations": written}}


def test_acquire_sets_network_unavailable_false_and_skips_unchanged_annotations(kube_api, make_store):
    kube_api.add_node("n1", "10.244.1.0/24")
    kube_api.update_node("n1", {"status": {"conditions": [   # as the kubelet/cloud leave them
        {"type": "Ready", "status": "True", "reason": "KubeletReady"},
        {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}})
    store = make_store()
    store.acquire(request())
    store.acquire(request())   # a restart: annotations already right

    annotation_patches = [b for _, _, b in kube_api.patch_log if b"annotations" in b]
    assert len(annotation_patches) == 1 and len(kube_api.patch_log) == 3
    ready, cond = kube_api.node("n1")["status"]["conditions"]   # merged by type
    assert ready["type"] == "Ready" and ready["status"] == "True"
    assert {k: cond[k] for k in ("type", "status", "reason", "message")} == {
        "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
        "message": "Flannel is running on this node"}
    assert {(path, ctype) for path, ctype, _ in kube_api.patch_log} == {("/api/v1/nodes/n1/status", SMP)}


def test_acquire_without_condition_and_without_backend_data(kube_api, make_store):
    kube_api.add_node("n1", "10.244.1.0/24")
    make_store(set_node_network_unavailable=False).acquire(request(data=None))
    node = kube_api.node("n1")
    assert node["metadata"]["annotations"][P + "backend-data"] == "null"   # RawMessage(nil)
    assert "conditions" not in node["status"] and len(kube_api.patch_log) == 1


def test_public_ip_overwrite_and_v6_pair(kube_api, make_store):
    kube_api.add_node("n1", "10.244.1.0/24", {P + "public-ip-overwrite": "203.0.113.7"})
    make_store().acquire(request(public_ipv6="fd00::10"))
    ann = kube_api.node("n1")["metadata"]["annotations"]
    assert ann[P + "public-ip"] == "203.0.113.7"
    assert ann[P + "public-ipv6"] == "fd00::10" and ann[P + "backend-v6-data"] == "null"


def test_missing_pod_cidr_is_a_retryable_error_until_assigned(kube_api, make_store):
    kube_api.add_node("n1", None)
    store = make_store(acquire_timeout=0.2)
    with pytest.raises(PodCIDRNotAssigned, match='node "n1" pod cidr not assigned') as err:
        store.acquire(request())
    assert isinstance(err.value, StoreError) and kube_api.patch_log == []

    kube_api.update_node("n1", {"spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]}})
    assert store.acquire(request()).key == "10.244.9.0-24"


def test_pod_cidr_outside_network_gives_flannels_error(kube_api, make_store):
    kube_api.add_node("n1", "10.99.1.0/24")
    with pytest.raises(ConfigError, match='subnet "10.244.0.0/16" specified in the flannel net config '
                                         'doesn\'t contain "10.99.1.0/24" PodCIDR of the "n1" node'):
        make_store().acquire(request())
    assert kube_api.patch_log == []   # checked before anything is advertised


def test_release_and_renew_keep_the_annotations(kube_api, make_store):
    kube_api.add_node("n1", "10.244.1.0/24")
    store = make_store()
    lease = store.acquire(request())
    assert store.renew(lease) == lease
    store.release(lease)
    assert kube_api.node("n1")["metadata"]["annotations"][P + "kube-subnet-manager"] == "true"


# -- list / watch ----------------------------------------------------------------------
def test_list_reads_flannel_nodes_and_rejects_bad_ones(kube_api, make_store):
    kube_api.add_node("vx", "10.244.2.0/24", flannel_vxlan("192.168.1.11"))
    kube_api.add_node("plain", "10.244.3.0/24")   # no flannel on it
    kube_api.add_node("bad", "10.244.4.0/24", flannel_vxlan("not-an-ip"))

    snap = make_store().list()

    (lease,) = snap.leases
    assert lease.key == "10.244.2.0-24" and lease.expiration is None
    assert lease.attrs == LeaseAttrs(public_ip="192.168.1.11", backend_type="vxlan",
                                     backend_data='{"VNI":1,"VtepMAC":"6e:9c:1a:2b:3c:4d"}')
    assert [(e.type, e.key) for e in snap.rejected] == [(EventType.REJECTED, "bad")]
    assert snap.revision == kube_api.resource_version


def test_watch_add_modify_delete(kube_api, make_store):
    store = make_store()
    snap = store.list()
    gen = Batches(store, snap.revision)

    kube_api.add_node("vx", "10.244.2.0/24", flannel_vxlan("192.168.1.11"))
    kube_api.add_node("plain", "10.244.3.0/24")
    ((added,),) = batches(gen, 1)
    assert added.type is EventType.ADDED and added.key == "10.244.2.0-24"
    assert added.lease.attrs.backend_data == '{"VNI":1,"VtepMAC":"6e:9c:1a:2b:3c:4d"}'

    # A PodCIDR-only change is ignored (as flannel); the next event is the IP change.
    kube_api.update_node("vx", {"spec": {"podCIDR": "10.244.8.0/24"}})
    kube_api.update_node("plain", {"metadata": {"annotations": {"unrelated": "x"}}})
    kube_api.update_node("vx", {"metadata": {"annotations": {P + "public-ip": "192.168.1.12"}}})
    ((changed,),) = batches(gen, 1)
    assert changed.type is EventType.ADDED and changed.lease.attrs.public_ip == "192.168.1.12"

    kube_api.delete_node("vx")
    ((removed,),) = batches(gen, 1)
    assert removed.type is EventType.REMOVED and removed.lease == changed.lease

    gen.close()
    assert not gen.watch.alive()   # ends at once when closed


def test_bad_public_ip_is_rejected_and_others_unaffected(kube_api, make_store):
    kube_api.add_node("a", "10.244.2.0/24", flannel_vxlan("192.168.1.11"))
    kube_api.add_node("b", "10.244.3.0/24", flannel_vxlan("192.168.1.12"))
    store = make_store()
    snap = store.list()
    gen = Batches(store, snap.revision)

    kube_api.update_node("a", {"metadata": {"annotations": {P + "public-ip": "300.1.1.1"}}})
    kube_api.update_node("b", {"metadata": {"annotations": {P + "public-ip": "192.168.1.22"}}})
    (rejected,), (added,) = batches(gen, 2)
    assert (rejected.type, rejected.key, rejected.lease) == (EventType.REJECTED, "a", None)
    assert "300.1.1.1" in rejected.reason
    assert added.type is EventType.ADDED and added.key == "10.244.3.0-24"
    gen.close()


def test_watch_relists_after_410_gone_and_diffs(kube_api, make_store):
    kube_api.add_node("a", "10.244.2.0/24", flannel_vxlan("192.168.1.11"))
    kube_api.add_node("b", "10.244.3.0/24", flannel_vxlan("192.168.1.12"))
    store = make_store()
    snap = store.list()
    kube_api.delete_node("a")
    kube_api.update_node("b", {"metadata": {"annotations": {P + "public-ip": "192.168.1.22"}}})
    kube_api.compact()   # the history after snap.revision is gone: the watch gets 410

    gen = Batches(store, snap.revision)
    (diff,) = batches(gen, 1)
    assert sorted((e.type.value, e.key) for e in diff) == [("added", "10.244.3.0-24"),
                                                           ("removed", "10.244.2.0-24")]
    gen.close()
    lists = [p for m, p in kube_api.requests if m == "GET" and p.split("?")[0] == "/api/v1/nodes"
             and "watch=" not in p]
    assert len(lists) == 2


def test_dual_stack_update_of_either_tuple_is_added(kube_api, make_store):
    ann = {**flannel_vxlan("192.168.1.11"), P + "public-ipv6": "fd00::11",
           P + "backend-v6-data": '{"VNI":1,"VtepMAC":"6e:9c:1a:2b:3c:4e"}'}
    kube_api.add_node("ds", "10.244.2.0/24", ann, pod_cidrs=["10.244.2.0/24", "fd10:0:0:2::/64"])
    store = make_store(enable_ipv6=True)
    snap = store.list()
    assert [lease.key for lease in snap.leases] == ["10.244.2.0-24&fd10:0:0:2::-64"]
    gen = Batches(store, snap.revision)

    kube_api.update_node("ds", {"metadata": {"annotations": {P + "public-ipv6": "fd00::12"}}})
    ((added,),) = batches(gen, 1)   # flannel only fires when both tuples changed
    assert added.lease.attrs.public_ipv6 == "fd00::12"
    gen.close()


# -- options ---------------------------------------------------------------------------
@pytest.mark.parametrize("prefix, key", [
    ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/kube-subnet-manager"),
    ("example.com/net", "example.com/net-kube-subnet-manager"),
    ("example.com/net-", "example.com/net-kube-subnet-manager"),
    ("a_b.example-1.io/", "a_b.example-1.io/kube-subnet-manager"),
])
def test_annotation_prefix_normalised_as_flannel(prefix, key):
    assert AnnotationNames.from_prefix(prefix).kube_subnet_manager == key


@pytest.mark.parametrize("prefix, problem", [
    ("example.com/a/b", "at most single slash"),
    ("localhost", "fqdn/"),
    ("example.com/Net", "fqdn/"),
    ("example.com/net.work", "fqdn/"),
])
def test_bad_annotation_prefix(prefix, problem):
    with pytest.raises(ConfigError, match=problem):
        AnnotationNames.from_prefix(prefix)


def test_node_name_from_pod_spec(kube_api):
    kube_api.add_pod("kube-flannel", "kube-flannel-ds-x1", "worker-7")
    env = {"POD_NAME": "kube-flannel-ds-x1", "POD_NAMESPACE": "kube-flannel"}
    store = KubeStore.from_options(kubeconfig=str(kube_api.kubeconfig_path), env=env)
    try:
        assert store.node_name == "worker-7"
        assert ("GET", "/api/v1/namespaces/kube-flannel/pods/kube-flannel-ds-x1") in kube_api.requests
    finally:
        store.close()
    with closing(KubeStore.from_options(api_url=kube_api.url, env={"NODE_NAME": "n9", **env})) as store:
        assert store.node_name == "n9"


def test_node_name_errors(kube_api, monkeypatch):
    with pytest.raises(StoreError, match="env variables POD_NAME and POD_NAMESPACE must be set"):
        KubeStore.from_options(kubeconfig=str(kube_api.kubeconfig_path), env={"POD_NAME": "p"})
    with pytest.raises(StoreError, match="error retrieving pod spec for 'ns/nope': 404"):
        KubeStore.from_options(api_url=kube_api.url, env={"POD_NAME": "nope", "POD_NAMESPACE": "ns"})
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(StoreError, match="fail to create kubernetes config"):
        KubeStore.from_options(node_name="n1")   # in-cluster, but not in a pod

