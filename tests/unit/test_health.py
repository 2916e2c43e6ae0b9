"""The health server over real HTTP on 127.0.0.1: flannel's probes and /metrics."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannel_ext._util.errors import ConfigError
from flannel_ext._runtime.health import HealthServer
from flannel_ext._runtime.stats import HookCall, NodeStats


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict:
    """{(sample name, labels as a sorted tuple): value}, from the real Prometheus parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def served():
    stats = NodeStats()
    server = HealthServer(stats, host="127.0.0.1", port=0).start()
    yield stats, server
    server.stop()


def test_healthz_and_readyz_follow_flannel(served):
    stats, server = served
    assert server.port > 0
    assert get(server, "/healthz")[::2] == (200, "flanneld is running")
    assert get(server, "/readyz")[0] == 503
    stats.ready = True      # subnet.env written
    assert get(server, "/readyz")[::2] == (200, "flanneld is ready")
    assert get(server, "/nope")[0] == 404


def test_metrics_count_a_failing_hook_and_a_rejected_lease(served):
    stats, server = served
    before = samples(get(server, "/metrics")[2])
    assert before[("flannel_ext_leases_known", ())] == 0
    assert not any(name == "flannel_ext_hook_calls_total" for name, _ in before)
    assert not any(name == "flannel_ext_last_reconcile_timestamp_seconds" for name, _ in before)

    stats.record_call(HookCall("SubnetAddCommand", "10.5.1.0-24", True, 0, 0.25))
    stats.record_call(HookCall("SubnetAddCommand", "10.5.2.0-24", False, 1, 0.5, error="boom"))
    stats.record_call(HookCall("PreStartupCommand", "", True, 0, 0.125))
    stats.record_rejected("bad-public-ip")
    stats.record_rejected("bad-public-ip")
    stats.record_rejected("unparsable-key")
    stats.leases_known, stats.retries_pending = 3, 1
    stats.last_reconcile = 1700000000.5

    status, ctype, text = get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=")
    got = samples(text)
    add, pre = (("hook", "SubnetAddCommand"),), (("hook", "PreStartupCommand"),)
    assert got[("flannel_ext_hook_calls_total", add)] == 2
    assert got[("flannel_ext_hook_failures_total", add)] == 1
    assert got[("flannel_ext_hook_duration_seconds_sum", add)] == pytest.approx(0.75)
    assert got[("flannel_ext_hook_calls_total", pre)] == 1
    assert ("flannel_ext_hook_failures_total", pre) not in got
    assert got[("flannel_ext_leases_rejected_total", (("reason", "bad-public-ip"),))] == 2
    assert got[("flannel_ext_leases_rejected_total", (("reason", "unparsable-key"),))] == 1
    assert got[("flannel_ext_leases_known", ())] == 3
    assert got[("flannel_ext_retries_pending", ())] == 1
    assert got[("flannel_ext_ready", ())] == 0
    assert got[("flannel_ext_last_reconcile_timestamp_seconds", ())] == 1700000000.5
    assert "# TYPE flannel_ext_hook_calls_total counter" in text


def test_servers_do_not_share_a_registry():
    a, b = NodeStats(), NodeStats()
    a.record_rejected("x")
    with HealthServer(a, "127.0.0.1") as sa, HealthServer(b, "127.0.0.1") as sb:
        assert ("flannel_ext_leases_rejected_total", (("reason", "x"),)) in samples(get(sa, "/metrics")[2])
        assert ("flannel_ext_leases_rejected_total", (("reason", "x"),)) not in samples(get(sb, "/metrics")[2])


def test_stop_releases_the_port_and_a_busy_port_is_a_config_error(served):
    stats, server = served
    port = server.port
    with pytest.raises(ConfigError, match="cannot listen"):
        HealthServer(stats, "127.0.0.1", port).start()
    server.stop()
    with socket.create_server(("127.0.0.1", port)):   # free again
        pass
    server.stop()                                     # idempotent


def test_hook_duration_histogram_and_build_info(served):
    stats, server = served
    for duration in (0.004, 0.05, 0.05, 0.7, 45.0):
        stats.record_call(HookCall("SubnetAddCommand", "10.5.1.0-24", True, 0, duration))
    text = get(server, "/metrics")[2]
    assert "# TYPE flannel_ext_hook_duration_seconds histogram" in text
    got = samples(text)
    add = ("hook", "SubnetAddCommand")

    def bucket(le):
        return got[("flannel_ext_hook_duration_seconds_bucket", tuple(sorted([add, ("le", le)])))]
    assert [bucket(le) for le in ("0.001", "0.005", "0.05", "0.1", "1.0", "30.0", "60.0", "+Inf")] == \
        [0, 1, 3, 3, 4, 4, 5, 5]
    assert got[("flannel_ext_hook_duration_seconds_count", (add,))] == 5
    assert got[("flannel_ext_hook_duration_seconds_sum", (add,))] == pytest.approx(45.804)
    from flannel_ext import __version__
    info = [k for k in got if k[0] == "flannel_ext_build_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == __version__ and got[info[0]] == 1
