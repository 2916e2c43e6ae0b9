"""The policy agent with the file source, and loading policy hooks (no root needed)."""
from __future__ import annotations

import json

import pytest

from flannel_ext import PolicyHook, PolicyState
from flannel_ext._policy.agent import PolicyAgent
from flannel_ext._policy.file_source import FileSource
from flannel_ext._policy.hook import load_policy_hook
from flannel_ext._policy.loghook import LogPolicy
from flannel_ext._policy.nftables import NftablesPolicy
from flannel_ext._util.errors import HookLoadError
from flannel_ext._util.files import write_atomic
from flannel_ext.testing import wait_for


class Recorder(PolicyHook):
    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.fail_update = False
        self.fail_apply = 0

    def apply(self, state: PolicyState) -> None:
        if self.fail_apply:
            self.fail_apply -= 1
            raise RuntimeError("kernel said no")
        self.calls.append(("apply", state.generation))

    def update(self, old: PolicyState, new: PolicyState) -> None:
        if self.fail_update:
            raise RuntimeError("drift")
        self.calls.append(("update", new.generation))


def document(generation: int, labels: dict | None = None, policies: list | None = None) -> str:
    pods = [{"metadata": {"name": "a", "namespace": "x", "labels": labels or {"app": "db"}},
             "spec": {"nodeName": "n1"}, "status": {"podIP": "10.0.0.2"}},
            {"metadata": {"name": "b", "namespace": "x"}, "spec": {"nodeName": "n2"}, "status": {"podIP": "10.0.1.2"}}]
    return json.dumps({"generation": generation, "namespaces": [{"metadata": {"name": "x"}}], "pods": pods,
                       "networkpolicies": policies if policies is not None else [
                           {"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}]})


@pytest.fixture
def running(tmp_path):
    hook = Recorder()
    agent = PolicyAgent(hook, "n1", str(tmp_path / "state"), node_ips=lambda: ["192.168.0.1"])
    path = tmp_path / "in" / "policy.json"
    source = FileSource(str(path), agent.submit)
    agent.start()
    source.start()
    yield hook, agent, path
    source.stop()
    agent.stop()


def status(agent: PolicyAgent) -> dict:
    try:
        with open(agent.status_path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def test_every_replacement_is_applied_and_reported(running):
    hook, agent, path = running
    write_atomic(str(path), document(1))
    wait_for(lambda: status(agent).get("generation") == 1, 10, what="generation 1")
    first = status(agent)
    assert first["error"] is None and first["local_pods"] == 1 and first["rejected"] == []
    assert first["rejected_total"] == 0 and isinstance(first["applied"], float)
    write_atomic(str(path), document(2, labels={"app": "web"}))
    wait_for(lambda: status(agent).get("generation") == 2, 10, what="generation 2")
    assert hook.calls == [("apply", 1), ("update", 2)]


def test_rejected_policies_are_listed_and_counted(running):
    _, agent, path = running
    bad = {"metadata": {"name": "bad", "namespace": "x"}, "spec": {"podSelector": {}, "egress": [{"to": [
        {"ipBlock": {"cidr": "300.0.0.0/8"}}]}]}}
    good = {"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}
    write_atomic(str(path), document(3, policies=[bad, good]))
    wait_for(lambda: status(agent).get("generation") == 3, 10, what="generation 3")
    doc = status(agent)
    assert doc["rejected_total"] == 1
    assert doc["rejected"] == [{"object": "x/bad", "kind": "NetworkPolicy",
                                "error": "NetworkPolicy x/bad: spec.egress[0].to[0].ipBlock.cidr: "
                                         "invalid CIDR '300.0.0.0/8'"}]
    assert agent.applied is not None and agent.applied.pods["10.0.0.2"].ingress == ()


def test_unreadable_document_keeps_the_last_good_policy(running):
    hook, agent, path = running
    write_atomic(str(path), document(4))
    wait_for(lambda: status(agent).get("generation") == 4, 10)
    write_atomic(str(path), "{not json")
    wait_for(lambda: status(agent).get("error"), 10, what="an error in the status")
    assert status(agent)["generation"] == 4 and "not valid JSON" in status(agent)["error"]
    assert hook.calls == [("apply", 4)]


def test_failed_update_falls_back_to_apply_and_failed_apply_is_retried(tmp_path):
    hook = Recorder()
    agent = PolicyAgent(hook, "n1", str(tmp_path), node_ips=list)
    from flannel_ext._policy.compute import Cluster
    agent.process(Cluster.from_document(json.loads(document(1))))
    hook.fail_update = True
    agent.process(Cluster.from_document(json.loads(document(2))))
    assert hook.calls == [("apply", 1), ("apply", 2)]
    hook.fail_apply = 1   # update fails, then the full apply too: retried later
    agent.start()
    agent.submit(Cluster.from_document(json.loads(document(3))))
    wait_for(lambda: status(agent).get("generation") == 3, 10, what="the retried apply")
    agent.stop()
    assert hook.calls[-1] == ("apply", 3)


def test_load_by_name_module_and_file(tmp_path):
    assert isinstance(load_policy_hook("nftables"), NftablesPolicy)
    assert isinstance(load_policy_hook("log"), LogPolicy)
    assert isinstance(load_policy_hook("flannel_ext._policy.loghook:LogPolicy"), LogPolicy)
    mine = tmp_path / "mine.py"
    mine.write_text("import flannel_ext\nclass Mine(flannel_ext.PolicyHook):\n"
                    "    def apply(self, state):\n        self.state = state\n")
    assert type(load_policy_hook(f"{mine}:Mine")).__name__ == "Mine"


@pytest.mark.parametrize("body,words", [
    ("class Mine:\n    def apply(self, state): pass\n", "is not a subclass of flannel_ext.PolicyHook"),
    ("import flannel_ext\nclass Mine(flannel_ext.PolicyHook):\n    pass\n", "does not define apply"),
    ("import flannel_ext\nclass Mine(flannel_ext.PolicyHook):\n    def apply(self): pass\n",
     "Mine.apply has the wrong signature"),
])
def test_bad_hook_classes_are_one_clear_line(tmp_path, body, words):
    mine = tmp_path / "mine.py"
    mine.write_text(body)
    with pytest.raises(HookLoadError) as err:
        load_policy_hook(f"{mine}:Mine")
    assert words in str(err.value) and str(err.value).startswith("--policy ")


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(HookLoadError, match="did you mean 'nftables'"):
        load_policy_hook("nftable")


def test_log_hook_describes_changes():
    from flannel_ext._policy.compute import Cluster, compute_state
    hook = LogPolicy()
    one = compute_state(Cluster.from_document(json.loads(document(1))), "n1")
    two = compute_state(Cluster.from_document(json.loads(document(2, policies=[]))), "n1")
    hook.apply(one)
    hook.update(one, two)
    assert "x/a (10.0.0.2): ingress 0 rule(s), egress open" in "\n".join(hook.lines)
    assert hook.lines[-1] == "  x/a (10.0.0.2): ingress open, egress open"


@pytest.mark.parametrize("argv,words", [
    (["--policy", "nftables", "--store", "sqlite:/nonexistent/x.db"], "--policy: needs --policy-source"),
    (["--policy-source", "kube", "--store", "sqlite:/nonexistent/x.db"], "--policy-source: needs --policy"),
    (["--policy", "nftables", "--policy-source", "etcd"], "must be file:PATH or kube"),
    (["--policy", "nftabels", "--policy-source", "file:/x.json"], "did you mean 'nftables'"),
])
def test_run_checks_policy_flags_first(capsys, argv, words):
    from flannel_ext.cli import main
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_kube_store_defaults_the_source_to_kube():
    import argparse

    from flannel_ext._commands import run
    parser = argparse.ArgumentParser()
    run.register(parser.add_subparsers())
    args = parser.parse_args(["run", "--kube-subnet-mgr", "--policy", "log"])
    assert run._policy_source(args) == "kube"
    args = parser.parse_args(["run", "--policy", "log", "--policy-source", "file:/tmp/c.json"])
    assert run._policy_source(args) == "file:/tmp/c.json"


def test_agent_with_the_kube_source_reports_the_resource_version(tmp_path):
    from kube_fake import FakeKubeAPI

    from flannel_ext._policy.agent import start_agent
    fake = FakeKubeAPI(tmp_path)
    try:
        fake.put("pods", {"metadata": {"name": "a", "namespace": "x", "labels": {"app": "db"}},
                          "spec": {"nodeName": "n1"}, "status": {"podIP": "10.0.0.2"}})
        fake.put("networkpolicies", {"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}})
        hook = Recorder()
        stop = start_agent(hook, "kube", "n1", str(tmp_path / "state"), {"kubeconfig": str(fake.kubeconfig_path)})
        try:
            path = tmp_path / "state" / "policy-status.json"
            wait_for(lambda: path.exists() and json.loads(path.read_text())["generation"] == fake.resource_version,
                     10, what="the status at the fake's resourceVersion")
            assert json.loads(path.read_text())["local_pods"] == 1
            fake.delete("networkpolicies", "x", "deny")
            wait_for(lambda: json.loads(path.read_text())["generation"] == fake.resource_version, 10)
            assert hook.calls[0][0] == "apply" and hook.calls[-1][0] == "update"
        finally:
            stop()
    finally:
        fake.close()
