"""etcd's JSON gateway: endpoint failover, auth, and the `/v3/watch` stream.

Unary calls go through etcd3gw's `Etcd3Client.post` (it discovers `/v3/` vs `/v3beta/`
and maps HTTP errors); we call the gateway paths ourselves because etcd3gw drops the
response header revision from `get`. The watch is our own: etcd3gw's Watcher gives no
compaction or cancel information, no error on disconnect and has no way to unblock it.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw import exceptions as etcd3gw_exc

from flannel_ext._util.errors import ConfigError, StoreError

DEFAULT_PORT = 2379
# Errors after which another endpoint may do better (503 "no leader" maps to the first).
_FAILOVER = (etcd3gw_exc.ConnectionFailedError, etcd3gw_exc.ConnectionTimeoutError,
             etcd3gw_exc.ApiVersionDiscoveryFailedError)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix` (etcdctl --prefix)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def parse_endpoints(url: str, *, tls: bool = False) -> list[tuple[str, str, int]]:
    """`etcd://h:p[,h:p]` or flanneld's `http(s)://h:p,http(s)://h:p` -> [(scheme, host, port)]."""
    text = url.strip()
    default = "https" if tls else "http"
    if text.startswith("etcd://"):
        text = text[len("etcd://"):]
    endpoints: list[tuple[str, str, int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "://" not in item:
            item = f"{endpoints[0][0] if endpoints else default}://{item}"
        parts = urllib.parse.urlsplit(item)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port < 0 or parts.path.strip("/"):
            raise ConfigError("--etcd-endpoints", None, item, "not an etcd endpoint",
                              "use etcd://host:port[,host:port] or http(s)://host:port[,...]")
        endpoints.append((parts.scheme, parts.hostname, port))
    if not endpoints:
        raise ConfigError("--etcd-endpoints", None, url, "no etcd endpoint given")
    return endpoints


class _Session(requests.Session):
    """A session whose `verify` (the --etcd-cafile) survives REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE: requests lets those override a session's verify, which would check
    etcd's certificate against the system bundle instead of the given CA."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str) and verify is None:
            settings["verify"] = self.verify
        return settings


class Gateway:
    """The etcd cluster as JSON-over-HTTP: sticks to one endpoint, fails over on errors."""

    def __init__(self, endpoints: list[tuple[str, str, int]], *, cafile: str | None = None,
                 certfile: str | None = None, keyfile: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0):
        self.session = _Session()
        if cafile:
            self.session.verify = cafile
        if certfile:
            self.session.cert = (certfile, keyfile) if keyfile else certfile
        self.timeout = timeout
        self.clients = [Etcd3Client(host=h, port=p, protocol=s, session=self.session,
                                                   # (connect, read): requests takes the pair
                                                   timeout=(min(2.0, timeout), timeout))  # type: ignore[arg-type]
                        for s, h, p in endpoints]
        self._credentials = (username, password or "") if username else None
        self._tokens: dict[int, str] = {}   # simple auth tokens are per member
        self._current = 0

    @property
    def endpoints(self) -> list[str]:
        return [c.base_url for c in self.clients]

    def _headers(self, idx: int) -> dict:
        if self._credentials is None:
            return {}
        if idx not in self._tokens:
            name, password = self._credentials
            client = self.clients[idx]
            reply = client.post(client.get_url("/auth/authenticate"), json={"name": name, "password": password})
            self._tokens[idx] = reply["token"]
        return {"Authorization": self._tokens[idx]}

    def _order(self) -> list[int]:
        start = self._current
        return [(start + i) % len(self.clients) for i in range(len(self.clients))]

    def call(self, path: str, payload: dict) -> dict:
        """POST one gateway call; fail over across endpoints; raise StoreError."""
        errors = []
        for idx in self._order():
            client = self.clients[idx]
            for attempt in (1, 2):
                try:
                    reply = client.post(client.get_url(path), json=payload, headers=self._headers(idx))
                    self._current = idx
                    return reply
                except _FAILOVER as exc:
                    errors.append(f"{client.base_url}: {_detail(exc)}")
                    break
                except etcd3gw_exc.Etcd3Exception as exc:
                    # An expired auth token: log in again once, then give up.
                    if attempt == 1 and self._credentials and "auth token" in _detail(exc):
                        self._tokens.pop(idx, None)
                        continue
                    raise StoreError(f"etcd {path} at {client.base_url}: {_detail(exc)}") from None
        raise StoreError(f"etcd unreachable ({'; '.join(errors)})")

    def ping(self, timeout: float) -> bool:
        """A cheap read on the current endpoint within `timeout` (a watch liveness probe)."""
        client = self.clients[self._current]
        try:
            resp = self.session.post(client.get_url("/kv/range"), json={"key": b64("/"), "count_only": True},
                                     headers=self._headers(self._current), timeout=timeout)
            resp.close()
            return resp.status_code == 200
        except (requests.RequestException, etcd3gw_exc.Etcd3Exception):
            return False

    def open_stream(self, path: str, payload: dict) -> requests.Response:
        """Open a streaming call (watch). The read timeout covers only the response head."""
        errors = []
        for idx in self._order():
            client = self.clients[idx]
            try:
                resp = self.session.post(client.get_url(path), json=payload, stream=True,
                                         headers=self._headers(idx), timeout=(min(2.0, self.timeout), self.timeout))
            except (requests.RequestException, *_FAILOVER) as exc:
                errors.append(f"{client.base_url}: {_detail(exc)}")
                continue
            if resp.status_code != 200:
                errors.append(f"{client.base_url}: HTTP {resp.status_code} {resp.text[:200]}")
                resp.close()
                continue
            # A quiet watch is normal: no read timeout on the body (liveness is probed instead).
            conn = getattr(resp.raw, "connection", None)
            if conn is not None and getattr(conn, "sock", None) is not None:
                conn.sock.settimeout(None)
            self._current = idx
            return resp
        raise StoreError(f"etcd watch failed ({'; '.join(errors)})")

    def close(self) -> None:
        self.session.close()


def _detail(exc: BaseException) -> str:
    text = getattr(exc, "detail_text", None) or str(exc)   # etcd3gw keeps the body there
    try:
        return json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        return text


class WatchStream:
    """One `/v3/watch` HTTP stream, read by a daemon thread that hands each gateway
    message to `on_message` (which returns False to end the stream).

    `ended` is set when the stream is over (closed, end of stream, an error, or
    `on_message` said so); `error` holds the exception, if any. `close()` shuts the socket
    down, which unblocks the reader at once.
    """

    def __init__(self, gateway: Gateway, key: bytes, range_end: bytes, start_revision: int,
                 on_message: Callable[[dict], bool]):
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.messages = 0
        self.last_activity = time.monotonic()
        self._gateway, self._on_message = gateway, on_message
        self._request = {"create_request": {"key": b64(key), "range_end": b64(range_end),
                                            "start_revision": start_revision}}
        self._resp: requests.Response | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcd-watch-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._resp = self._gateway.open_stream("/watch", self._request)
            if self._closed.is_set():   # closed while we were connecting
                return
            buf = b""
            for chunk in self._resp.iter_content(chunk_size=None):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip() and not self._closed.is_set():
                        self.messages += 1
                        self.last_activity = time.monotonic()
                        if not self._on_message(json.loads(line)):
                            return
        except Exception as exc:  # noqa: BLE001 - any failure ends this stream; the watch reconnects
            self.error = exc
        finally:
            if self._resp is not None:
                self._resp.close()
            self.ended.set()

    def close(self) -> None:
        self._closed.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.raw.shutdown()   # urllib3 >= 2.3: interrupts a blocked read
            except Exception:  # noqa: BLE001 - already closed
                pass
        self.ended.set()
