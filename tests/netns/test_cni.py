"""flannel-ext-cni invoked exactly as a runtime would, with the real bridge/host-local.

The plugin runs under ``ip netns exec <node>`` so the bridge is made in a test "node"
namespace; the "pod" namespace gets the veth. Everything lives under `netns_prefix`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import pytest

import flannel_ext
from flannel_ext._util.netns import create_netns, sh
from flannel_ext._cni import delegate, errors as codes, plugin as cni
from flannel_ext._runtime import subnetenv

CNI_PATH = "/usr/lib/cni"
SUBNET_ENV = "FLANNEL_NETWORK=10.199.0.0/16\nFLANNEL_SUBNET=10.199.3.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n"


def _plugin() -> str:
    path = shutil.which("flannel-ext-cni")
    assert path, "flannel-ext-cni console script not installed (pip install -e .)"
    return path


def invoke(node: str | None, command: str, conf, *, cid="c1", netns="", ifname="eth0",
           cni_path=CNI_PATH, drop=()):
    """Run the plugin; returns (exit code, parsed stdout or None)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": cni_path}
    for key in drop:
        env.pop(key)
    argv = [_plugin()] if node is None else ["ip", "netns", "exec", node, _plugin()]
    data = conf if isinstance(conf, (str, bytes)) else json.dumps(conf)
    proc = subprocess.run(argv, input=data if isinstance(data, bytes) else data.encode(),
                          capture_output=True, env=env, timeout=60)
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)


def _ipj(ns: str, *args: str):
    return json.loads(sh(["ip", "-n", ns, "-j", *args]).stdout or "[]")


@pytest.fixture
def pod_env(netns_prefix, tmp_path):
    node = create_netns(f"{netns_prefix}node")
    pod = create_netns(f"{netns_prefix}pod")
    (tmp_path / "subnet.env").write_text(SUBNET_ENV)
    conf = {"cniVersion": "1.0.0", "name": f"{netns_prefix}net", "type": "flannel",
            "subnetFile": str(tmp_path / "subnet.env"), "dataDir": str(tmp_path / "cni"),
            "ipam": {"dataDir": str(tmp_path / "ipam")}, "delegate": {"hairpinMode": True}}
    return node, pod, conf, tmp_path


