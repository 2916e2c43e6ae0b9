"""The Kubernetes lease store: flannel's kube subnet manager (Documentation/flanneld.md), on the official client.

A node's lease is its PodCIDR (assigned by kube-controller-manager, never chosen here);
its attributes live in the node's `<prefix>*` annotations. acquire() writes them with a
strategic-merge PATCH to `nodes/<n>/status` (all flannel's RBAC grants), then marks the
node's NetworkUnavailable condition False. There is no TTL: renew and release do nothing.

Watching is list + watch on nodes on the watch's own thread, which delivers each batch
to the caller's sink; closing the watch stops its HTTP stream at once. It re-lists and diffs
on 410 Gone, on errors (with backoff) and every `resync` seconds, which flannel's
informer does not do (flannel-io/flannel#2554: deletions missed while down).
Deviations from flannel, all deliberate:
- an update is ADDED when EITHER the v4 or the v6 tuple changed (flannel needs both);
- a node newly marked `kube-subnet-manager` is ADDED even if its tuples did not change,
  and one that loses the mark is REMOVED;
- when an ADDED lease's subnet differs from the one last sent, REMOVED(old) comes first;
- the PodCIDR is checked against Network before annotating, not after;
- an unparsable node is a REJECTED event keyed by node name, not only a log line.
"""
from __future__ import annotations

import builtins
import copy
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

import urllib3
from kubernetes import client, config as kube_config, watch as kube_watch

from flannel_ext._util.errors import ConfigError, StoreError
from flannel_ext._stores.base import DEFAULT_TTL, AcquireRequest, EventSink, Snapshot, Watch
from flannel_ext._stores.kube_annotations import (DEFAULT_PREFIX, AnnotationNames, NodeTracker, annotation_patch,
                               network_available_patch, pod_cidrs)
from flannel_ext._stores.lease import Lease

log = logging.getLogger(__name__)

SMP = "application/strategic-merge-patch+json"
_RETRYABLE = {409, 429, 500, 502, 503, 504}
# What a request can raise besides ApiException: refused, reset, timed out, garbled.
_NET_ERRORS = (urllib3.exceptions.HTTPError, OSError, ValueError)


class PodCIDRNotAssigned(StoreError):
    """The node has no spec.podCIDR yet (kube-controller-manager assigns it); retry acquire."""

    temporary = True   # the runtime's start-up retry looks at this


def api_client(kubeconfig: str | None = None, api_url: str | None = None) -> client.ApiClient:
    """flannel's BuildConfigFromFlags: a kubeconfig file, else `api_url` alone, else in-cluster."""
    cfg = client.Configuration()
    try:
        if kubeconfig:
            kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg,
                                         persist_config=False)
        elif not api_url:
            kube_config.load_incluster_config(client_configuration=cfg)
    except (kube_config.ConfigException, OSError, ValueError) as exc:
        raise StoreError(f"fail to create kubernetes config: {exc}; pass --kubeconfig-file, or run "
                         "in a pod with a service account (KUBERNETES_SERVICE_HOST set)") from None
    if api_url:
        cfg.host = api_url.rstrip("/")
    return client.ApiClient(cfg)


def resolve_node_name(v1: client.CoreV1Api, node_name: str | None, env: Mapping[str, str]) -> str:
    """`node_name`, else NODE_NAME, else spec.nodeName of the pod POD_NAMESPACE/POD_NAME."""
    if node_name or env.get("NODE_NAME"):
        return node_name or env["NODE_NAME"]
    pod, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
    if not pod or not namespace:
        raise StoreError("env variables POD_NAME and POD_NAMESPACE must be set; set NODE_NAME to this "
                         "node's name, or POD_NAME/POD_NAMESPACE from the downward API (fieldRef)")
    try:
        obj = json.loads(v1.read_namespaced_pod(pod, namespace, _preload_content=False).data)  # type: ignore[attr-defined]  # raw urllib3 response
    except client.ApiException as exc:
        raise StoreError(f"error retrieving pod spec for '{namespace}/{pod}': "
                         f"{exc.status} {exc.reason}") from None
    except _NET_ERRORS as exc:
        raise StoreError(f"error retrieving pod spec for '{namespace}/{pod}': {exc}") from None
    name = (obj.get("spec") or {}).get("nodeName")
    if not name:
        raise StoreError(f"node name not present in pod spec '{namespace}/{pod}'")
    return name


