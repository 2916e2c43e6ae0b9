"""flannel-ext-cni under a real container runtime: podman's CNI backend, with runc.

podman runs under ``nsenter --net=`` into a test namespace, so the bridges, veths and NAT
rules the plugin's delegate makes land there, never in the root namespace. Its storage,
run and tmp dirs, its containers.conf and its CNI config dir are all under the test's
tmp_path; containers run from a minimal rootfs (the host's ``sleep`` and its libraries),
so no image is pulled. GC is not in podman 4's libcni, so that step is driven the way a
libcni ≥ 1.2 runtime sends it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from flannel_ext._util.netns import create_netns, sh
from netns.test_cni import CNI_PATH, FLAKY_BRIDGE

LIBCNI_CACHE = "/var/lib/cni/results"



def minimal_rootfs(root: Path, *programs: str) -> Path:
    """A rootfs holding `programs` and the shared libraries they load."""
    for program in programs:
        real = shutil.which(program)
        assert real, program
        libs = subprocess.run(["ldd", real], capture_output=True, text=True, check=True).stdout
        for path in [real] + [w for w in libs.split() if w.startswith("/")]:
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(path), dest)
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir(exist_ok=True)
    return root


class Podman:
    """podman with private storage and CNI config, run inside the `host` namespace."""

    def __init__(self, tmp: Path, host: str):
        self.tmp, self.host = tmp, host
        self.bin, self.netd = tmp / "bin", tmp / "net.d"
        self.bin.mkdir()
        self.netd.mkdir()
        plugin = shutil.which("flannel-ext-cni")
        assert plugin, "flannel-ext-cni console script not installed (pip install -e .)"
        (self.bin / "flannel-ext-cni").symlink_to(plugin)
        (self.bin / "flaky").write_text(FLAKY_BRIDGE)
        (self.bin / "flaky").chmod(0o755)
        self.conf = tmp / "containers.conf"
        self.conf.write_text(f"""[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{self.bin}", "{CNI_PATH}"]
network_config_dir = "{self.netd}"
""")
        self.rootfs = minimal_rootfs(tmp / "rootfs", "sleep")
        self.runroot = tempfile.mkdtemp(prefix="fxpod-", dir="/tmp")   # podman wants <= 50 characters
        self.networks: list[str] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["nsenter", f"--net=/run/netns/{self.host}", "podman", "--root", str(self.tmp / "root"),
                "--runroot", self.runroot, "--storage-driver", "vfs", "--tmpdir", str(self.tmp / "t"),
                *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CONTAINERS_CONF": str(self.conf)})
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    def network(self, name: str, subnet_env: str, **delegate) -> dict:
        """A flannel-ext conflist (plus portmap, like kube-flannel's) in podman's config dir."""
        (self.tmp / f"{name}.env").write_text(subnet_env)
        plugin = {"type": "flannel-ext-cni", "subnetFile": str(self.tmp / f"{name}.env"),
                  "dataDir": str(self.tmp / "cni"), "ipam": {"dataDir": str(self.tmp / "ipam")},
                  "delegate": {"hairpinMode": True, "isDefaultGateway": True, **delegate}}
        conflist = {"cniVersion": "1.0.0", "name": name,
                    "plugins": [plugin, {"type": "portmap", "capabilities": {"portMappings": True}}]}
        (self.netd / f"{name}.conflist").write_text(json.dumps(conflist, indent=2))
        self.networks.append(name)
        return {**plugin, "cniVersion": "1.0.0", "name": name}

    def run(self, name: str, *networks: str, check: bool = True) -> subprocess.CompletedProcess:
        return self("run", "-d", "--name", name, "--network", ",".join(networks),
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    "--rootfs", str(self.rootfs), shutil.which("sleep") or "sleep", "600", check=check)

    def addresses(self, name: str) -> dict[str, str]:
        nets = json.loads(self("inspect", name, "--format", "{{json .NetworkSettings.Networks}}").stdout)
        return {net: info["IPAddress"] for net, info in nets.items()}

    def container_id(self, name: str) -> str:
        return self("inspect", name, "--format", "{{.Id}}").stdout.strip()


@pytest.fixture
def podman(netns_prefix, tmp_path):
    host = create_netns(f"{netns_prefix}host")
    runtime = Podman(tmp_path, host)
    yield runtime
    runtime("rm", "-f", "-a", "-t", "0", check=False)
    shutil.rmtree(runtime.runroot, ignore_errors=True)
    # libcni keeps its own result cache, outside podman's dirs, for an attachment whose DEL failed.
    for name in runtime.networks:
        for stale in Path(LIBCNI_CACHE).glob(f"{name}-*"):
            stale.unlink()


def cached(tmp: Path) -> set[tuple[str, ...]]:
    root = tmp / "cni"
    return {p.relative_to(root).parts for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def held(tmp: Path, network: str) -> set[str]:
    d = tmp / "ipam" / network
    return {p.name for p in d.iterdir() if p.name[0].isdigit()} if d.exists() else set()


def nat_rules(host: str, network: str) -> list[str]:
    rules = sh(["ip", "netns", "exec", host, "iptables", "-t", "nat", "-S"]).stdout.splitlines()
    return [r for r in rules if f'name: \\"{network}\\"' in r]


def pings(host: str, address: str) -> bool:
    return sh(["ip", "netns", "exec", host, "ping", "-c1", "-W2", address], check=False).returncode == 0


def test_one_container_on_two_flannel_networks(podman, netns_prefix):
    """The issue's leak: both attachments are set up, reachable, and undone without a trace."""
    a, b = f"{netns_prefix}a", f"{netns_prefix}b"
    # Quoted values, as a hand-written subnet.env may have them; no ip-masq: the bridge NATs.
    podman.network(a, 'FLANNEL_NETWORK="10.198.0.0/16"\nFLANNEL_SUBNET="10.198.5.1/24"\n'
                      'FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n', bridge=f"{netns_prefix[:8]}a")
    podman.network(b, "FLANNEL_NETWORK=10.197.0.0/16\nFLANNEL_SUBNET=10.197.9.1/24\n"
                      "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n", bridge=f"{netns_prefix[:8]}b")
    podman.run("c1", a, b)
    cid = podman.container_id("c1")
    addrs = podman.addresses("c1")
    assert ipaddress.ip_address(addrs[a]) in ipaddress.ip_network("10.198.5.0/24")
    assert ipaddress.ip_address(addrs[b]) in ipaddress.ip_network("10.197.9.0/24")
    # one cache entry per attachment; podman may hand out eth0/eth1 in either order
    entries = cached(podman.tmp)
    assert {(net, c) for net, c, _ in entries} == {(a, cid), (b, cid)}
    assert sorted(ifname for _, _, ifname in entries) == ["eth0", "eth1"]
    assert held(podman.tmp, a) == {addrs[a]} and held(podman.tmp, b) == {addrs[b]}
    assert nat_rules(podman.host, a) and nat_rules(podman.host, b)
    assert pings(podman.host, addrs[a]) and pings(podman.host, addrs[b])

    podman("rm", "-f", "-t", "0", "c1")
    assert cached(podman.tmp) == set()
    assert held(podman.tmp, a) == set() and held(podman.tmp, b) == set(), "an address leaked"
    assert nat_rules(podman.host, a) == [] and nat_rules(podman.host, b) == [], "a NAT rule leaked"


def test_a_missing_subnet_env_is_not_command_not_found(podman, netns_prefix):
    net = f"{netns_prefix}n"
    podman.network(net, "")
    (podman.tmp / f"{net}.env").unlink()
    proc = podman.run("c1", net, check=False)
    assert proc.returncode not in (0, 127), proc.returncode   # 127 is "command not found"
    assert f"subnet.env {podman.tmp / net}.env does not exist yet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gc_collects_what_a_failed_delete_left(podman, netns_prefix):
    net = f"{netns_prefix}n"
    conf = podman.network(net, "FLANNEL_NETWORK=10.198.0.0/16\nFLANNEL_SUBNET=10.198.6.1/24\n"
                               "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n",
                          type="flaky", isGateway=True, bridge=f"{netns_prefix[:8]}n")
    podman.run("gone", net)
    podman.run("kept", net)
    gone, kept = podman.container_id("gone"), podman.container_id("kept")
    kept_ip = podman.addresses("kept")[net]
    assert len(held(podman.tmp, net)) == 2

    (podman.bin / "fail-del").touch()
    podman("rm", "-f", "-t", "0", "gone", check=False)   # podman logs the failed teardown
    assert (net, gone, "eth0") in cached(podman.tmp), "the entry of a failed DEL must stay"
    assert len(held(podman.tmp, net)) == 2
    (podman.bin / "fail-del").unlink()

    # GC as libcni >= 1.2 sends it: the network's plugin config at 1.1.0 plus the valid set.
    gc = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": kept, "ifname": "eth0"}]}
    proc = subprocess.run(["ip", "netns", "exec", podman.host, str(podman.bin / "flannel-ext-cni")],
                          input=json.dumps(gc), capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "CNI_COMMAND": "GC",
                               "CNI_PATH": f"{podman.bin}:{CNI_PATH}"})
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr
    assert cached(podman.tmp) == {(net, kept, "eth0")}
    assert held(podman.tmp, net) == {kept_ip}
    assert pings(podman.host, kept_ip), "GC disturbed the container it was told to keep"
