"""The `kube` policy source: list + watch pods, namespaces and networkpolicies.

One thread per resource keeps a cache of raw objects (the official client's watch, with
``deserialize=False`` so unknown fields reach validation instead of being dropped):
list, then watch from the list's resourceVersion; on 410 Gone (history compacted) list
again at once, on any other error list again after a backoff. Once all three caches are
loaded, every change delivers a whole snapshot (changes arriving together are coalesced);
its generation is the highest resourceVersion seen.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes import watch as kube_watch

from flannel_ext._policy.compute import Cluster
from flannel_ext._stores.kube import api_client
from flannel_ext._util.errors import StoreError

log = logging.getLogger("flannel_ext.policy")
RESOURCES = ("namespaces", "pods", "networkpolicies")
COALESCE = 0.02   # seconds: a burst of events becomes one snapshot


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _rv(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


class KubeSource:
    def __init__(self, api: client.ApiClient, deliver: Callable[[Cluster | Exception], None], *,
                 watch_timeout: int = 300, request_timeout: float = 30.0, backoff_max: float = 5.0):
        self.api, self.deliver = api, deliver
        self.watch_timeout, self.request_timeout, self.backoff_max = watch_timeout, request_timeout, backoff_max
        core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        self._list: dict[str, Callable[..., Any]] = {
            "namespaces": core.list_namespace, "pods": core.list_pod_for_all_namespaces,
            "networkpolicies": net.list_network_policy_for_all_namespaces}
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self._loaded: set[str] = set()
        self._rv = 0
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._streams: dict[str, kube_watch.Watch] = {}
        self._threads: list[threading.Thread] = []
        self.relists = {r: 0 for r in RESOURCES}   # how often each resource was listed

    @classmethod
    def from_options(cls, deliver: Callable[[Cluster | Exception], None], kubeconfig: str | None = None,
                     api_url: str | None = None, **options: Any) -> KubeSource:
        return cls(api_client(kubeconfig, api_url), deliver, **options)

    def start(self) -> None:
        for resource in RESOURCES:
            t = threading.Thread(target=self._pump, args=(resource,), name=f"policy-{resource}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._deliver_loop, name="policy-snapshots", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        for stream in list(self._streams.values()):
            stream.stop()
        for t in self._threads:
            t.join(timeout=5)
        self.api.close()

    def snapshot(self) -> Cluster:
        with self._lock:
            objs = {r: list(self._objects[r].values()) for r in RESOURCES}
            generation = self._rv
        return Cluster.from_objects(generation, objs["namespaces"], objs["pods"], objs["networkpolicies"])

    # -- threads -----------------------------------------------------------------------
    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            self._changed.wait()
            if self._stop.is_set():
                return
            time.sleep(COALESCE)
            self._changed.clear()
            with self._lock:
                ready = len(self._loaded) == len(RESOURCES)
            if ready:
                self.deliver(self.snapshot())

    def _pump(self, resource: str) -> None:
        rv, delay = None, 0.0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(resource)
                rv = self._watch(resource, rv)
                delay = 0.0
            except client.ApiException as exc:
                rv = None
                if exc.status != 410:   # 410 Gone: the history was compacted; re-list now
                    delay = min(max(delay * 2, 0.1), self.backoff_max)
                    self._failed(resource, f"{exc.status} {exc.reason}")
                else:
                    log.info("policy source: %s watch expired (410 Gone); listing again", resource)
            except Exception as exc:  # noqa: BLE001 - connection errors; keep the thread alive
                rv, delay = None, min(max(delay * 2, 0.1), self.backoff_max)
                if not self._stop.is_set():
                    self._failed(resource, str(exc))
            if delay:
                self._stop.wait(delay)

    def _failed(self, resource: str, why: str) -> None:
        """Log, and tell the agent (its status shows it; the last policy stays enforced)."""
        hint = " (the service account needs list and watch on it: manifest --policy)" if why.startswith("403") else ""
        log.warning("policy source: watching %s failed: %s%s", resource, why, hint)
        self.deliver(StoreError(f"kube policy source: watching {resource} failed: {why}{hint}"))

    def _relist(self, resource: str) -> int:
        resp = self._list[resource](_preload_content=False, _request_timeout=self.request_timeout)
        body = json.loads(resp.data)
        rv = _rv((body.get("metadata") or {}).get("resourceVersion"))
        with self._lock:
            self._objects[resource] = {_key(o): o for o in body.get("items") or []}
            self._loaded.add(resource)
            self._rv = max(self._rv, rv)
            self.relists[resource] += 1
        self._changed.set()
        return rv

    def _watch(self, resource: str, rv: int) -> int:
        stream = kube_watch.Watch()
        self._streams[resource] = stream
        try:
            for event in stream.stream(self._list[resource], resource_version=str(rv), deserialize=False,
                                       allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                                       _request_timeout=(self.request_timeout, self.watch_timeout + 30)):
                if self._stop.is_set():
                    break
                obj = event.get("object") or {}
                rv = _rv((obj.get("metadata") or {}).get("resourceVersion")) or rv
                with self._lock:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._objects[resource][_key(obj)] = obj
                    elif event["type"] == "DELETED":
                        self._objects[resource].pop(_key(obj), None)
                    self._rv = max(self._rv, rv)
                if event["type"] != "BOOKMARK":
                    self._changed.set()
        finally:
            self._streams.pop(resource, None)
        return rv
