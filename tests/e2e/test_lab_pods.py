"""`lab up --pods`, `lab check --port/--protocol/--expect`, `lab apply` input errors and
`lab status --json` pods: the lab's side of network policy, without any policy applied.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from policy_lab import PODS, REPO, Reachability, lab_cmd, node_of, ok, pods_yaml

from flannel_ext._lab.pods import sctp_available
from flannel_ext._lab.state import lab_dir



def _table(name: str, port: int, protocol: str, *extra: str) -> tuple[int, dict]:
    proc = lab_cmd("check", "--name", name, "--port", str(port), "--protocol", protocol, "--json", *extra)
    return proc.returncode, json.loads(proc.stdout)


def test_pods_from_yaml_serve_their_ports_and_tables_compare(lab_name, tmp_path):
    pods = tmp_path / "pods.yaml"
    pods.write_text(pods_yaml())
    out = ok(lab_cmd("up", "--name", lab_name, "--nodes", "3", "--net-conf", str(REPO / "recipes" / "vxlan.json"),
                     "--pods", str(pods), "--no-policy"))
    assert "9 pods via flannel-ext-cni from pods.yaml" in out and "72/72 pairs ok" in out

    status = json.loads(ok(lab_cmd("status", "--name", lab_name, "--json")))
    rows = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    assert sorted(rows) == PODS
    for i, ns in enumerate("xyz"):
        for j, pod in enumerate("abc"):
            row = rows[f"{ns}/{pod}"]
            assert row["labels"] == {"pod": pod} and row["node"] == node_of(i, j)
    # cluster.json (the agents' input) carries the same pods with their IPs and ports.
    with open(os.path.join(lab_dir(lab_name), "cluster.json")) as f:
        cluster = json.load(f)
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]): p["status"]["podIP"] for p in cluster["pods"]} \
        == {tuple(k.split("/")): r["ip"] for k, r in rows.items()}
    assert {n["metadata"]["name"]: n["metadata"]["labels"] for n in cluster["namespaces"]} \
        == {"x": {"ns": "x"}, "y": {"ns": "y"}, "z": {"ns": "z"}}

    # Every declared port answers from every pod, on TCP and UDP; an undeclared one does not.
    for port, protocol in ((80, "TCP"), (81, "UDP"), (81, "TCP"), (80, "UDP")):
        rc, doc = _table(lab_name, port, protocol)
        assert rc == 0 and doc["summary"] == {"pairs": 72, "allowed": 72, "blocked": 0}
        assert {(p["port"], p["protocol"]) for p in doc["pairs"]} == {(port, protocol)}
        assert {p["src"] for p in doc["pairs"]} == set(PODS)
    rc, doc = _table(lab_name, 82, "TCP", "--timeout", "0.5")
    assert rc == 0 and doc["summary"]["allowed"] == 0

    # --expect: the text form and the JSON form; one wrong cell is named and exits 1.
    want = Reachability().expect("y/b", "x/a", False)
    expect = tmp_path / "expect.json"
    expect.write_text(want.json())
    proc = lab_cmd("check", "--name", lab_name, "--port", "80", "--protocol", "TCP", "--expect", str(expect))
    assert proc.returncode == 1
    assert "DIFF y/b -> x/a TCP/80: expected blocked, got allowed" in proc.stdout
    assert "1 cell(s) differ" in proc.stdout
    text = ok(lab_cmd("check", "--name", lab_name, "--port", "80"))
    (tmp_path / "expect.txt").write_text(text)
    assert "matches" in ok(lab_cmd("check", "--name", lab_name, "--port", "80", "--expect",
                                   str(tmp_path / "expect.txt"), "--wait", "5"))


def test_bad_pods_file_and_bad_apply_are_one_line(lab_name, tmp_path):
    net_conf = str(REPO / "recipes" / "host-gw.json")
    cases = {
        "spec:\n  nodeName: n1\n": "not a Kubernetes object",
        "kind: Pod\nmetadata: {name: a}\nspec: {nodeName: n9}\n": "spec.nodeName must name a lab node",
        "kind: Pod\nmetadata: {name: a}\nspec: {nodeName: n1, containers: [{ports: [{containerPort: 99999}]}]}\n":
            "spec.containers[0].ports[0].containerPort",
        "kind: Pod\nmetadata: {name: a}\nspec: {nodeName: n1, containers: [{ports: [{containerPort: 80, "
        "protocol: ICMP}]}]}\n": "protocol must be TCP, UDP or SCTP",
        "kind: Deployment\nmetadata: {name: a}\n": "Namespace and Pod objects only",
        "kind: Pod\nmetadata: {name: a}\nspec: {nodeName: n1}\n---\nkind: Pod\nmetadata: {name: a}\n"
        "spec: {nodeName: n2}\n": "defined twice",
        "kind: [": "not YAML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        proc = lab_cmd("up", "--name", lab_name, "--nodes", "2", "--net-conf", net_conf, "--pods", str(bad))
        assert proc.returncode != 0 and message in proc.stderr, (text, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "bad.yaml" in proc.stderr
        assert not os.path.exists(lab_dir(lab_name))  # checked before anything was made

    pods = tmp_path / "pods.yaml"
    pods.write_text("kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: n1}\n")
    ok(lab_cmd("up", "--name", lab_name, "--nodes", "1", "--net-conf", net_conf, "--pods", str(pods),
               "--no-policy"))
    proc = lab_cmd("apply", "--name", lab_name, "-f", "-",
                   input="kind: Pod\nmetadata: {name: zz, namespace: x}\n")
    assert proc.returncode != 0 and "no pod x/zz in this lab" in proc.stderr and "Traceback" not in proc.stderr
    proc = lab_cmd("delete", "--name", lab_name, "-f", "-",
                   input="kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n"
                         "metadata: {name: gone, namespace: x}\n")
    assert proc.returncode == 1 and "networkpolicy x/gone not found" in proc.stdout
    # Labels applied to a pod and a namespace land in cluster.json, bumping its generation.
    with open(os.path.join(lab_dir(lab_name), "cluster.json")) as f:
        before = json.load(f)["generation"]
    out = ok(lab_cmd("apply", "--name", lab_name, "-f", "-",
                     input="kind: Pod\nmetadata: {name: a, namespace: x, labels: {role: db}}\n---\n"
                           "kind: Namespace\nmetadata: {name: x, labels: {team: blue}}\n"))
    assert "pod x/a labeled" in out and "namespace x labeled" in out
    status = json.loads(ok(lab_cmd("status", "--name", lab_name, "--json")))
    assert status["pods"][0]["labels"] == {"role": "db"}
    with open(os.path.join(lab_dir(lab_name), "cluster.json")) as f:
        doc = json.load(f)
    assert doc["generation"] > before
    assert doc["namespaces"] == [{"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": "x", "labels": {"team": "blue"}}}]


def test_sctp_is_served_when_the_kernel_has_it(lab_name, tmp_path):
    pods = tmp_path / "pods.yaml"
    pods.write_text("".join(f"---\nkind: Pod\nmetadata: {{name: {p}}}\nspec: {{nodeName: n1, containers: "
                            f"[{{ports: [{{containerPort: 90, protocol: SCTP}}]}}]}}\n" for p in "ab"))
    ok(lab_cmd("up", "--name", lab_name, "--nodes", "1", "--net-conf", str(REPO / "recipes" / "host-gw.json"),
               "--pods", str(pods), "--no-policy"))
    proc = lab_cmd("check", "--name", lab_name, "--port", "90", "--protocol", "SCTP", "--json")
    log = (pathlib.Path(lab_dir(lab_name)) / "pods" / f"{lab_name}-n1-pod1.log").read_text()
    if sctp_available():
        assert proc.returncode == 0 and json.loads(proc.stdout)["summary"]["allowed"] == 2
        assert "serving 90/SCTP" in log
    else:  # skipped cleanly: one line from the server, one from check, the TCP port still served
        assert proc.returncode == 1 and "this kernel has no SCTP" in proc.stderr and "Traceback" not in proc.stderr
        assert "not serving 90/SCTP" in log and "serving 7777/TCP" in log
