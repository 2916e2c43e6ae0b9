"""`lab up --tune-kernel` writes the host's real neighbour-table sysctls and `lab down`
gives them back, also after an `up` that failed half-way.

The thresholds are global (initial namespace), so the test only ever *raises* them by one
(harmless to anything else on the machine), and its finally restores the values it found,
whatever happened.
"""
from __future__ import annotations

import json
import pathlib

import pytest

from flannel_ext._lab import kernel, ops
from flannel_ext._lab.state import Lab
from flannel_ext._util import neigh

NAMES = [neigh.sysctl_name("ipv4", 3), neigh.sysctl_name("ipv6", 3)]


@pytest.fixture
def sysctls():
    if neigh.read_table("ipv4") is None:
        pytest.skip("needs the initial namespace's /proc/sys/net/ipv4/neigh/default")
    found = {name: neigh.read_sysctl(name) for name in NAMES}
    try:
        yield found
    finally:
        for name, value in found.items():
            neigh.write_sysctl(name, value)


@pytest.fixture
def bumped_plan(monkeypatch, sysctls):
    """`lab up` believes the lab needs one more entry than the tables allow."""
    real = kernel.plan

    def plan(nodes, pods_per_node, vxlan, proc="/proc", **options):
        result = real(nodes, pods_per_node, vxlan, proc, **options)
        result.settings = {name: value + 1 for name, value in sysctls.items()}
        result.short = ["(test) one entry short"]
        return result
    monkeypatch.setattr(kernel, "plan", plan)
    return {name: value + 1 for name, value in sysctls.items()}


def _conf(tmp_path: pathlib.Path, backend: dict) -> str:
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.50.0.0/16", "Backend": backend}))
    return str(path)


def test_refused_without_the_flag_and_nothing_is_created(netns_prefix, tmp_path, monkeypatch, bumped_plan, sysctls):
    monkeypatch.setenv("FLANNEL_EXT_LAB_ROOT", str(tmp_path / "labs"))
    name = netns_prefix.rstrip("-")
    with pytest.raises(ops.LabError, match="sysctl -w net.ipv4.neigh.default.gc_thresh3="):
        ops.up(name, 2, 1, _conf(tmp_path, {"Type": "extension", "Hook": "vxlan"}), out=lambda _: None)
    assert not (tmp_path / "labs" / name).exists()
    assert {n: neigh.read_sysctl(n) for n in NAMES} == sysctls


def test_tune_then_down_restores(netns_prefix, tmp_path, monkeypatch, bumped_plan, sysctls):
    monkeypatch.setenv("FLANNEL_EXT_LAB_ROOT", str(tmp_path / "labs"))
    name = netns_prefix.rstrip("-")
    lines: list[str] = []
    try:
        report = ops.up(name, 2, 1, _conf(tmp_path, {"Type": "extension", "Hook": "host-gw"}),
                        tune_kernel=True, out=lines.append)
        assert report.ok
        assert {n: neigh.read_sysctl(n) for n in NAMES} == bumped_plan
        assert Lab.load(name).kernel["old"] == sysctls
        assert any(line.startswith("kernel: sysctl -w ") for line in lines)
    finally:
        ops.down(name, out=lines.append)
    assert {n: neigh.read_sysctl(n) for n in NAMES} == sysctls
    assert any(line.startswith("kernel: restored ") for line in lines)


def test_a_failed_up_still_restores_on_down(netns_prefix, tmp_path, monkeypatch, bumped_plan, sysctls):
    monkeypatch.setenv("FLANNEL_EXT_LAB_ROOT", str(tmp_path / "labs"))
    name = netns_prefix.rstrip("-")
    # A Python hook that does not exist: every daemon exits before writing subnet.env.
    conf = _conf(tmp_path, {"Type": "extension", "Hook": "no_such_recipe_xyz"})
    try:
        with pytest.raises(ops.LabError, match="exited before writing subnet.env"):
            ops.up(name, 2, 1, conf, tune_kernel=True, timeout=20, out=lambda _: None)
        assert {n: neigh.read_sysctl(n) for n in NAMES} == bumped_plan
    finally:
        ops.down(name, out=lambda _: None)
    assert {n: neigh.read_sysctl(n) for n in NAMES} == sysctls
