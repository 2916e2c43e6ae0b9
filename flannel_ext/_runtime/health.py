"""`--healthz-port`: flannel's /healthz and /readyz, plus Prometheus /metrics.

Semantics follow flanneld (see Documentation/migrating-from-flannel.md): /healthz is 200 ``flanneld is running`` as
long as the process serves HTTP; /readyz is 200 ``flanneld is ready`` once subnet.env is
written (``NodeStats.ready``) and 503 before, or while a daemon thread reports a problem
(``NodeStats.problems``: the body names it). /metrics is rendered at scrape time from
the same `NodeStats`, through a private registry, so several servers (tests, the lab's
nodes in one process) never collide in prometheus_client's global registry. The hook
duration histogram counts the calls made while the server runs (`run` starts it before
the first hook).
"""
from __future__ import annotations

import bisect
import itertools
import platform
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from flannel_ext._version import __version__
from flannel_ext._util.errors import ConfigError
from flannel_ext._runtime.stats import HookCall, NodeStats


# Hook durations span a millisecond (an `ip route` in a batch) to the 30 s default timeout.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HookDurations:
    """A histogram of hook call durations by hook, fed by a `NodeStats` monitor (so the
    runtime layer needs no metrics library)."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS):
        self.buckets = buckets
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}     # hook -> calls per bucket (not cumulative)
        self._sums: dict[str, float] = {}

    def observe(self, call: HookCall) -> None:
        index = bisect.bisect_left(self.buckets, call.duration)   # le: a value on a bound counts there
        with self._lock:
            counts = self._counts.setdefault(call.hook, [0] * (len(self.buckets) + 1))
            counts[index] += 1
            self._sums[call.hook] = self._sums.get(call.hook, 0.0) + call.duration

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("flannel_ext_hook_duration_seconds",
                                       "Hook call durations in seconds, by hook.", labels=["hook"])
        with self._lock:
            for hook in sorted(self._counts):
                cumulative = list(itertools.accumulate(self._counts[hook]))
                bounds = [repr(b) for b in self.buckets] + ["+Inf"]
                family.add_metric([hook], list(zip(bounds, cumulative, strict=True)), self._sums[hook])
        return family


class StatsCollector:
    """A prometheus_client collector that reads a `NodeStats` on every scrape."""

    def __init__(self, stats: NodeStats, durations: HookDurations | None = None):
        self.stats = stats
        self.durations = durations or HookDurations()

    def collect(self):
        info = GaugeMetricFamily("flannel_ext_build_info", "flannel-ext's version (the value is always 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield self.durations.family()
        snap = self.stats.snapshot()    # one consistent copy under the stats lock
        families = [
            ("flannel_ext_hook_calls", "Hook calls, by flannel hook name.", "hook_calls"),
            ("flannel_ext_hook_failures", "Hook calls that failed, by hook.", "hook_failures"),
            ("flannel_ext_hook_giveups", "Changes whose retries gave up, by hook.", "hook_giveups"),
        ]
        for name, doc, key in families:
            family = CounterMetricFamily(name, doc, labels=["hook"])
            for hook, value in sorted(snap[key].items()):
                family.add_metric([hook], value)
            yield family
        rejected = CounterMetricFamily("flannel_ext_leases_rejected",
                                       "Leases the store could not use, by reason.", labels=["reason"])
        for reason, value in sorted(snap["rejected"].items()):
            rejected.add_metric([reason], value)
        yield rejected
        yield GaugeMetricFamily("flannel_ext_leases_known", "Remote leases currently known.",
                                value=snap["leases_known"])
        yield GaugeMetricFamily("flannel_ext_retries_pending", "Failed hook calls waiting for a retry.",
                                value=snap["retries_pending"])
        yield GaugeMetricFamily("flannel_ext_ready", "1 when /readyz answers 200.",
                                value=1 if snap["ready"] else 0)
        yield GaugeMetricFamily("flannel_ext_state_write_error",
                                "1 while the state dir cannot be written (retried with backoff).",
                                value=1 if snap["state_write_error"] else 0)
        last = GaugeMetricFamily("flannel_ext_last_reconcile_timestamp_seconds",
                                 "UNIX time of the last finished reconcile (absent before the first).")
        if snap["last_reconcile"] is not None:
            last.add_metric([], snap["last_reconcile"])
        yield last


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, b"flanneld is running")
        elif path == "/readyz":
            if self.server.stats.is_ready():
                self._reply(200, b"flanneld is ready")
            else:
                reason = self.server.stats.not_ready_reason()
                self._reply(503, f"flanneld is not ready: {reason}".encode())
        elif path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        else:
            self._reply(404, b"404 page not found")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # probes every few seconds: keep the log quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, stats: NodeStats):
        self.stats = stats
        self.durations = HookDurations()
        self.stop_observing = stats.add_monitor(self.durations.observe)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(stats, self.durations))
        if ":" in address[0]:        # --healthz-ip may be an IPv6 address
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class HealthServer:
    """Serve /healthz, /readyz and /metrics for `stats` on host:port (port 0 = any free port)."""

    def __init__(self, stats: NodeStats, host: str = "0.0.0.0", port: int = 0):
        self.stats, self.host, self._port = stats, host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one once started with port 0)."""
        return self._server.server_address[1] if self._server else self._port

    def start(self) -> HealthServer:
        if self._server:
            return self
        try:
            self._server = _Server((self.host, self._port), self.stats)
        except OSError as exc:
            raise ConfigError("--healthz-port", None, f"{self.host}:{self._port}",
                              f"cannot listen: {exc.strerror}",
                              "pick a free port or stop what holds it") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="healthz",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._server:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.stop_observing()
        if self._thread:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
