"""`flannel-ext leases`: the leases of a real SQLite store and a real etcd, read-only."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from etcd_server import etcd_server  # noqa: E402,F401  (the fixture)
from kube_fake import kube_api  # noqa: E402,F401  (the fixture)

from flannel_ext._stores.lease import LeaseAttrs  # noqa: E402
from flannel_ext._stores.sqlite import SqliteStore  # noqa: E402

VXLAN_DATA = '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}'


def leases(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flannel_ext", "leases", *args], capture_output=True,
                          text=True, timeout=60)


def fill(put) -> None:
    """`put(key, value, ttl)`: two good leases (one with a 1 h TTL, one reservation), a
    dual-stack one, and garbage."""
    one = LeaseAttrs.with_string_data("192.168.1.10", "wg-key=")
    two = LeaseAttrs(public_ip="192.168.1.11", backend_type="vxlan", backend_data=VXLAN_DATA)
    three = LeaseAttrs.with_string_data("192.168.1.12", None, public_ipv6="fd00::12")
    put("10.244.1.0-24", one.to_json(), 3600)
    put("10.244.2.0-24", two.to_json(), None)
    put("10.244.3.0-24&fd00:10:244:3::-64", three.to_json(), 3600)
    put("10.244.4.0-24", "not json", None)


def check_json(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    by_key = {lease["key"]: lease for lease in doc["leases"]}
    assert sorted(by_key) == ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24&fd00:10:244:3::-64"]
    one, two, three = (by_key[k] for k in sorted(by_key))
    assert (one["subnet"], one["public_ip"], one["backend_type"], one["backend_data"]) == \
        ("10.244.1.0/24", "192.168.1.10", "extension", "wg-key=")
    assert 3000 < one["expires_in"] <= 3600 and one["expiration"] > 0
    assert two["backend_data"] == {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"} and two["expiration"] is None
    assert (three["ipv6_subnet"], three["public_ipv6"]) == ("fd00:10:244:3::/64", "fd00::12")
    assert [r["key"] for r in doc["rejected"]] == ["10.244.4.0-24"]
    assert "not valid JSON" in doc["rejected"][0]["reason"]


def check_table(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["SUBNET", "IPV6", "SUBNET", "PUBLIC", "IP", "PUBLIC", "IPV6", "BACKEND",
                                "EXPIRES", "IN", "BACKEND", "DATA"]
    row = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert row["10.244.1.0/24"][1:5] == ["-", "192.168.1.10", "-", "extension"]
    assert row["10.244.1.0/24"][5].startswith(("59m", "58m", "57m")) and row["10.244.1.0/24"][6] == '"wg-key="'
    assert row["10.244.2.0/24"][4:7] == ["vxlan", "never", VXLAN_DATA]
    assert row["10.244.3.0/24"][1:4] == ["fd00:10:244:3::/64", "192.168.1.12", "fd00::12"]
    assert row["10.244.4.0-24"][4] == "REJECTED"
    assert lines[-1] == "3 lease(s), 1 rejected"


def test_sqlite_store_listed_without_writing(tmp_path):
    db = tmp_path / "leases.db"
    store = SqliteStore(str(db))
    fill(lambda key, value, ttl: store.put_raw(key, value, expiration=ttl and time.time() + ttl))
    store.close()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    check_table(leases("--store", f"sqlite:{db}"))
    check_json(leases("--store", f"sqlite:{db}", "--json"))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before, "leases writes nothing"


def test_missing_sqlite_file_is_one_line_and_creates_nothing(tmp_path):
    out = leases("--store", f"sqlite:{tmp_path}/nope.db")
    assert out.returncode == 4 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"flannel-ext: error: sqlite store {tmp_path}/nope.db: no such file; " \
                                 "check the path given to --store"
    assert list(tmp_path.iterdir()) == []


def test_etcd_store_with_flanneld_flags(etcd_server):
    def put(key, value, ttl):
        lease = []
        if ttl:     # "lease 694d8e0b2c1a5f0e granted with TTL(3600s)"
            lease = ["--lease", etcd_server.etcdctl("lease", "grant", str(ttl)).split()[1]]
        etcd_server.etcdctl("put", *lease, f"/my/net/subnets/{key}", value)
    fill(put)
    check_json(leases("-etcd-endpoints", etcd_server.endpoint, "-etcd-prefix=/my/net", "--json"))
    check_table(leases("--store", f"etcd://127.0.0.1:{etcd_server.client_port}", "--etcd-prefix", "/my/net"))
    # The default prefix holds nothing
    out = leases("--etcd-endpoints", etcd_server.endpoint)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "0 lease(s)"


def test_unreachable_etcd_is_one_line(tmp_path):
    out = leases("--store", "etcd://127.0.0.1:9")
    assert out.returncode == 4 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "127.0.0.1:9" in out.stderr


def test_kube_store_with_flanneld_flags(kube_api):
    """`--kube-subnet-mgr` lists every flannel-annotated node (a bad one as rejected)."""
    p = "flannel.alpha.coreos.com/"
    for name, cidr, ip in (("n1", "10.244.1.0/24", "192.168.1.10"), ("n2", "10.244.2.0/24", "nope")):
        kube_api.add_node(name, cidr, {p + "backend-data": '"aa:bb:cc:dd:ee:01"', p + "backend-type": "extension",
                                       p + "kube-subnet-manager": "true", p + "public-ip": ip})
    kube_api.add_node("plain", "10.244.3.0/24")
    out = leases("-kube-subnet-mgr", "--kubeconfig-file", str(kube_api.kubeconfig_path), "--node-name", "n1",
                 "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [(x["subnet"], x["public_ip"], x["backend_data"], x["expiration"]) for x in doc["leases"]] == \
        [("10.244.1.0/24", "192.168.1.10", "aa:bb:cc:dd:ee:01", None)]
    assert [r["key"] for r in doc["rejected"]] == ["n2"]
