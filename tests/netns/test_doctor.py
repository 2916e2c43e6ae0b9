"""`flannel-ext doctor` on this machine: real tools, /proc, CNI plugins, files, SQLite and etcd."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from etcd_server import etcd_server  # noqa: E402,F401  (the fixture)

from flannel_ext._commands.doctor import GC_THRESH3, check_neighbours  # noqa: E402
from flannel_ext._stores.lease import LeaseAttrs  # noqa: E402
from flannel_ext._stores.sqlite import SqliteStore  # noqa: E402

CNI_BIN = "/usr/lib/cni"     # Debian's containernetworking-plugins
CONFLIST = {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
    {"type": "flannel-ext-cni", "delegate": {"isDefaultGateway": True}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}
GOOD_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def doctor(*args: str, prefix: tuple[str, ...] = ()) -> tuple[int, dict[str, str], list[str]]:
    """(exit code, {check: whole line}, lines); a check name is what precedes the first ':'."""
    proc = subprocess.run([*prefix, sys.executable, "-m", "flannel_ext", "doctor", *args],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    return proc.returncode, {line[6:].split(":", 1)[0]: line for line in lines[:-1]}, lines


@pytest.fixture
def node(tmp_path):
    """A node's files: subnet.env, a CNI config dir, net-conf.json and a SQLite store with 3 leases."""
    (tmp_path / "subnet.env").write_text(GOOD_ENV)
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "10-flannel.conflist").write_text(json.dumps(CONFLIST))
    (tmp_path / "net-conf.json").write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "extension"}}')
    store = SqliteStore(str(tmp_path / "leases.db"))
    for i in range(1, 4):
        store.put_raw(f"10.244.{i}.0-24", LeaseAttrs.with_string_data(f"192.168.1.{i}", None).to_json())
    store.close()
    (tmp_path / "bin").mkdir()     # where the init container puts our plugin
    (tmp_path / "bin" / "flannel-ext-cni").symlink_to(shutil.which("flannel-ext-cni"))
    return tmp_path


def args_for(node: Path, *extra: str) -> list[str]:
    return ["--subnet-file", str(node / "subnet.env"), "--cni-conf-dir", str(node / "net.d"),
            "--cni-path", f"/nonexistent:{node / 'bin'}:{CNI_BIN}", "--net-conf", str(node / "net-conf.json"),
            "--store", f"sqlite:{node / 'leases.db'}", *extra]


def test_a_ready_node_passes_every_check(node):
    rc, checks, lines = doctor(*args_for(node))
    assert rc == 0, "\n".join(lines)
    for name in ("ip", "bridge", "nft", "CAP_NET_ADMIN", "CAP_NET_RAW", "subnet.env", "CNI config",
                 "net-conf.json", "PodCIDR", "store", "neighbour table"):
        assert checks[name].startswith("ok    "), checks[name]
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        assert checks[f"CNI plugin {plugin}"] == f"ok    CNI plugin {plugin}: {CNI_BIN}/{plugin}"
    assert checks["vxlan module"].startswith(("ok", "warn"))     # loaded on first use if not now
    assert checks["PodCIDR"] == f"ok    PodCIDR: 10.244.3.0/24 is inside 10.244.0.0/16 ({node}/net-conf.json)"
    assert checks["store"] == f"ok    store: sqlite:{node}/leases.db: 3 lease(s)"
    thresh = int(Path(GC_THRESH3).read_text())
    assert f"gc_thresh3={thresh}, about 257 entries needed (3 leases + 254 local pods)" in checks["neighbour table"]
    assert lines[-1].startswith(f"{len(checks)} checks: 0 failed")


