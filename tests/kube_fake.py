"""A small, honest fake of the Kubernetes API server, for the kube lease store.

It serves only what `KubeStore` uses, over real HTTP on 127.0.0.1, so the official
`kubernetes` client is exercised end to end (never monkeypatched):

- ``GET /api/v1/nodes`` (a NodeList with ``metadata.resourceVersion``), and with
  ``watch=true|1`` a chunked stream of ``{"type":..,"object":..}`` lines for events after
  ``resourceVersion`` (absent or "0": synthetic ADDED for every node first), ending
  after ``timeoutSeconds``; a version older than the last `compact()` gets the ERROR
  event with code 410 that the real server sends;
- ``GET /api/v1/nodes/{name}`` and ``GET /api/v1/namespaces/{ns}/pods/{name}``;
- for the policy source, the same list and watch (with 410 after `compact()`) on
  ``/api/v1/pods``, ``/api/v1/namespaces`` and ``/apis/networking.k8s.io/v1/networkpolicies``,
  whose objects tests write with `put()` and `delete()`;
- ``PATCH /api/v1/nodes/{name}/status`` with ``application/strategic-merge-patch+json``
  only (415 otherwise): maps merge (null deletes), ``status.conditions`` merge by
  ``type`` (its strategic merge key), other lists are replaced.

Objects are plain JSON dicts; every write bumps one monotonically increasing
resourceVersion and is logged as a watch event.

Use the `kube_api` fixture: import it into a test module (``from kube_fake import kube_api``;
pytest puts ``tests/`` on sys.path), or build a `FakeKubeAPI(tmp_dir)` and `close()` it.
"""
from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

