"""The `log` policy hook: enforces nothing, logs the desired state and each change.

It is deliberately small, to show the whole seam: a dataplane only has to turn a
`PolicyState` into its own rules. Run a node with ``--policy log`` to watch what the
nftables hook would be asked to do.
"""
from __future__ import annotations

from flannel_ext._policy.hook import PolicyHook
from flannel_ext._policy.state import PodPolicy, PolicyState


def describe(pod: PodPolicy) -> str:
    def one(allows) -> str:
        return "open" if allows is None else f"{len(allows)} rule(s)"
    return f"{pod.namespace}/{pod.name} ({pod.ip}): ingress {one(pod.ingress)}, egress {one(pod.egress)}"


class LogPolicy(PolicyHook):
    def __init__(self) -> None:
        self.lines: list[str] = []   # what was logged, for tests and the curious

    def _say(self, text: str) -> None:
        self.lines.append(text)
        self.log.info("%s", text)

    def apply(self, state: PolicyState) -> None:
        self._say(f"generation {state.generation}: {len(state.pods)} local pod(s), {len(state.rules)} rule(s)")
        for pod in sorted(state.pods.values(), key=lambda p: (p.namespace, p.name)):
            self._say("  " + describe(pod))

    def update(self, old: PolicyState, new: PolicyState) -> None:
        self._say(f"generation {old.generation} -> {new.generation}")
        for ip in sorted(set(old.pods) | set(new.pods)):
            before, after = old.pods.get(ip), new.pods.get(ip)
            if after is None and before is not None:
                self._say("  removed " + describe(before))
            elif after is not None and before != after:
                self._say("  " + describe(after))
        for rule_id in sorted(set(old.rules) | set(new.rules)):
            if old.rules.get(rule_id) != new.rules.get(rule_id):
                self._say(f"  peers of {rule_id} changed")

    def clear(self) -> None:
        self._say("cleared")
