"""A failing hook is retried with backoff; a hanging hook is killed at the
timeout and the other subnets proceed."""
from __future__ import annotations

import json
import pathlib
import subprocess

from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import NodeDaemon, routes, wait_for

# The daemon takes its own lease from here, never one of the keys the test writes.
OWN_RANGE = {"SubnetMin": "10.80.200.0", "SubnetMax": "10.80.250.0"}

VALUE = '{"PublicIP":"192.168.77.%d","PublicIPv6":null,"BackendType":"extension"}'


def node_with(underlay, netns_prefix, tmp_path, daemons, add_command, *extra):
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps({"Network": "10.80.0.0/16", **OWN_RANGE, "Backend": {
        "Type": "extension", "SubnetAddCommand": add_command}}))
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    node = NodeDaemon(ns, conf, f"sqlite:{tmp_path}/leases.db", tmp_path, extra=extra)
    daemons.append(node)
    node.start()
    return node, SqliteStore(str(tmp_path / "leases.db"))


def has_route(ns, dst):
    return any(r.get("dst") == dst for r in routes(ns))


def test_fails_twice_then_succeeds(underlay, netns_prefix, tmp_path, daemons):
    add = ('f="tries.$(printf %s "$SUBNET" | tr / _)"; n=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 )); '
           'echo $n > "$f"; [ $n -ge 3 ] || { echo "flaky $n" >&2; exit 1; }; '
           'ip route replace "$SUBNET" via "$PUBLIC_IP"')
    node, store = node_with(underlay, netns_prefix, tmp_path, daemons, add)
    try:
        store.put_raw("10.80.5.0-24", VALUE % 20)
    finally:
        store.close()
    wait_for(lambda: has_route(node.ns, "10.80.5.0/24"), timeout=20)
    assert (node.state_dir / "tries.10.80.5.0_24").read_text().strip() == "3"
    wait_for(lambda: node.stats().get("hook_calls", {}).get("SubnetAddCommand") == 3)
    assert node.stats()["hook_failures"]["SubnetAddCommand"] == 2
    assert "retrying in" in node.log()


def test_hanging_hook_times_out_and_others_proceed(underlay, netns_prefix, tmp_path, daemons):
    add = ('case "$SUBNET" in 10.80.7.0/24) exec sleep 1000 ;; esac; '
           'ip route replace "$SUBNET" via "$PUBLIC_IP"')
    node, store = node_with(underlay, netns_prefix, tmp_path, daemons, add,
                            "--hook-timeout", "2", "--hook-retries", "1")
    try:
        store.put_raw("10.80.7.0-24", VALUE % 21)
        store.put_raw("10.80.8.0-24", VALUE % 22)
        wait_for(lambda: has_route(node.ns, "10.80.8.0/24"), timeout=10)
        store.put_raw("10.80.9.0-24", VALUE % 23)  # arrives while the hang is in progress
    finally:
        store.close()
    wait_for(lambda: has_route(node.ns, "10.80.9.0/24"), timeout=10)
    wait_for(lambda: "timed out after 2s" in node.log(), timeout=10)
    assert not has_route(node.ns, "10.80.7.0/24")
    # The hanging command's process group was killed: no sleep left in the namespace.
    pids = subprocess.run(["ip", "netns", "pids", node.ns], capture_output=True, text=True).stdout.split()
    cmdlines = []
    for pid in pids:
        try:
            cmdlines.append(pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        except OSError:
            pass
    assert not any(c.startswith(b"sleep 1000") for c in cmdlines), cmdlines


def test_startup_failure_retries_then_exits_3(underlay, netns_prefix, tmp_path):
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps({"Network": "10.80.0.0/16", **OWN_RANGE, "Backend": {
        "Type": "extension", "PostStartupCommand": "echo tried >> post.tries; echo 'no wg module' >&2; exit 1"}}))
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    node = NodeDaemon(ns, conf, f"sqlite:{tmp_path}/leases.db", tmp_path, extra=["--startup-retries", "3"])
    node.start(wait=False)
    assert node.proc.wait(30) == 3
    assert (node.state_dir / "post.tries").read_text().count("tried") == 3
    log = node.log()
    assert "PostStartupCommand failed after 3 attempt(s)" in log and "no wg module" in log
    assert "Traceback" not in log


def test_changed_data_removes_old_then_adds_new(underlay, netns_prefix, tmp_path, daemons):
    rec = 'read D; echo "%s $SUBNET $PUBLIC_IP $D" >> calls'
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps({"Network": "10.80.0.0/16", **OWN_RANGE, "Backend": {
        "Type": "extension", "SubnetAddCommand": rec % "add", "SubnetRemoveCommand": rec % "remove"}}))
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    node = NodeDaemon(ns, conf, f"sqlite:{tmp_path}/leases.db", tmp_path)
    daemons.append(node)
    node.start()
    store = SqliteStore(str(tmp_path / "leases.db"))
    calls = node.state_dir / "calls"
    value = '{"PublicIP":"192.168.77.%d","PublicIPv6":null,"BackendType":"extension","BackendData":"%s"}'
    try:
        store.put_raw("10.80.5.0-24", value % (20, "old-key"))
        wait_for(lambda: calls.exists() and len(calls.read_text().splitlines()) == 1)
        store.put_raw("10.80.5.0-24", value % (20, "old-key"))   # a renewal: no change, no hook
        store.put_raw("10.80.5.0-24", value % (21, "new-key"))   # changed PublicIP and data
        wait_for(lambda: len(calls.read_text().splitlines()) == 3)
    finally:
        store.close()
    assert calls.read_text().splitlines() == [
        "add 10.80.5.0/24 192.168.77.20 old-key",
        "remove 10.80.5.0/24 192.168.77.20 old-key",
        "add 10.80.5.0/24 192.168.77.21 new-key",
    ]