SMP = "application/strategic-merge-patch+json"
_CREATED = "2024-01-01T00:00:00Z"
# resource → (URL path parts, kind, apiVersion) of the collections served with list and watch
_LISTS = {
    "nodes": (["api", "v1", "nodes"], "Node", "v1"),
    "pods": (["api", "v1", "pods"], "Pod", "v1"),
    "namespaces": (["api", "v1", "namespaces"], "Namespace", "v1"),
    "networkpolicies": (["apis", "networking.k8s.io", "v1", "networkpolicies"], "NetworkPolicy",
                        "networking.k8s.io/v1"),
}


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def strategic_merge(target: dict, patch: dict, path: str = "") -> None:
    """Apply the subset of strategic merge patch that nodes/status needs, in place."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise ValueError(f"unsupported patch directive {key!r}")
        where = f"{path}.{key}" if path else key
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value, where)
        elif where == "status.conditions" and isinstance(value, list):
            merged = list(target.get(key) or [])
            for cond in value:
                old = next((c for c in merged if c.get("type") == cond.get("type")), None)
                if old is None:
                    merged.append(copy.deepcopy(cond))
                else:
                    strategic_merge(old, cond, where + "[]")
            target[key] = merged
        else:
            target[key] = copy.deepcopy(value)


class FakeKubeAPI:
    """The fake's state plus the HTTP server thread. Test helpers mutate it directly."""

    def __init__(self, workdir: Path):
        self._cond = threading.Condition()
        self._rv = 0
        self._floor = 0   # watches from a version below this get 410 Gone
        self._nodes: dict[str, dict] = {}
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in _LISTS if r != "nodes"}
        self._pods = self._objects["pods"]
        self._log: list[tuple[int, str, dict, str]] = []   # (rv, event type, object, resource)
        self._closed = False
        self.patch_log: list[tuple[str, str, bytes]] = []
        self.requests: list[tuple[str, str]] = []   # (method, path with query)
        self.forbidden: set[str] = set()   # resources whose list/watch answer 403 (missing RBAC)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.kubeconfig_path = workdir / "kubeconfig"
        self.kubeconfig_path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # -- helpers for tests -------------------------------------------------------------
    def add_node(self, name: str, pod_cidr: str | None, annotations: dict | None = None,
                 pod_cidrs: list[str] | None = None) -> dict:
        spec = {}
        if pod_cidr:
            spec["podCIDR"] = pod_cidr
            spec["podCIDRs"] = list(pod_cidrs) if pod_cidrs else [pod_cidr]
        node = {"kind": "Node", "apiVersion": "v1",
                "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": _CREATED,
                             "annotations": dict(annotations or {})},
                "spec": spec, "status": {}}
        with self._cond:
            if name in self._nodes:
                raise ValueError(f"node {name} exists")
            self._nodes[name] = node
            self._commit("ADDED", node)
        return self.node(name)

    def update_node(self, name: str, patch: dict) -> dict:
        """Strategic-merge `patch` into the node as another client would (emits MODIFIED)."""
        with self._cond:
            strategic_merge(self._nodes[name], patch)
            self._commit("MODIFIED", self._nodes[name])
        return self.node(name)

    def node(self, name: str) -> dict:
        with self._cond:
            return copy.deepcopy(self._nodes[name])

    def delete_node(self, name: str) -> None:
        with self._cond:
            node = self._nodes.pop(name)
            self._commit("DELETED", node)

    def add_pod(self, namespace: str, name: str, node_name: str) -> None:
        self.put("pods", {"metadata": {"name": name, "namespace": namespace},
                          "spec": {"nodeName": node_name, "containers": []}})

    def put(self, resource: str, obj: dict) -> dict:
        """Create or replace a pod, namespace or networkpolicy (ADDED or MODIFIED event)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        kind, api_version = _LISTS[resource][1:]
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", api_version)
        meta.setdefault("uid", f"uid-{meta.get('namespace', '')}-{meta['name']}")
        meta.setdefault("creationTimestamp", _CREATED)
        key = (meta.get("namespace", ""), meta["name"])
        with self._cond:
            event = "MODIFIED" if key in self._objects[resource] else "ADDED"
            self._objects[resource][key] = obj
            self._commit(event, obj, resource)
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with self._cond:
            obj = self._objects[resource].pop((namespace, name))
            self._commit("DELETED", obj, resource)

    def compact(self) -> None:
        """Forget the event history (as etcd compaction does): older watches get 410."""
        with self._cond:
            self._floor = self._rv
            self._log.clear()

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def watch_count(self) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and "watch=" in p)

    # -- state changes (caller holds the lock) ---------------------------------------
    def _commit(self, kind: str, obj: dict, resource: str = "nodes") -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._log.append((self._rv, kind, copy.deepcopy(obj), resource))
        self._cond.notify_all()

    def _items(self, resource: str) -> list[dict]:
        objects = self._nodes if resource == "nodes" else self._objects[resource]
        return [copy.deepcopy(o) for o in objects.values()]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive and chunked watch streams

    def log_message(self, *args):   # quiet test output
        pass

    @property
    def fake(self) -> FakeKubeAPI:
        return self.server.fake

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what: str) -> None:
        self._send_json(404, _status(404, "NotFound", f"{what} not found"))

    def do_GET(self):
        self.fake.requests.append(("GET", self.path))
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        fake = self.fake
        resource = next((r for r, (path, *_) in _LISTS.items() if parts == path), None)
        if resource is not None:
            if resource in fake.forbidden:
                return self._send_json(403, _status(403, "Forbidden", f"cannot list resource {resource!r}"))
            if query.get("watch") in ("true", "1"):
                return self._watch(query, resource)
            kind, api_version = _LISTS[resource][1:]
            with fake._cond:
                body = {"kind": f"{kind}List", "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(fake._rv)}, "items": fake._items(resource)}
            return self._send_json(200, body)
        if len(parts) == 4 and parts[:3] == ["api", "v1", "nodes"]:
            with fake._cond:
                node = copy.deepcopy(fake._nodes.get(parts[3]))
            return self._send_json(200, node) if node else self._not_found(f'nodes "{parts[3]}"')
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            with fake._cond:
                pod = copy.deepcopy(fake._pods.get((parts[3], parts[5])))
            return self._send_json(200, pod) if pod else self._not_found(f'pods "{parts[5]}"')
        self._not_found(self.path)

    def do_PATCH(self):
        self.fake.requests.append(("PATCH", self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        self.fake.patch_log.append((self.path, ctype, body))
        parts = urlsplit(self.path).path.strip("/").split("/")
        if not (len(parts) == 5 and parts[:3] == ["api", "v1", "nodes"] and parts[4] == "status"):
            return self._not_found(self.path)
        if ctype != SMP:
            return self._send_json(415, _status(415, "UnsupportedMediaType",
                                                f"the fake only serves {SMP}, got {ctype!r}"))
        try:
            patch = json.loads(body)
            if not isinstance(patch, dict):
                raise ValueError("patch is not a JSON object")
        except ValueError as exc:
            return self._send_json(400, _status(400, "BadRequest", str(exc)))
        fake = self.fake
        with fake._cond:
            node = fake._nodes.get(parts[3])
            if node is None:
                return self._not_found(f'nodes "{parts[3]}"')
            try:
                strategic_merge(node, patch)
            except ValueError as exc:
                return self._send_json(400, _status(400, "BadRequest", str(exc)))
            fake._commit("MODIFIED", node)
            result = copy.deepcopy(node)
        self._send_json(200, result)

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, query: dict, resource: str) -> None:
        fake = self.fake
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            with fake._cond:
                since = int(query.get("resourceVersion") or 0)
                if since == 0:   # the real server starts with the current state
                    initial = [{"type": "ADDED", "object": o} for o in fake._items(resource)]
                    since = fake._rv
                elif since < fake._floor:
                    initial = [{"type": "ERROR", "object": _status(
                        410, "Expired", f"too old resource version: {since} ({fake._floor})")}]
                    deadline = 0   # the real server ends the stream after the error
                else:
                    initial = []
            for event in initial:
                self._chunk(event)
            while True:
                with fake._cond:
                    events = [(rv, kind, obj) for rv, kind, obj, res in fake._log
                              if rv > since and res == resource]
                    left = deadline - time.monotonic()
                    if not events and left > 0 and not fake._closed:
                        fake._cond.wait(min(left, 0.5))
                        continue
                for rv, kind, obj in events:
                    self._chunk({"type": kind, "object": obj})
                    since = rv
                if left <= 0 or fake._closed:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True   # the client hung up (Watch.stop)


@pytest.fixture
def kube_api(tmp_path):
    """A running `FakeKubeAPI` with `.url`, `.kubeconfig_path`, `.add_node`, `.node`,
    `.delete_node`, `.update_node`, `.add_pod`, `.put`, `.delete`, `.compact`, `.forbidden` and
    `.patch_log`."""
    fake = FakeKubeAPI(tmp_path)
    yield fake
    fake.close()
