"""The flannel contract, pinned byte for byte.

What each hook gets in its environment and on stdin, the lease JSON and key written to the
store, and subnet.env. Two real daemons run a net-conf whose commands record what they got.
"""
from __future__ import annotations

import json

import sqlite3

from flannel_ext.testing import NodeDaemon, wait_for

# Each command records its environment and stdin in its working directory (the state dir).
RECORDER = {
    "Network": "10.60.0.0/16",
    "Backend": {
        "Type": "extension",
        "PreStartupCommand": "cat > pre.stdin; env > pre.env; printf 'aa:bb:cc:dd:ee:%s\\n' \"$TAIL\"; "
                             "echo ignored-stderr >&2",
        "PostStartupCommand": "cat > post.stdin; env > post.env",
        "SubnetAddCommand": "f=$(printf %s \"$SUBNET\" | tr / _); cat > \"add.$f.stdin\"; env > \"add.$f.env\"",
        "SubnetRemoveCommand": "f=$(printf %s \"$SUBNET\" | tr / _); cat > \"rm.$f.stdin\"; env > \"rm.$f.env\"",
        "ShutdownCommand": "cat > shutdown.stdin; env > shutdown.env",
    },
}

FLANNEL_VARS = ("NETWORK", "SUBNET", "IPV6SUBNET", "PUBLIC_IP", "PUBLIC_IPV6")


def read_env(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_contract(underlay, netns_prefix, tmp_path, daemons):
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps(RECORDER))
    db = tmp_path / "leases.db"
    nodes = []
    for i, tail in enumerate(("01", "02")):
        ns = f"{netns_prefix}n{i}"
        underlay.add_node(ns, i)
        node = NodeDaemon(ns, conf, f"sqlite:{db}", tmp_path, extra=["--release-lease-on-exit"],
                          env={"TAIL": tail})
        daemons.append(node)
        nodes.append(node)
    for node in nodes:
        node.start()
    a, b = nodes
    ip_a, ip_b = underlay.nodes[a.ns], underlay.nodes[b.ns]
    sa, sb = a.subnet, b.subnet
    fa, fb = sa.replace("/", "_"), sb.replace("/", "_")
    wait_for(lambda: (a.state_dir / f"add.{fb}.env").exists() and (b.state_dir / f"add.{fa}.env").exists())

    # PreStartup: stdin is "\n"; no flannel variables are added.
    assert (a.state_dir / "pre.stdin").read_text() == "\n"
    pre = read_env(a.state_dir / "pre.env")
    assert not {"SUBNET", "PUBLIC_IP", "NETWORK"} & set(pre)
    # PostStartup: NETWORK, SUBNET, IPV6SUBNET, PUBLIC_IP, PUBLIC_IPV6 (IPv6 unset -> empty).
    post = read_env(a.state_dir / "post.env")
    assert {k: post[k] for k in FLANNEL_VARS} == {
        "NETWORK": "10.60.0.0/16", "SUBNET": sa, "IPV6SUBNET": "", "PUBLIC_IP": ip_a, "PUBLIC_IPV6": ""}
    assert (a.state_dir / "post.stdin").read_text() == "\n"
    # SubnetAdd on a for b: b's lease only, plus the IPv6 pair flannel never passes (#1501);
    # stdin is b's BackendData (PreStartup stdout, stderr not mixed in) and a newline.
    add = read_env(a.state_dir / f"add.{fb}.env")
    assert {k: add[k] for k in ("SUBNET", "PUBLIC_IP", "IPV6SUBNET", "PUBLIC_IPV6")} == {
        "SUBNET": sb, "PUBLIC_IP": ip_b, "IPV6SUBNET": "", "PUBLIC_IPV6": ""}
    assert "NETWORK" not in add
    assert (a.state_dir / f"add.{fb}.stdin").read_bytes() == b"aa:bb:cc:dd:ee:02\n"
    assert add["PATH"], "the daemon's environment is passed on"
    # Commands run in the state directory, not in / (k3s#3031).
    assert add["PWD"] == str(a.state_dir)

    # The lease: flannel's key and byte-identical JSON.
    with sqlite3.connect(db) as conn:
        raw = dict(conn.execute("SELECT key, value FROM leases"))
    key_b = sb.replace("/", "-")
    assert raw[key_b] == ('{"PublicIP":"%s","PublicIPv6":null,"BackendType":"extension",'
                          '"BackendData":"aa:bb:cc:dd:ee:02"}' % ip_b)

    # subnet.env: flannel's lines.
    first = sa.rsplit(".", 1)[0] + ".1/24"
    assert a.subnet_file.read_text() == (
        f"FLANNEL_NETWORK=10.60.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")

    # SubnetRemove gets the data the lease was added with; Shutdown gets PostStartup's variables.
    assert b.stop() == 0
    wait_for(lambda: (a.state_dir / f"rm.{fb}.env").exists())
    rm = read_env(a.state_dir / f"rm.{fb}.env")
    assert (rm["SUBNET"], rm["PUBLIC_IP"]) == (sb, ip_b)
    assert (a.state_dir / f"rm.{fb}.stdin").read_bytes() == b"aa:bb:cc:dd:ee:02\n"
    shut = read_env(b.state_dir / "shutdown.env")
    assert (shut["SUBNET"], shut["PUBLIC_IP"], shut["NETWORK"]) == (sb, ip_b, "10.60.0.0/16")