def test_add_check_del_as_a_runtime(pod_env):
    node, pod, conf, tmp = pod_env
    root_had_cni0 = sh(["ip", "link", "show", "cni0"], check=False).returncode == 0
    netns = f"/run/netns/{pod}"

    rc, result = invoke(node, "ADD", conf, netns=netns)
    assert rc == 0, result
    ip = ipaddress.ip_interface(result["ips"][0]["address"])
    assert ip in ipaddress.ip_network("10.199.3.0/24") and ip.ip != ipaddress.ip_address("10.199.3.1")
    assert result["ips"][0]["gateway"] == "10.199.3.1"

    # The delegate config flannel would build, saved for DEL.
    saved = json.loads((tmp / "cni" / conf["name"] / "c1" / "eth0").read_text())
    assert saved["type"] == "bridge" and saved["isGateway"] is True and saved["hairpinMode"] is True
    assert saved["ipMasq"] is False and saved["mtu"] == 1400 and saved["name"] == conf["name"]
    assert saved["ipam"]["ranges"] == [[{"subnet": "10.199.3.0/24"}]]
    assert saved["ipam"]["routes"] == [{"dst": "10.199.0.0/16"}]

    # Pod side: address, MTU, the route to the cluster network via the bridge.
    eth0 = _ipj(pod, "addr", "show", "eth0")[0]
    assert eth0["mtu"] == 1400
    assert {(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"} == \
        {(str(ip.ip), 24)}
    routes = _ipj(pod, "route")
    assert {"dst": "10.199.0.0/16", "gateway": "10.199.3.1"}.items() <= \
        next(r for r in routes if r["dst"] == "10.199.0.0/16").items()

    # Node side: cni0 with the gateway address and MTU, the veth enslaved with hairpin on.
    cni0 = _ipj(node, "addr", "show", "cni0")[0]
    assert cni0["mtu"] == 1400
    assert ("10.199.3.1", 24) in {(a["local"], a["prefixlen"]) for a in cni0["addr_info"]}
    ports = json.loads(sh(["ip", "netns", "exec", node, "bridge", "-j", "-d", "link"]).stdout)
    assert len(ports) == 1 and ports[0]["master"] == "cni0" and ports[0].get("hairpin") is True
    # The root namespace was not touched.
    assert (sh(["ip", "link", "show", "cni0"], check=False).returncode == 0) == root_had_cni0
    assert (tmp / "ipam" / conf["name"] / str(ip.ip)).exists()

    rc, out = invoke(node, "CHECK", {**conf, "prevResult": result}, netns=netns)
    assert rc == 0, out

    # DEL works from the saved config even with subnet.env gone (a restart, a new lease).
    (tmp / "subnet.env").unlink()
    rc, out = invoke(node, "DEL", conf, netns=netns)
    assert rc == 0, out
    assert json.loads(sh(["ip", "netns", "exec", node, "bridge", "-j", "link"]).stdout) == []
    assert [link["ifname"] for link in _ipj(pod, "link")] == ["lo"]
    assert not (tmp / "ipam" / conf["name"] / str(ip.ip)).exists()
    assert not (tmp / "cni" / conf["name"] / "c1").exists()
    # DEL again (and for a container never added) succeeds, as the spec asks.
    assert invoke(node, "DEL", conf, netns=netns)[0] == 0
    assert invoke(node, "DEL", conf, cid="never-added")[0] == 0


def test_check_of_unknown_container_fails(pod_env):
    node, pod, conf, _ = pod_env
    rc, out = invoke(node, "CHECK", {**conf, "prevResult": {}}, netns=f"/run/netns/{pod}", cid="nope")
    assert rc != 0 and out["code"] == codes.UNKNOWN_CONTAINER


def test_version():
    rc, out = invoke(None, "VERSION", '{"cniVersion":"1.0.0"}')
    assert rc == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": cni.SUPPORTED_VERSIONS}
    assert {"0.3.1", "0.4.0", "1.0.0"} <= set(out["supportedVersions"])


@pytest.mark.parametrize("case, code, names", [
    ("garbage", codes.DECODE_FAILURE, "stdin"),
    ("array", codes.DECODE_FAILURE, "stdin"),
    ("version", codes.INCOMPATIBLE_VERSION, "'cniVersion' '9.9.9'"),
    ("noname", codes.INVALID_CONFIG, "'name'"),
    ("delegate-name", codes.INVALID_CONFIG, "'delegate.name'"),
    ("delegate-ipam", codes.INVALID_CONFIG, "'delegate.ipam'"),
    ("no-subnet-env", codes.TRY_AGAIN_LATER, "absent.env does not exist yet"),
    ("bad-subnet-env", codes.BAD_SUBNET_ENV, "bad.env lacks FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"),
    ("missing-env", codes.INVALID_ENV, "CNI_NETNS"),
    ("unknown-command", codes.INVALID_ENV, "CNI_COMMAND 'FROB'"),
    ("no-delegate", codes.DELEGATE_MISSING, "'no-such-plugin' is in no CNI_PATH directory"),
    ("delegate-error", 4, "interface name"),  # bridge's own error JSON, passed through
])
def test_errors_are_cni_error_json(pod_env, case, code, names):
    node, pod, conf, tmp = pod_env
    kwargs = {"netns": f"/run/netns/{pod}"}
    command = "ADD"
    if case == "garbage":
        conf = "{not json"
    elif case == "array":
        conf = "[]"
    elif case == "version":
        conf = {**conf, "cniVersion": "9.9.9"}
    elif case == "noname":
        conf = {k: v for k, v in conf.items() if k != "name"}
    elif case == "delegate-name":
        conf = {**conf, "delegate": {"name": "x"}}
    elif case == "delegate-ipam":
        conf = {**conf, "delegate": {"ipam": {}}}
    elif case == "no-subnet-env":
        conf = {**conf, "subnetFile": str(tmp / "absent.env")}
    elif case == "bad-subnet-env":
        (tmp / "bad.env").write_text("FLANNEL_NETWORK=10.199.0.0/16\nFLANNEL_MTU=1400\n")
        conf = {**conf, "subnetFile": str(tmp / "bad.env")}
    elif case == "missing-env":
        kwargs["drop"] = ("CNI_NETNS",)
    elif case == "unknown-command":
        command = "FROB"
    elif case == "no-delegate":
        conf = {**conf, "delegate": {"type": "no-such-plugin"}}
    elif case == "delegate-error":
        kwargs["ifname"] = "x" * 20  # too long an interface name: the bridge says so
    rc, out = invoke(node, command, conf, **kwargs)
    assert rc != 0
    assert out["code"] == code, out
    # Each error names the key or file at fault, and none says "not found": podman
    # reads that as "command not found" and reports exit code 127.
    assert names in out["msg"], out
    assert "not found" not in json.dumps(out).lower()
    if case == "delegate-error":
        assert out["msg"] == "interface name is too long" and "16 characters" in out["details"]
    # Nothing was created in the node namespace by a failed call.
    assert [link["ifname"] for link in _ipj(pod, "link")] == ["lo"]


# -- CNI 1.1 as a runtime drives it: attachments, GC, STATUS ---------------------------------

# A delegate that is the reference bridge, except that DEL fails while a marker file exists
# (a runtime sees exactly this when a delegate's DEL breaks).
FLAKY_BRIDGE = f"""#!/bin/sh
if [ "$CNI_COMMAND" = DEL ] && [ -e "$(dirname "$0")/fail-del" ]; then
    echo '{{"cniVersion":"1.0.0","code":999,"msg":"injected DEL failure"}}'
    exit 1
fi
exec {CNI_PATH}/bridge
"""


def _ipam_ips(tmp, network: str) -> set[str]:
    """The addresses host-local holds for `network`."""
    d = tmp / "ipam" / network
    return {p.name for p in d.iterdir() if p.name[0].isdigit()} if d.exists() else set()


def _cached(tmp) -> set[tuple[str, ...]]:
    return {p.relative_to(tmp / "cni").parts for p in (tmp / "cni").rglob("*") if p.is_file()}


def test_one_container_on_two_networks_keeps_two_attachments(pod_env):
    """Each network's DEL undoes only its own attachment (cache keyed network+container+ifname)."""
    node, pod, conf, tmp = pod_env
    (tmp / "second.env").write_text('FLANNEL_NETWORK="10.198.0.0/16"\nFLANNEL_SUBNET="10.198.7.1/24"\n'
                                    "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")
    second = {**conf, "name": conf["name"] + "b", "subnetFile": str(tmp / "second.env"),
              "delegate": {"bridge": "cni1"}}
    netns = f"/run/netns/{pod}"
    rc, first_result = invoke(node, "ADD", conf, netns=netns)
    assert rc == 0, first_result
    rc, second_result = invoke(node, "ADD", second, netns=netns, ifname="eth1")
    assert rc == 0, second_result
    assert second_result["ips"][0]["address"].startswith("10.198.7.")
    assert _cached(tmp) == {(conf["name"], "c1", "eth0"), (second["name"], "c1", "eth1")}
    assert len(_ipam_ips(tmp, conf["name"])) == 1 and len(_ipam_ips(tmp, second["name"])) == 1

    assert invoke(node, "DEL", conf, netns=netns)[0] == 0
    assert _ipam_ips(tmp, conf["name"]) == set(), "the first network's address leaked"
    assert len(_ipam_ips(tmp, second["name"])) == 1, "the second network's address went with the first"
    assert sorted(link["ifname"] for link in _ipj(pod, "link")) == ["eth1", "lo"]
    assert _cached(tmp) == {(second["name"], "c1", "eth1")}

    assert invoke(node, "DEL", second, netns=netns, ifname="eth1")[0] == 0
    assert _ipam_ips(tmp, second["name"]) == set() and _cached(tmp) == set()
    assert [link["ifname"] for link in _ipj(pod, "link")] == ["lo"]


def test_gc_collects_stale_attachments_including_a_failed_del(pod_env, netns_prefix):
    node, pod, conf, tmp = pod_env
    other = create_netns(f"{netns_prefix}pod2")
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "flaky").write_text(FLAKY_BRIDGE)
    (bindir / "flaky").chmod(0o755)
    cni_path = f"{bindir}:{CNI_PATH}"
    conf = {**conf, "cniVersion": "1.1.0", "delegate": {"type": "flaky", "isGateway": True}}
    rc, result = invoke(node, "ADD", conf, netns=f"/run/netns/{pod}", cni_path=cni_path)
    assert rc == 0, result
    assert result["cniVersion"] == "1.1.0"   # Debian's bridge speaks 1.0.0: the plugin bridges the gap
    assert invoke(node, "ADD", conf, cid="c2", netns=f"/run/netns/{other}", cni_path=cni_path)[0] == 0
    assert len(_ipam_ips(tmp, conf["name"])) == 2

    # The runtime deletes c1, but the delegate's DEL fails: the entry must stay for GC.
    (bindir / "fail-del").touch()
    rc, out = invoke(node, "DEL", conf, netns=f"/run/netns/{pod}", cni_path=cni_path)
    assert rc == 1 and out["msg"] == "injected DEL failure"
    assert (conf["name"], "c1", "eth0") in _cached(tmp)

    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}
    rc, out = invoke(node, "GC", gc, cid="", ifname="", cni_path=cni_path)
    assert rc == 1 and out["code"] == codes.DELEGATE_FAILED and "c1/eth0" in out["details"], out
    assert (conf["name"], "c1", "eth0") in _cached(tmp), "an entry whose DEL failed again stays"

    (bindir / "fail-del").unlink()
    rc, out = invoke(node, "GC", gc, cid="", ifname="", cni_path=cni_path)
    assert (rc, out) == (0, None)
    assert _cached(tmp) == {(conf["name"], "c2", "eth0")}
    assert len(_ipam_ips(tmp, conf["name"])) == 1, "GC freed c1's address and kept c2's"
    assert sorted(link["ifname"] for link in _ipj(other, "link")) == ["eth0", "lo"]

    # GC is for this network only, and needs 1.1.0.
    assert invoke(node, "GC", {**gc, "name": "othernet", "cni.dev/valid-attachments": []},
                  cid="", ifname="", cni_path=cni_path) == (0, None)
    assert _cached(tmp) == {(conf["name"], "c2", "eth0")}
    rc, out = invoke(node, "GC", {**gc, "cniVersion": "1.0.0"}, cid="", ifname="", cni_path=cni_path)
    assert rc == 1 and out["code"] == codes.INCOMPATIBLE_VERSION
    rc, out = invoke(node, "GC", {**gc, "cni.dev/valid-attachments": ["c2"]}, cid="", ifname="",
                     cni_path=cni_path)
    assert rc == 1 and out["code"] == codes.INVALID_CONFIG and "cni.dev/valid-attachments" in out["msg"]


