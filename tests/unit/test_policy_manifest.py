"""`flannel-ext manifest --policy`: the RBAC, arguments and br_netfilter step policy needs."""
from __future__ import annotations

import argparse
import os

import yaml

from flannel_ext._commands import manifest
from unit.test_manifest import by_kind, validate

VXLAN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "recipes", "vxlan.json")


def test_policy_adds_rbac_args_and_br_netfilter():
    docs = manifest.render_objects(VXLAN, policy="nftables")
    for doc in docs:
        validate(doc)
    kinds = by_kind(docs)
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in kinds["ClusterRole"]["rules"]}
    assert rules[(("",), ("pods", "namespaces"))] == ["list", "watch"]
    assert rules[(("networking.k8s.io",), ("networkpolicies",))] == ["list", "watch"]
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[command.index("--policy") + 1] == "nftables"
    assert command[command.index("--policy-source") + 1] == "kube"
    assert "NET_ADMIN" in pod["containers"][0]["securityContext"]["capabilities"]["add"]
    init = {c["name"]: c for c in pod["initContainers"]}["enable-br-netfilter"]
    assert init["securityContext"]["privileged"] is True
    assert "bridge-nf-call-iptables" in init["args"][0]
    assert {v["name"] for v in pod["volumes"]} >= {"lib-modules"}


def test_without_policy_nothing_changes():
    kinds = by_kind(manifest.render_objects(VXLAN))
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    assert "--policy" not in pod["containers"][0]["command"]
    assert [c["name"] for c in pod["initContainers"]] == ["install-cni"]
    assert all("networkpolicies" not in r["resources"] for r in kinds["ClusterRole"]["rules"])


def test_cli_flag_defaults_to_nftables(capsys):
    parser = argparse.ArgumentParser()
    manifest.register(parser.add_subparsers())
    for argv, hook in ((["--policy"], "nftables"), (["--policy", "log"], "log")):
        args = parser.parse_args(["manifest", "--net-conf", VXLAN, *argv])
        assert args.func(args) == 0
        command = by_kind(yaml.safe_load_all(capsys.readouterr().out))["DaemonSet"][
            "spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--policy") + 1] == hook