class KubeStore:
    """LeaseStore on Kubernetes Node objects, as flannel's `--kube-subnet-mgr`."""

    def __init__(self, api: client.ApiClient, node_name: str, *, annotation_prefix: str = DEFAULT_PREFIX,
                 enable_ipv4: bool = True, enable_ipv6: bool = False,
                 set_node_network_unavailable: bool = True, poll_interval: float = 1.0,
                 acquire_timeout: float = 30.0, request_timeout: float = 30.0, heartbeat: float = 1.0,
                 watch_timeout: int = 60, resync: float = 300.0, backoff_max: float = 5.0):
        self.names = AnnotationNames.from_prefix(annotation_prefix)
        self.node_name = node_name
        # Kube mode has no store-side config; acquire() takes these from the net-conf.
        self.enable_ipv4, self.enable_ipv6 = enable_ipv4, enable_ipv6
        self.set_node_network_unavailable = set_node_network_unavailable
        self.poll_interval, self.acquire_timeout = poll_interval, acquire_timeout
        self.request_timeout, self.heartbeat = request_timeout, heartbeat
        self.watch_timeout, self.resync, self.backoff_max = int(watch_timeout), resync, backoff_max
        self._api = api
        self._v1 = client.CoreV1Api(api)
        self._closed = threading.Event()
        self._last_list: tuple[int, NodeTracker] | None = None
        self._watches: set[Watch] = set()
        self._streams: dict[Watch, kube_watch.Watch] = {}

    @classmethod
    def from_options(cls, kubeconfig: str | None = None, api_url: str | None = None,
                     annotation_prefix: str = DEFAULT_PREFIX, node_name: str | None = None,
                     env: Mapping[str, str] | None = None, **options) -> KubeStore:
        """Connect as flanneld does (Documentation/flanneld.md); `options` go to the constructor."""
        AnnotationNames.from_prefix(annotation_prefix)   # a bad flag fails before any I/O
        api = api_client(kubeconfig, api_url)
        try:
            name = resolve_node_name(client.CoreV1Api(api), node_name, os.environ if env is None else env)
            return cls(api, name, annotation_prefix=annotation_prefix, **options)
        except BaseException:
            api.close()
            raise

    # -- LeaseStore --------------------------------------------------------------------
    def network_config(self) -> str | None:
        return None   # kube mode reads net-conf.json from a file, never from the API

    def acquire(self, request: AcquireRequest) -> Lease:
        cfg = request.config
        self.enable_ipv4, self.enable_ipv6 = cfg.enable_ipv4, cfg.enable_ipv6
        node = self._wait_for_pod_cidr()
        try:
            v4, v6 = pod_cidrs(node)
        except ValueError as exc:
            raise StoreError(f"node {self.node_name!r}: bad spec.podCIDRs: {exc}") from None
        # Not transient: a ConfigError, so the runtime stops instead of retrying.
        fix = "make it cover kube-controller-manager's --cluster-cidr"
        if self.enable_ipv4 and (v4 is None or cfg.network is None or not v4.subnet_of(cfg.network)):
            raise ConfigError(cfg.source, "Network", None, f'subnet "{cfg.network}" specified in the flannel '
                              f'net config doesn\'t contain "{v4}" PodCIDR of the "{self.node_name}" node', fix)
        if self.enable_ipv6 and v6 is not None and (cfg.ipv6_network is None
                                                    or not v6.subnet_of(cfg.ipv6_network)):
            raise ConfigError(cfg.source, "IPv6Network", None, f'subnet "{cfg.ipv6_network}" specified in '
                              f'the flannel net config doesn\'t contain "{v6}" IPv6 PodCIDR of the '
                              f'"{self.node_name}" node', fix)
        patch = annotation_patch(node, self.names, request.attrs)
        if patch:
            self._patch_status({"metadata": {"annotations": patch}}, "annotate")
        if self.set_node_network_unavailable:
            # flannel does this in CompleteLease; the lease is complete here (no renewal).
            self._patch_status(network_available_patch(), "set NetworkUnavailable=False on")
        return Lease(subnet=v4 if self.enable_ipv4 else None, attrs=request.attrs,
                     ipv6_subnet=v6 if self.enable_ipv6 else None, expiration=None)

    def renew(self, lease: Lease, ttl: float = DEFAULT_TTL) -> Lease:
        return lease   # a PodCIDR never expires (flannel: RenewLease is unimplemented)

    def release(self, lease: Lease) -> None:
        # flannel never removes its annotations: the PodCIDR stays with the node, and a
        # restart must not make every other node see REMOVED then ADDED.
        log.debug("kube store: release of %s is a no-op (node annotations are kept)", lease.key)

    def list(self) -> Snapshot:
        nodes, revision = self._list_nodes()
        tracker = self._tracker()
        events = tracker.diff(nodes)
        self._last_list = (revision, copy.deepcopy(tracker))
        return Snapshot(leases=[e.lease for e in events if e.lease is not None], revision=revision,
                        rejected=[e for e in events if e.lease is None])

    def watch(self, revision: int, sink: EventSink) -> Watch:
        # Continue from the matching list(); otherwise start blank, so a resync or DELETED
        # still produces correct (if repeated) events.
        last = self._last_list
        tracker = copy.deepcopy(last[1]) if last and last[0] == revision else self._tracker()
        watch = Watch(f"kube-watch-{self.node_name}", lambda w: self._pump(tracker, revision, w), sink)
        self._watches.add(watch)
        watch.on_close(lambda: self._halt(watch))
        return watch.start()

    def close(self) -> None:
        self._closed.set()
        for watch in list(self._watches):
            watch.close()
        self._api.close()

    # -- internals ---------------------------------------------------------------------
    def _tracker(self) -> NodeTracker:
        return NodeTracker(self.names, self.enable_ipv4, self.enable_ipv6)

    def _halt(self, watch: Watch) -> None:
        self._watches.discard(watch)
        stream = self._streams.get(watch)
        if stream is not None:
            stream.stop()   # shuts the socket down, so a blocked read returns now

    def _list_nodes(self) -> tuple[builtins.list[dict], int]:
        try:
            resp = self._v1.list_node(_preload_content=False, _request_timeout=self.request_timeout)
            body = json.loads(resp.data)  # type: ignore[attr-defined]  # raw urllib3 response
            return body.get("items") or [], int(body["metadata"]["resourceVersion"])
        except client.ApiException as exc:
            raise StoreError(f"listing nodes failed: {exc.status} {exc.reason}") from None
        except _NET_ERRORS as exc:
            raise StoreError(f"listing nodes failed: {exc}") from None

    def _read_node(self) -> dict | None:
        try:
            resp = self._v1.read_node(self.node_name, _preload_content=False,
                                      _request_timeout=self.request_timeout)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)  # type: ignore[attr-defined]  # raw urllib3 response

    def _wait_for_pod_cidr(self) -> dict:
        """Poll the node until it exists with a spec.podCIDR, for at most acquire_timeout."""
        deadline = time.monotonic() + self.acquire_timeout
        node, error = None, None
        while True:
            try:
                node, error = self._read_node(), None
            except (client.ApiException, *_NET_ERRORS) as exc:   # transient while polling
                error = exc
            if node is not None and (node.get("spec") or {}).get("podCIDR"):
                return node
            if time.monotonic() >= deadline or self._closed.wait(self.poll_interval):
                break
        if error is not None:
            raise StoreError(f"reading node {self.node_name!r} failed: {error}")
        if node is None:
            raise StoreError(f'node "{self.node_name}" not found; set NODE_NAME to the Kubernetes '
                             "node name (kubectl get nodes)")
        raise PodCIDRNotAssigned(f'node "{self.node_name}" pod cidr not assigned; run '
                                 "kube-controller-manager with --allocate-node-cidrs=true "
                                 "--cluster-cidr=<Network>, or set spec.podCIDR")

    def _patch_status(self, body: dict, what: str) -> None:
        """Strategic-merge PATCH nodes/<n>/status, retried on transient errors as flannel does."""
        deadline = time.monotonic() + self.acquire_timeout
        while True:
            try:
                self._v1.patch_node_status(self.node_name, body, _content_type=SMP,
                                           _preload_content=False, _request_timeout=self.request_timeout)
                return
            except client.ApiException as exc:
                error, fatal = f"{exc.status} {exc.reason}", exc.status not in _RETRYABLE
                if exc.status == 403:
                    error += " (the service account needs `patch` on nodes/status)"
            except _NET_ERRORS as exc:
                error, fatal = str(exc), False
            if fatal or time.monotonic() >= deadline or self._closed.wait(self.poll_interval):
                raise StoreError(f"failed to {what} node {self.node_name!r}: {error}")
            log.warning("kube store: %s node %s failed (retrying): %s", what, self.node_name, error)

    def _pump(self, tracker: NodeTracker, revision: int, watch: Watch) -> None:
        """The watch thread: list/watch/diff into the sink until the watch is closed."""
        done = lambda: watch.closing.is_set() or self._closed.is_set()  # noqa: E731
        rv, relist, delay = revision, False, 0.0
        next_resync = time.monotonic() + self.resync
        while not done():
            try:
                if relist or time.monotonic() >= next_resync:
                    nodes, rv = self._list_nodes()
                    watch.deliver(tracker.diff(nodes))
                    relist, next_resync = False, time.monotonic() + self.resync
                rv = self._watch_once(tracker, rv, watch, done, next_resync)
                delay = 0.0
            except client.ApiException as exc:
                relist = True
                if exc.status != 410:   # 410 Gone: history compacted, re-list at once
                    delay = self._backoff(delay)
                    log.warning("kube store: watching nodes failed: %s %s", exc.status, exc.reason)
            except Exception as exc:   # connection and decode errors; keep the thread alive
                relist, delay = True, self._backoff(delay)
                if not done():
                    log.warning("kube store: watching nodes failed: %s", exc)
            if delay and not done():
                watch.closing.wait(delay)

    def _backoff(self, delay: float) -> float:
        return min(max(delay * 2, 0.1), self.backoff_max)

    def _watch_once(self, tracker: NodeTracker, rv: int, watch: Watch, done: Callable[[], bool],
                    next_resync: float) -> int:
        """One server-side-timed watch from `rv`; returns the last resourceVersion seen."""
        stream = kube_watch.Watch()
        self._streams[watch] = stream
        try:
            if done():
                return rv
            for event in stream.stream(self._v1.list_node, resource_version=str(rv),
                                       timeout_seconds=self.watch_timeout,
                                       _request_timeout=(self.request_timeout, self.watch_timeout + 30)):
                if done():
                    break
                obj = event["raw_object"]
                rv = int((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if event["type"] in ("ADDED", "MODIFIED"):
                    events = tracker.update(obj)
                elif event["type"] == "DELETED":
                    events = tracker.delete(obj)
                else:
                    events = []   # BOOKMARK: only the resourceVersion matters
                watch.deliver(events)
                if time.monotonic() >= next_resync:
                    break
        finally:
            self._streams.pop(watch, None)
        return rv