def test_del_honours_an_entry_keyed_by_container_alone(tmp_path):
    """flannel's (and older versions') layout, <dataDir>/<containerID>: used for its own network."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "stub").write_text('#!/bin/sh\ncat > "$(dirname "$0")/stdin.$CNI_COMMAND"\n')
    (bindir / "stub").chmod(0o755)
    data = tmp_path / "cni"
    data.mkdir()
    legacy = data / "c1"
    legacy.write_text(json.dumps({"cniVersion": "1.0.0", "name": "cbr0", "type": "stub"}))
    conf = {"cniVersion": "1.0.0", "name": "othernet", "type": "flannel", "dataDir": str(data)}
    assert invoke(None, "DEL", conf, cni_path=str(bindir)) == (0, None)
    assert legacy.exists() and not (bindir / "stdin.DEL").exists(), "another network's entry was used"
    assert invoke(None, "DEL", {**conf, "name": "cbr0"}, cni_path=str(bindir)) == (0, None)
    assert not legacy.exists() and json.loads((bindir / "stdin.DEL").read_text())["name"] == "cbr0"
    assert data.is_dir()


def test_status_reports_whether_subnet_env_is_there(pod_env):
    node, _, conf, tmp = pod_env
    conf = {**conf, "cniVersion": "1.1.0"}
    assert invoke(node, "STATUS", conf, cid="", ifname="", netns="") == (0, None)
    (tmp / "subnet.env").unlink()
    rc, out = invoke(node, "STATUS", conf, cid="", ifname="", netns="")
    assert rc == 1 and out["code"] == codes.PLUGIN_NOT_AVAILABLE
    assert str(tmp / "subnet.env") in out["msg"] and "does not exist yet" in out["msg"]
    rc, out = invoke(node, "STATUS", {**conf, "cniVersion": "1.0.0"}, cid="", ifname="", netns="")
    assert rc == 1 and out["code"] == codes.INCOMPATIBLE_VERSION


def test_no_command_prints_the_about_lines():
    proc = subprocess.run([_plugin()], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ.get("PATH", "")}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr == (f"CNI flannel-ext plugin v{flannel_ext.__version__}\n"
                           f"CNI protocol versions supported: {', '.join(cni.SUPPORTED_VERSIONS)}\n")


# -- the delegate config, without the kernel -----------------------------------------------

ENV = subnetenv.SubnetEnv((ipaddress.ip_network("10.244.0.0/16"),), (ipaddress.ip_network("10.244.1.0/24"),),
                          1450, False)


def test_delegate_overrides_and_default_gateway():
    conf = {"name": "cbr0", "cniVersion": "0.3.1",
            "delegate": {"hairpinMode": True, "isDefaultGateway": True, "mtu": 1400}}
    d = delegate.build(conf, ENV)
    assert d["hairpinMode"] is True and d["mtu"] == 1400 and d["ipMasq"] is True
    assert d["cniVersion"] == "0.3.1" and d["isGateway"] is True
    # The bridge's default route covers the network, so no network route is added.
    assert d["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": []}


def test_subnet_env_dual_stack_and_comma_lists(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                    "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    env = subnetenv.load(str(path))
    assert [str(n) for n in env.networks] == ["10.244.0.0/16", "10.245.0.0/16", "fd00::/48"]
    assert [str(n) for n in env.subnets] == ["10.244.1.0/24", "fd00:0:0:1::/64"]
    assert (env.mtu, env.ipmasq) == (1450, True)
    d = delegate.build({"name": "n"}, env)
    assert d["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:0:0:1::/64"}]]
    assert [r["dst"] for r in d["ipam"]["routes"]] == ["10.244.0.0/16", "10.245.0.0/16", "fd00::/48"]
    assert d["ipMasq"] is False