def test_each_problem_is_one_failing_line_with_a_fix(node, tmp_path):
    (node / "subnet.env").write_text(GOOD_ENV.replace("10.244.3.1/24", "10.99.3.1/24"))
    (node / "net.d" / "10-flannel.conflist").write_text("{not json")
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    rc, checks, lines = doctor(*args_for(node, "--cni-path", str(empty)))
    assert rc == 1
    assert checks["PodCIDR"].startswith("fail  PodCIDR: 10.99.3.0/24 is not inside 10.244.0.0/16")
    assert "; make Network cover" in checks["PodCIDR"]
    assert checks["CNI config"].startswith(f"fail  CNI config: {node}/net.d/10-flannel.conflist: not a usable")
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        assert checks[f"CNI plugin {plugin}"].startswith(f"fail  CNI plugin {plugin}: not in {empty}; install")
    assert lines[-1].startswith(f"{len(checks)} checks: 6 failed")


def test_subnet_env_missing_keys_fails_and_missing_file_warns(node):
    (node / "subnet.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\n")
    rc, checks, _ = doctor(*args_for(node))
    assert rc == 1
    assert checks["subnet.env"] == (f"fail  subnet.env: {node}/subnet.env lacks FLANNEL_SUBNET, FLANNEL_MTU, "
                                    "FLANNEL_IPMASQ; the CNI plugin refuses it: restart `flannel-ext run` to "
                                    "rewrite it")
    (node / "subnet.env").unlink()
    rc, checks, _ = doctor(*args_for(node))
    assert rc == 0 and checks["subnet.env"].startswith("warn  subnet.env:")


def test_a_conflist_that_sorts_after_another_runtime_config_warns(node):
    (node / "net.d" / "05-other.conflist").write_text(json.dumps({"name": "x", "plugins": [{"type": "bridge"}]}))
    rc, checks, _ = doctor(*args_for(node))
    assert rc == 0
    assert checks["CNI config"].startswith(f"warn  CNI config: {node}/net.d/05-other.conflist (used first) "
                                           "has no flannel plugin (10-flannel.conflist comes later)")


def test_missing_capabilities_fail(node):
    rc, checks, _ = doctor(*args_for(node), prefix=("setpriv", "--bounding-set", "-net_admin,-net_raw",
                                                    "--inh-caps", "-net_admin,-net_raw"))
    assert rc == 1
    assert checks["CAP_NET_ADMIN"].startswith("fail  CAP_NET_ADMIN: missing")
    assert checks["CAP_NET_RAW"].startswith("warn  CAP_NET_RAW: missing")


def test_store_reachable_on_a_real_etcd_then_not(node, etcd_server):
    etcd_server.etcdctl("put", "/coreos.com/network/subnets/10.244.7.0-24",
                        LeaseAttrs.with_string_data("192.168.1.7", None).to_json())
    base = [a for a in args_for(node) if not a.startswith(("--store", "sqlite:"))]
    rc, checks, _ = doctor(*base, "-etcd-endpoints", etcd_server.endpoint)
    assert rc == 0
    assert checks["store"] == f"ok    store: etcd://127.0.0.1:{etcd_server.client_port}: 1 lease(s)"
    etcd_server.stop()
    rc, checks, _ = doctor(*base, f"--etcd-endpoints={etcd_server.endpoint}")
    assert rc == 1
    assert checks["store"].startswith(f"fail  store: etcd://127.0.0.1:{etcd_server.client_port}: ")
    assert "lease count unknown" in checks["neighbour table"]


def test_a_store_not_created_yet_warns_and_is_not_created(node):
    rc, checks, _ = doctor(*args_for(node, "--store", f"sqlite:{node}/new/leases.db"))
    assert rc == 0 and checks["store"].startswith("warn  store:")
    assert not (node / "new").exists()


def test_neighbour_limit_against_the_lease_count():
    assert check_neighbours(100, 254, 1024).status == "ok"
    crowded = check_neighbours(1000, 254, 1024)
    assert crowded.status == "warn" and "at least 2508" in crowded.line()
    assert check_neighbours(None, 254, 1024).status == "warn"


def test_a_conflist_plugin_missing_from_the_cni_path_fails(node):
    (node / "bin" / "flannel-ext-cni").unlink()
    rc, checks, _ = doctor(*args_for(node))
    assert rc == 1
    assert checks["CNI config"].startswith(f"fail  CNI config: {node}/net.d/10-flannel.conflist chains "
                                           "flannel-ext-cni, not in /nonexistent:")
