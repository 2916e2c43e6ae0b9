"""demo/Makefile: every target dry-runs (`make -n`) and uses the chosen recipe.

No Docker engine or minikube runs here, so the commands are checked as text; the
manifest they pipe to kubectl is checked against the schema in test_manifest.py.
"""
from __future__ import annotations

import os
import re
import subprocess

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
    assert "--network-plugin=cni --cni=false" in dry_run("minikube-start")
    assert re.search(r"kubeadm\.pod-network-cidr=\d+\.\d+\.\d+\.\d+/\d+", dry_run("minikube-start"))
    build = dry_run("minikube-build-image", "IMAGE=fx:1")
    assert "eval $(minikube -p flannel-ext docker-env) && docker build -t fx:1 " + REPO in build
    assert "image build --all -t fx:1" in dry_run("minikube-build-image", "IMAGE=fx:1", "NODES=2")
    deploy = dry_run("minikube-deploy", "RECIPE=host-gw", "IMAGE=fx:1", "IP_MASQ=1")
    assert (f"flannel-ext manifest --net-conf {REPO}/recipes/host-gw.json --image fx:1 "
            "--namespace kube-flannel --ip-masq | kubectl apply -f -") in deploy
    assert "--ip-masq" not in dry_run("minikube-deploy")
    assert "| kubectl delete --ignore-not-found -f -" in dry_run("minikube-remove")
    assert "kubectl -n net rollout restart ds/flannel-ext-ds" in dry_run("minikube-restart-pod", "NAMESPACE=net")
    assert "logs -f -l app=flannel-ext" in dry_run("kubernetes-logs")


def test_manifest_target_renders_a_recipe():
    recipes = sorted(f for f in os.listdir(os.path.join(REPO, "recipes")) if f.endswith(".json"))
    assert recipes, "recipes/ ships no JSON recipe"
    recipe = recipes[0][:-len(".json")]
    proc = subprocess.run(["make", "-s", "-C", DEMO, "manifest", f"RECIPE={recipe}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout.split("\n", 1)[1]) if d]
    assert [d["kind"] for d in docs][-1] == "DaemonSet"
