"""demo/Makefile: every target dry-runs (`make -n`) and uses the chosen recipe.

No Docker engine or minikube runs here, so the commands are checked as text; the
manifest they pipe to kubectl is checked against the schema in test_manifest.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "demo")
TARGETS = ["minikube-start", "minikube-build-image", "minikube-deploy", "minikube-remove",
           "minikube-restart-pod", "kubernetes-logs", "minikube-delete", "manifest", "help"]



def dry_run(target: str, *variables: str) -> str:
    proc = subprocess.run(["make", "-n", "-C", DEMO, target, *variables],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_phony_target_is_covered():
    with open(os.path.join(DEMO, "Makefile")) as f:
        text = f.read()
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", text, re.M | re.S).group(1)
    assert sorted(phony.replace("\\", " ").split()) == sorted(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("recipe", ["vxlan", "host-gw"])
def test_make_n_names_the_recipe(target, recipe):
    out = dry_run(target, f"RECIPE={recipe}")
    assert f"recipe {recipe}: {REPO}/recipes/{recipe}.json" in out


def test_the_talk_targets():
    start = dry_run("minikube-start")
    assert "minikube start -p flannel-ext --nodes 1 --cni=false " in start
    assert "--network-plugin" not in start    # deprecated by minikube
    assert "--extra-config=kubeadm.pod-network-cidr=10.244.0.0/16" in start
    assert "minikube -p flannel-ext image build --all -t fx:1 " + REPO in dry_run("minikube-build-image", "IMAGE=fx:1")
    deploy = dry_run("minikube-deploy", "RECIPE=host-gw", "IMAGE=fx:1")
    manifest = ("flannel-ext manifest --recipe host-gw --network 10.244.0.0/16 --image fx:1 "
                "--namespace kube-flannel")
    assert f"{manifest} | kubectl apply -f -" in deploy
    assert "--no-ip-masq" in dry_run("minikube-deploy", "IP_MASQ=false")   # on by default, like kube-flannel.yml
    own = dry_run("minikube-deploy", "NET_CONF=/x/nc.json", "POD_CIDR=10.9.0.0/16")
    assert "flannel-ext manifest --net-conf /x/nc.json --network 10.9.0.0/16 " in own
    assert "kubectl -n net rollout restart ds/flannel-ext-ds" in dry_run("minikube-restart-pod", "NAMESPACE=net")
    assert "logs -f -l app=flannel-ext" in dry_run("kubernetes-logs")


# A stateful stand-in for kubectl: the namespaces a cluster has, with their labels, in a
# JSON file; `apply`/`delete -f -` honour `-l` (equality and `!key`) as kubectl does.
FAKE_KUBECTL = r"""#!/usr/bin/env python3
import json, os, sys
import yaml

state_path = os.environ["FAKE_CLUSTER"]
state = json.load(open(state_path))
args = sys.argv[1:]
selector = args[args.index("-l") + 1] if "-l" in args else ""


def selected(labels):
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif key not in labels or (value and labels[key] != value):
            return False
    return True


if args[:2] == ["get", "namespace"]:
    sys.exit(0 if args[2] in state["namespaces"] else 1)
if args[0] in ("apply", "delete") and "-f" in args:
    for doc in yaml.safe_load_all(sys.stdin):
        meta = doc["metadata"]
        if not selected(meta.get("labels", {})):
            continue
        state["log"].append(f"{args[0]} {doc['kind']}/{meta['name']}")
        if doc["kind"] == "Namespace" and args[0] == "apply":
            state["namespaces"][meta["name"]] = meta.get("labels", {})
        elif doc["kind"] == "Namespace":
            state["namespaces"].pop(meta["name"], None)
elif args[:2] == ["delete", "namespace"]:
    name = args[args.index("--field-selector") + 1].split("metadata.name=")[1]
    if name in state["namespaces"] and selected(state["namespaces"][name]):
        del state["namespaces"][name]
        state["log"].append(f"delete Namespace/{name}")
json.dump(state, open(state_path, "w"))
"""


@pytest.fixture
def cluster(tmp_path):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    kubectl.chmod(0o755)
    state = tmp_path / "cluster.json"

    def make(target, namespaces=None):
        if namespaces is not None:
            state.write_text(json.dumps({"namespaces": namespaces, "log": []}))
        proc = subprocess.run(["make", "-s", "-C", DEMO, target, f"KUBECTL={kubectl}"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "FAKE_CLUSTER": str(state)})
        assert proc.returncode == 0, proc.stderr
        return json.loads(state.read_text())
    return make


def test_remove_keeps_a_namespace_it_did_not_create(cluster):
    cluster("minikube-deploy", {"kube-flannel": {"owner": "someone-else"}})
    after = cluster("minikube-remove")
    assert "apply Namespace/kube-flannel" not in after["log"]
    assert after["namespaces"] == {"kube-flannel": {"owner": "someone-else"}}
    assert {"apply DaemonSet/flannel-ext-ds", "delete DaemonSet/flannel-ext-ds", "delete ClusterRole/flannel-ext",
            "delete ConfigMap/flannel-ext-cfg"} <= set(after["log"])


def test_remove_deletes_the_namespace_it_created(cluster):
    deployed = cluster("minikube-deploy", {})
    assert "apply Namespace/kube-flannel" in deployed["log"]
    assert cluster("minikube-deploy")["namespaces"]["kube-flannel"]["flannel-ext/created-by"] == "manifest"
    after = cluster("minikube-remove")
    assert after["namespaces"] == {}
    assert "delete DaemonSet/flannel-ext-ds" in after["log"] and after["log"][-1] == "delete Namespace/kube-flannel"


def test_manifest_target_renders_a_recipe():
    recipes = sorted(f for f in os.listdir(os.path.join(REPO, "recipes")) if f.endswith(".json"))
    assert recipes, "recipes/ ships no JSON recipe"
    recipe = recipes[0][:-len(".json")]
    proc = subprocess.run(["make", "-s", "-C", DEMO, "manifest", f"RECIPE={recipe}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout.split("\n", 1)[1]) if d]
    assert [d["kind"] for d in docs][-1] == "DaemonSet"
