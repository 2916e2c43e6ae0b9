"""Faults a real daemon must survive: a remove that gives up never strands the add of newer
data, a hook printing 100 MB leaves the daemon's memory alone, and SIGTERM during the
start-up retries is honoured with ShutdownCommand run."""
from __future__ import annotations

import json
import signal

from flannel_ext._util.netns import in_ns, sh
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import NodeDaemon, routes, wait_for

OWN_RANGE = {"SubnetMin": "10.81.200.0", "SubnetMax": "10.81.250.0"}
VALUE = '{"PublicIP":"192.168.77.%d","PublicIPv6":null,"BackendType":"extension"}'
HOST_GW = {"SubnetAddCommand": 'ip route add "$SUBNET" via "$PUBLIC_IP" dev eth0',
           "SubnetRemoveCommand": 'ip route del "$SUBNET" via "$PUBLIC_IP" dev eth0'}


def start_node(underlay, netns_prefix, tmp_path, daemons, backend: dict, *extra: str, wait=True):
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps({"Network": "10.81.0.0/16", **OWN_RANGE,
                                "Backend": {"Type": "extension", **backend}}))
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    node = NodeDaemon(ns, conf, f"sqlite:{tmp_path}/leases.db", tmp_path, extra=extra)
    daemons.append(node)
    node.start(wait=wait)
    return node


def route_via(ns: str, dst: str) -> str | None:
    return next((r.get("gateway") for r in routes(ns) if r.get("dst") == dst), None)


def test_a_remove_that_gives_up_never_strands_the_add(underlay, netns_prefix, tmp_path, daemons):
    node = start_node(underlay, netns_prefix, tmp_path, daemons, HOST_GW,
                      "--hook-retries", "2", "--hook-backoff", "0.1")
    store = SqliteStore(str(tmp_path / "leases.db"))
    try:
        store.put_raw("10.81.5.0-24", VALUE % 20)
        wait_for(lambda: route_via(node.ns, "10.81.5.0/24") == "192.168.77.20", timeout=20)
        sh(in_ns(node.ns, ["ip", "route", "del", "10.81.5.0/24"]))      # by hand
        store.put_raw("10.81.5.0-24", VALUE % 21)                       # a new PublicIP
        wait_for(lambda: route_via(node.ns, "10.81.5.0/24") == "192.168.77.21", timeout=20)
    finally:
        store.close()
    log = node.log()
    assert "giving up on remove 10.81.5.0-24" in log
    wait_for(lambda: node.stats().get("hook_giveups") == {"SubnetRemoveCommand": 1})


def _memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def test_a_hook_printing_100_mb_leaves_the_daemons_memory_alone(underlay, netns_prefix, tmp_path, daemons):
    add = 'head -c 100000000 /dev/zero | tr "\\0" x; echo; echo done >> added'
    node = start_node(underlay, netns_prefix, tmp_path, daemons, {"SubnetAddCommand": add})
    before = _memory_kib(node.proc.pid)
    store = SqliteStore(str(tmp_path / "leases.db"))
    try:
        store.put_raw("10.81.6.0-24", VALUE % 22)
        wait_for(lambda: node.stats().get("hook_calls", {}).get("SubnetAddCommand") == 1, timeout=60)
    finally:
        store.close()
    after = _memory_kib(node.proc.pid)
    # Peak resident memory over the whole call grew by less than 16 MiB (the output is 95 MiB).
    assert after["VmHWM"] - before["VmHWM"] < 16 * 1024, (before, after)
    assert "output='xxxx" in node.log()     # the trace still shows (the tail of) what it printed


def test_sigterm_during_start_up_retries_runs_shutdown(underlay, netns_prefix, tmp_path, daemons):
    backend = {"PreStartupCommand": "echo tried >> pre.tries; exit 1",
               "ShutdownCommand": "echo ran > shutdown.ran"}
    node = start_node(underlay, netns_prefix, tmp_path, daemons, backend,
                      "--startup-retries", "100", "--hook-backoff", "600", wait=False)
    wait_for(lambda: "retrying in" in node.log(), timeout=20)
    node.signal(signal.SIGTERM)
    assert node.proc.wait(20) == 0            # a bound for a hang: the backoff was 600 s
    assert (node.state_dir / "shutdown.ran").read_text() == "ran\n"
    assert (node.state_dir / "pre.tries").read_text() == "tried\n"
    assert "Traceback" not in node.log()
