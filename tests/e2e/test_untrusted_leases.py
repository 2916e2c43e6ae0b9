"""No value from another node's lease ever becomes shell code.

Leases carrying shell payloads in PublicIP, the subnet key and BackendData are written
straight into the store. Bad ones are rejected and counted; strings that are valid data
reach the hook only as data (stdin), so the marker file is never created.
"""
from __future__ import annotations

import json

from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import NodeDaemon, wait_for

# The daemon takes its own lease from here, never one of the keys the test writes.
OWN_RANGE = {"SubnetMin": "10.70.200.0", "SubnetMax": "10.70.250.0"}


def payloads(marker: str) -> list[str]:
    return [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}; ", f"\ntouch {marker}\n",
            f"' ; touch {marker} ; '", f'" ; touch {marker} ; "', f"&& touch {marker}", f"| touch {marker}"]


def test_shell_payloads_never_execute(underlay, netns_prefix, tmp_path, daemons):
    marker = tmp_path / "PWNED"
    seen = tmp_path / "seen"
    conf = tmp_path / "net-conf.json"
    # The documented style: remote values used quoted, data read from stdin.
    conf.write_text(json.dumps({"Network": "10.70.0.0/16", **OWN_RANGE, "Backend": {
        "Type": "extension",
        "SubnetAddCommand": f"read DATA; printf '%s|%s|%s\\n' \"$SUBNET\" \"$PUBLIC_IP\" \"$DATA\" >> {seen}",
    }}))
    db = tmp_path / "leases.db"
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    node = NodeDaemon(ns, conf, f"sqlite:{db}", tmp_path)
    daemons.append(node)
    node.start()

    store = SqliteStore(str(db))
    bad = 0
    try:
        for i, payload in enumerate(payloads(marker)):
            # 1. PublicIP carries the payload: rejected before any hook.
            store.put_raw(f"10.70.{10 + i}.0-24", json.dumps(
                {"PublicIP": f"192.168.77.9{payload}", "PublicIPv6": None, "BackendType": "extension"}))
            # 2. The subnet key carries it: not a flannel key, rejected.
            store.put_raw(f"10.70.{30 + i}.0-24{payload}", json.dumps(
                {"PublicIP": "192.168.77.9", "PublicIPv6": None, "BackendType": "extension"}))
            bad += 2
            # 3. BackendData carries it as a string: valid data, handed over on stdin only.
            store.put_raw(f"10.70.{50 + i}.0-24", json.dumps(
                {"PublicIP": "192.168.77.9", "PublicIPv6": None, "BackendType": "extension",
                 "BackendData": payload.replace("\n", " ")}))
        # 4. Outside Network, wrong length, non-string data, NUL, oversized data.
        store.put_raw("10.99.1.0-24", '{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"extension"}')
        store.put_raw("10.70.90.0-25", '{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"extension"}')
        store.put_raw("10.70.91.0-24", '{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"extension",'
                                       '"BackendData":{"x":"$(touch %s)"}}' % marker)
        store.put_raw("10.70.92.0-24", '{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"extension",'
                                       '"BackendData":"a\\u0000b"}')
        store.put_raw("10.70.93.0-24", json.dumps({"PublicIP": "192.168.77.9", "PublicIPv6": None,
                                                   "BackendType": "extension", "BackendData": "x" * 5000}))
        store.put_raw("10.70.94.0-24", '{"PublicIP":"224.0.0.1","PublicIPv6":null,"BackendType":"extension"}')
        store.put_raw("10.70.95.0-24", "not json; touch %s" % marker)
        bad += 7
    finally:
        store.close()

    count = len(payloads(marker))
    wait_for(lambda: seen.exists() and len(seen.read_text().splitlines()) >= count, timeout=20)
    wait_for(lambda: sum(node.stats().get("rejected", {}).values()) >= bad, timeout=10)
    assert sum(node.stats()["rejected"].values()) == bad
    assert not marker.exists()
    lines = seen.read_text().splitlines()
    assert len(lines) == count
    # The payloads arrived verbatim, as data.
    got = {line.split("|", 2)[2] for line in lines}
    # (`read` strips the surrounding blanks, nothing else.)
    assert got == {p.replace("\n", " ").strip() for p in payloads(marker)}
    assert "rejected lease" in node.log()
