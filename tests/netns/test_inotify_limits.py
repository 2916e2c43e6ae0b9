"""A node whose inotify instances run out still works: no file events for the store, the
policy file or --watch, so each falls back or turns off with one warning, and the node
serves leases and policy generations all the same.

The daemon runs in its own user and network namespace (`unshare --user --net`), whose
`/proc/sys/user/max_inotify_instances` is set to 0 there: the host's limits are untouched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flannel_ext._config.netconf import parse_netconf
from flannel_ext._stores.base import AcquireRequest
from flannel_ext._stores.lease import LeaseAttrs
from flannel_ext._stores.sqlite import SqliteStore

NET_CONF = {"Network": "10.0.0.0/16", "Backend": {
    "Type": "extension", "SubnetAddCommand": 'echo "$SUBNET" >> added.txt', "SubnetRemoveCommand": "true"}}


def _wait(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status_generation(path: Path) -> int | None:
    try:
        return json.loads(path.read_text()).get("generation")
    except (OSError, ValueError):
        return None


def test_a_node_without_inotify_instances_runs_on(tmp_path):
    net_conf, db, state = tmp_path / "net-conf.json", tmp_path / "store.db", tmp_path / "state"
    cluster = tmp_path / "policy" / "cluster.json"
    net_conf.write_text(json.dumps(NET_CONF))
    cluster.parent.mkdir()
    cluster.write_text(json.dumps({"generation": 1, "namespaces": [], "pods": [], "networkpolicies": []}))
    daemon = [sys.executable, "-m", "flannel_ext", "run", "--net-conf", str(net_conf), "--store", f"sqlite:{db}",
              "--iface", "lo", "--subnet-file", str(tmp_path / "subnet.env"), "--state-dir", str(state),
              "--node-name", "n1", "--watch", "--policy", "nftables", "--policy-source", f"file:{cluster}"]
    script = 'ip link set lo up && echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"'
    proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sh", "-c", script, "sh", *daemon],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: (tmp_path / "subnet.env").exists(), "subnet.env")
        _wait(lambda: _status_generation(state / "policy-status.json") == 1, "policy generation 1")

        # a lease from another node: seen by the store's poll, programmed by the hook
        config = parse_netconf(json.dumps(NET_CONF), "net-conf.json")
        other = SqliteStore(str(db)).acquire(AcquireRequest(
            LeaseAttrs.with_string_data("192.0.2.9", "x"), config, ttl=3600))
        _wait(lambda: str(other.subnet) in (state / "added.txt").read_text()
              if (state / "added.txt").exists() else False, "SubnetAdd for the new lease")

        # a new policy generation: seen by the policy file's poll
        tmp = cluster.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": 2, "namespaces": [], "pods": [], "networkpolicies": []}))
        os.replace(tmp, cluster)
        _wait(lambda: _status_generation(state / "policy-status.json") == 2, "policy generation 2")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    warnings = [line for line in output.splitlines() if "inotify instance limit reached" in line]
    assert len(warnings) == 3, output   # the store, the policy file and --watch: one line each
    assert any("hot reload is off, the node runs on" in line for line in warnings)
