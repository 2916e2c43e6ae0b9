"""`flannel-ext manifest`: every rendered object must be a valid Kubernetes object.

Two checks per object: the `kubernetes` client's typed deserialisation (required fields
and value types, via its pydantic models) and a walk of the raw dict against each model's
`attribute_map`/`openapi_types`, because deserialisation silently drops unknown keys, so
a misspelt `hostNetwrk` would otherwise pass. The sh CNI plugin is run against a stub
`bridge` to pin the delegate config it hands over (flannel's, compat §5).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess

import pytest
import yaml
from kubernetes import client

from flannel_ext._util.errors import ConfigError
from flannel_ext._commands import manifest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "*.json")))
MODELS = {("v1", "Namespace"): "V1Namespace", ("v1", "ServiceAccount"): "V1ServiceAccount",
          ("v1", "ConfigMap"): "V1ConfigMap", ("apps/v1", "DaemonSet"): "V1DaemonSet",
          ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
          ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding"}
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float)}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
HOOK_SOURCE = "from flannel_ext import Hook\n\n\nclass MyHook(Hook):\n    \"\"\"Does nothing.\"\"\"\n"


def schema_errors(data, type_name: str, path: str = "") -> list[str]:
    """Every key the model does not know and every value of the wrong JSON type."""
    if type_name.startswith("List["):
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {data!r}"]
        return [e for i, item in enumerate(data) for e in schema_errors(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("Dict["):
        if not isinstance(data, dict):
            return [f"{path}: expected a map, got {data!r}"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, v in data.items() for e in schema_errors(v, inner, f"{path}.{k}")]
    if type_name == "object":          # IntOrString, Quantity and friends
        return [] if isinstance(data, (str, int)) else [f"{path}: expected int or string, got {data!r}"]
    if type_name in SCALARS:
        ok = isinstance(data, SCALARS[type_name]) and (type_name == "bool" or not isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {data!r}"]
    model = getattr(client.models, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} object, got {data!r}"]
    by_json = {v: k for k, v in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            errors.extend(schema_errors(value, model.openapi_types[by_json[key]], f"{path}.{key}"))
    return errors


def validate(doc: dict):
    """Deserialise `doc` into its typed model (raises on bad values) and walk it."""
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    obj = client.ApiClient().deserialize(json.dumps(doc), model, "application/json")
    assert type(obj).__name__ == model
    errors = schema_errors(doc, model, doc["kind"])
    assert not errors, "\n".join(errors)
    return obj


def _netconfs(tmp_path) -> list[str]:
    py = tmp_path / "python-recipe.json"
    py.write_text(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "extension", "Hook": "vxlan"}}))
    (tmp_path / "my_hook.py").write_text(HOOK_SOURCE)
    file_hook = tmp_path / "file-hook.json"
    file_hook.write_text(json.dumps({"Network": "10.244.0.0/16", "Backend": {
        "Type": "extension", "hook": "my_hook.py:MyHook", "VNI": 7}}))
    return RECIPES + [str(py), str(file_hook)]


@pytest.fixture(params=RECIPES + ["python-recipe", "file-hook"],
                ids=lambda p: os.path.basename(p))
def netconf(request, tmp_path):
    known = {os.path.basename(p).rsplit(".", 1)[0]: p for p in _netconfs(tmp_path)}
    return known.get(request.param, request.param)


def by_kind(docs):
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("ip_masq", [False, True])
def test_every_object_validates_against_the_schema(netconf, ip_masq):
    docs = manifest.render_objects(netconf, ip_masq=ip_masq)
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ClusterRole",
                                         "ClusterRoleBinding", "ConfigMap", "DaemonSet"]
    for doc in docs:
        validate(doc)
        assert DNS_LABEL.match(doc["metadata"]["name"]), doc["metadata"]["name"]
    cm = by_kind(docs)["ConfigMap"]
    assert all(re.match(r"^[-._a-zA-Z0-9]+$", key) for key in cm["data"])
    conf = json.loads(cm["data"]["net-conf.json"])
    assert conf["Network"]
    command = by_kind(docs)["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert ("--ip-masq" in command) is ip_masq


def test_the_walk_catches_unknown_and_mistyped_fields(tmp_path):
    ds = by_kind(manifest.render_objects(_netconfs(tmp_path)[-1]))["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    pod["hostNetwrk"] = True
    pod["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8081]
    pod["containers"][0]["securityContext"]["privileged"] = "false"
    errors = schema_errors(ds, "V1DaemonSet", "DaemonSet")
    assert any("hostNetwrk: unknown field of V1PodSpec" in e for e in errors)
    assert any("httpGet.port: expected int or string" in e for e in errors)
    assert any("privileged: expected bool" in e for e in errors)
    with pytest.raises(Exception, match="port"):     # typed deserialisation rejects bad values
        validate(ds)
    pod["containers"][0]["livenessProbe"]["httpGet"]["port"] = 8081
    pod["containers"][0]["securityContext"]["privileged"] = False
    del pod["containers"][0]["name"]
    with pytest.raises(Exception, match="name"):
        validate(ds)


def test_daemonset_matches_kube_flannel_yml(netconf):
    docs = by_kind(manifest.render_objects(netconf, image="reg/fx:1", namespace="net"))
    ds = docs["DaemonSet"]
    assert ds["metadata"]["namespace"] == "net"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    main = pod["containers"][0]
    assert main["image"] == "reg/fx:1" and pod["initContainers"][0]["image"] == "reg/fx:1"
    assert main["command"][:2] == ["flannel-ext", "run"] and "--kube-subnet-mgr" in main["command"]
    assert main["command"][main["command"].index("--net-conf") + 1] == "/etc/kube-flannel/net-conf.json"
    assert main["command"][main["command"].index("--healthz-port") + 1] == "8081"
    assert main["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert main["securityContext"]["privileged"] is False
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081}
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in main["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert sorted(host.values()) == ["/etc/cni/net.d", "/opt/cni/bin", "/run/flannel", "/run/xtables.lock",
                                     "/var/lib/flannel-ext"]
    # the programmed-state file survives a pod restart, so the new pod can reconcile
    assert host[next(n for n, p in {m["name"]: m["mountPath"] for m in main["volumeMounts"]}.items()
                     if p == "/var/lib/flannel-ext")] == "/var/lib/flannel-ext"
    cfg = next(v for v in pod["volumes"] if "configMap" in v)
    assert cfg["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts[cfg["name"]] == "/etc/kube-flannel/"
    assert host[next(n for n, p in mounts.items() if p == "/run/flannel")] == "/run/flannel"
    init = pod["initContainers"][0]
    script = " ".join(init["command"] + init["args"])
    assert "/opt/cni/bin/flannel-ext-cni" in script and "/etc/cni/net.d/10-flannel-ext.conflist" in script
    init_mounts = {m["mountPath"]: host.get(m["name"], m["name"]) for m in init["volumeMounts"]}
    assert init_mounts["/opt/cni/bin"] == "/opt/cni/bin" and init_mounts["/etc/cni/net.d"] == "/etc/cni/net.d"


def test_rbac_and_namespace(netconf):
    docs = by_kind(manifest.render_objects(netconf, namespace="net"))
    labels = docs["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    rules = {(tuple(r["apiGroups"]), r["resources"][0]): sorted(r["verbs"]) for r in docs["ClusterRole"]["rules"]}
    assert rules == {(("",), "pods"): ["get"], (("",), "nodes"): ["get", "list", "watch"],
                     (("",), "nodes/status"): ["patch"]}
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": docs["ServiceAccount"]["metadata"]["name"],
                                    "namespace": "net"}]
    for kind in ("ServiceAccount", "ConfigMap", "DaemonSet"):
        assert docs[kind]["metadata"]["namespace"] == "net"


def test_configmap_cni_conflist(netconf):
    conf = json.loads(by_kind(manifest.render_objects(netconf))["ConfigMap"]["data"]["cni-conf.json"])
    assert conf["name"] == "cbr0" and conf["cniVersion"] == "0.3.1"
    assert conf["plugins"][0] == {"type": "flannel-ext-cni",
                                  "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    assert conf["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_net_conf_is_shipped_verbatim(tmp_path):
    path = tmp_path / "nc.json"
    text = '{\n  "Network": "10.33.0.0/16",  "Backend": {"Type": "extension",\n\t"SubnetAddCommand": "ip route add $SUBNET"}}\n'
    path.write_text(text)
    assert by_kind(manifest.render_objects(str(path)))["ConfigMap"]["data"]["net-conf.json"] == text


def test_a_file_hook_is_shipped_and_pointed_at(tmp_path):
    cm = by_kind(manifest.render_objects(_netconfs(tmp_path)[-1]))["ConfigMap"]
    assert cm["data"]["my_hook.py"] == HOOK_SOURCE
    conf = json.loads(cm["data"]["net-conf.json"])
    assert conf["Backend"] == {"Type": "extension", "hook": "/etc/kube-flannel/my_hook.py:MyHook", "VNI": 7}


def test_recipe_and_module_hooks_are_left_alone(tmp_path):
    path = tmp_path / "nc.json"
    path.write_text(json.dumps({"Network": "10.1.0.0/16", "Backend": {"Type": "extension", "Hook": "pkg.mod:Cls"}}))
    cm = by_kind(manifest.render_objects(str(path)))["ConfigMap"]
    assert sorted(cm["data"]) == ["cni-conf.json", "net-conf.json"]
    assert json.loads(cm["data"]["net-conf.json"])["Backend"]["Hook"] == "pkg.mod:Cls"


@pytest.mark.parametrize("content, problem", [
    ('{"Network": "10.1.0.0/16", "Backend": {"Type": "extension", "Hook": "nope.py:X"}}', "does not exist"),
    ('{"Backend": {"Type": "extension"}}', "Network"),
    ('{"Network": ', "JSON"),
])
def test_bad_net_conf_is_a_config_error(tmp_path, content, problem):
    path = tmp_path / "nc.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        manifest.render_manifest(str(path))
    with pytest.raises(ConfigError):
        manifest.render_manifest(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("text", [
    "plain", "two\nlines\n", "no newline\nat end", "  leading space\n", "trailing  \n", "x\n\n",
    "tab\there\n", "quote: \"'#&*!|>\n", "\n", "", "\r\nwin", "ünïcode\n", "a\n\n\nb\n", "\x07bell",
])
def test_yaml_block_round_trips(text):
    assert yaml.safe_load("k: " + manifest.yaml_block(text, 2) + "\n")["k"] == text


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    manifest.register(parser.add_subparsers())
    nc = _netconfs(tmp_path)[-2]
    args = parser.parse_args(["manifest", "--net-conf", nc, "--image", "x/y:z", "--ip-masq"])
    assert args.func(args) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert by_kind(docs)["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["image"] == "x/y:z"
    args = parser.parse_args(["manifest", "--cni-plugin"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="--net-conf"):
        args = parser.parse_args(["manifest"])
        args.func(args)


# --- the sh CNI plugin ---------------------------------------------------------------------

STUB = """#!/bin/sh
cat > "$(dirname "$0")/stdin.$CNI_COMMAND"
echo '{"cniVersion":"0.3.1","ips":[]}'
"""


@pytest.fixture
def cni(tmp_path):
    plugin = tmp_path / "flannel-ext-cni"
    plugin.write_text(manifest.cni_plugin_script())
    plugin.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bridge").write_text(STUB)
    (bindir / "bridge").chmod(0o755)
    subnet = tmp_path / "subnet.env"
    subnet.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n"
                      "FLANNEL_IPMASQ=true\n")
    conf = {"cniVersion": "0.3.1", "delegate": {"hairpinMode": True, "isDefaultGateway": True},
            "name": "cbr0", "type": "flannel-ext-cni", "subnetFile": str(subnet),
            "dataDir": str(tmp_path / "data")}

    def call(command, config=conf, container="c1"):
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": f"/nonexistent:{bindir}"}
        return subprocess.run([str(plugin)], input=json.dumps(config, indent=1), env=env,
                              capture_output=True, text=True, timeout=10)
    call.bindir, call.tmp, call.conf, call.subnet = bindir, tmp_path, conf, subnet
    return call


def test_cni_add_delegates_like_flannel(cni):
    proc = cni("ADD")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {"cniVersion": "0.3.1", "ips": []}
    delegate = json.loads((cni.bindir / "stdin.ADD").read_text())
    assert delegate == {
        "cniVersion": "0.3.1", "name": "cbr0", "hairpinMode": True, "isDefaultGateway": True,
        "type": "bridge", "ipMasq": False, "mtu": 1450, "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.7.0/24"}]],
                 "routes": [{"dst": "10.244.0.0/16"}]}}
    # DEL hands the saved config over even when subnet.env is gone, then forgets it.
    cni.subnet.unlink()
    assert cni("DEL").returncode == 0
    assert json.loads((cni.bindir / "stdin.DEL").read_text()) == delegate
    assert not (cni.tmp / "data" / "c1").exists()
    assert cni("DEL").returncode == 0, "a second DEL is a no-op"


def test_cni_honours_delegate_keys_and_ipmasq(cni):
    cni.subnet.write_text("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.130.129/25\nFLANNEL_MTU=1400\n"
                          "FLANNEL_IPMASQ=false\n")
    conf = dict(cni.conf, delegate={"mtu": 1300, "bridge": "cni9"})
    assert cni("ADD", conf).returncode == 0
    delegate = json.loads((cni.bindir / "stdin.ADD").read_text())
    assert delegate["mtu"] == 1300 and delegate["bridge"] == "cni9" and delegate["ipMasq"] is True
    assert delegate["ipam"]["ranges"] == [[{"subnet": "10.5.130.128/25"}]]


def test_cni_errors_are_cni_json(cni):
    cni.subnet.unlink()
    proc = cni("ADD")
    assert proc.returncode != 0
    err = json.loads(proc.stdout)
    assert err["code"] == 11 and "subnet.env" in err["msg"]
    cni.subnet.write_text("FLANNEL_NETWORK=10.244.0.0/16\n")
    err = json.loads(cni("ADD").stdout)
    assert err["code"] == 4 and "FLANNEL_SUBNET" in err["msg"]
    (cni.bindir / "bridge").unlink()
    cni.subnet.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n"
                          "FLANNEL_IPMASQ=true\n")
    err = json.loads(cni("ADD").stdout)
    assert err["code"] == 7 and "bridge" in err["msg"]
    assert json.loads(cni("VERSION").stdout)["supportedVersions"][-1] == "1.0.0"
    assert json.loads(cni("CHECK", container="unknown").stdout)["code"] == 11


def test_cni_script_passes_shellcheck(tmp_path):
    script = tmp_path / "flannel-ext-cni"
    script.write_text(manifest.cni_plugin_script())
    proc = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
