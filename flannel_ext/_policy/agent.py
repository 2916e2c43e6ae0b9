"""The policy agent inside `flannel-ext run --policy HOOK`.

A source delivers whole snapshots (`Cluster`); the agent keeps only the newest, computes
this node's `PolicyState` and hands it to the hook: `update(old, new)` after a success,
`apply(new)` at start and after a failure (a failed update may have left anything behind,
and apply replaces it all). After every attempt it writes ``<state-dir>/policy-status.json``
atomically, which the lab and the benchmarks wait on.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flannel_ext._policy.compute import Cluster, PolicyComputer
from flannel_ext._policy.file_source import FileSource
from flannel_ext._policy.hook import PolicyHook
from flannel_ext._policy.model import PolicyRejected
from flannel_ext._policy.state import PolicyState
from flannel_ext._util.files import write_atomic
from flannel_ext._util.rtnl import local_addresses

if TYPE_CHECKING:
    from flannel_ext._policy.kube_source import KubeSource

log = logging.getLogger("flannel_ext.policy")
STATUS_FILE = "policy-status.json"
MAX_LISTED_REJECTIONS = 100
RETRY_MAX = 30.0


class PolicyAgent:
    def __init__(self, hook: PolicyHook, node_name: str, state_dir: str, *,
                 node_ips: Callable[[], Iterable[str]] = local_addresses):
        # node_ips: every address of this namespace (the node's own IPs, cni0's gateway too),
        # read in-process before every apply, so no `ip` fork and no pyroute2 import.
        self.hook, self.node_name, self.state_dir = hook, node_name, state_dir
        self.node_ips = node_ips
        self.status_path = os.path.join(state_dir, STATUS_FILE)
        self.computer = PolicyComputer(node_name)
        self.applied: PolicyState | None = None      # the last state the hook accepted
        self.generation: int | None = None
        self._pending: Cluster | Exception | None = None
        self._rejected: list[PolicyRejected] = []   # of the last snapshot processed
        self._logged: set[str] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="policy-agent", daemon=True)

    # -- the source side ---------------------------------------------------------------
    def submit(self, item: Cluster | Exception) -> None:
        """A new snapshot (or a source error) to act on; only the newest is kept."""
        with self._cond:
            self._pending = item
            self._cond.notify()

    def start(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop acting; the dataplane keeps enforcing the last state (no open window)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # -- the worker --------------------------------------------------------------------
    def _loop(self) -> None:
        retry: Cluster | None = None
        delay = 0.0
        while True:
            with self._cond:
                if self._pending is None and not self._stop:
                    self._cond.wait(timeout=delay if retry is not None else None)
                if self._stop:
                    return
                item, self._pending = self._pending, None
            if item is None:
                item = retry   # nothing newer arrived: retry the failed one
            if item is None:
                continue
            if isinstance(item, Exception):
                self._write_status(None, error=str(item))
                log.error("policy source: %s (keeping the last good policy)", item)
                continue
            ok = self.process(item)
            retry = None if ok else item
            delay = 0.0 if ok else min(max(delay * 2, 0.5), RETRY_MAX)

    def process(self, cluster: Cluster) -> bool:
        """Compute and enforce one snapshot; True when the hook accepted it."""
        for rejection in cluster.rejected:
            if str(rejection) not in self._logged:   # once per problem, not per snapshot
                log.warning("rejected %s", rejection)
        self._logged = {str(r) for r in cluster.rejected}
        self._rejected = list(cluster.rejected)
        try:
            state = self.computer.compute(cluster, self.node_ips())
        except Exception as exc:
            self.computer = PolicyComputer(self.node_name)   # start afresh next time
            log.exception("computing the policy state failed")
            self._write_status(cluster, error=f"compute failed: {type(exc).__name__}: {exc}")
            return False
        error = None
        try:
            if self.applied is not None:
                try:
                    self.hook.update(self.applied, state)
                except Exception as exc:  # noqa: BLE001 - fall back to a full apply
                    log.warning("incremental policy update failed, applying in full: %s", exc)
                    self.applied = None
            if self.applied is None:
                self.hook.apply(state)
            self.applied = state
            self.generation = cluster.generation
        except Exception as exc:  # noqa: BLE001 - reported in the status file, retried
            error = f"{type(exc).__name__}: {exc}"
            self.applied = None
            log.error("applying policy generation %s failed: %s", cluster.generation, error)
        self._write_status(cluster, error=error, local_pods=len(state.pods))
        return error is None

    def _write_status(self, cluster: Cluster | None, *, error: str | None, local_pods: int | None = None) -> None:
        rejected = cluster.rejected if cluster is not None else self._rejected
        status = {
            "generation": self.generation,
            "applied": time.time(),
            "rejected": [_rejection(r) for r in rejected[:MAX_LISTED_REJECTIONS]],
            "rejected_total": len(rejected),
            "local_pods": local_pods if local_pods is not None else
            (len(self.applied.pods) if self.applied else 0),
            "error": error,
        }
        try:
            write_atomic(self.status_path, json.dumps(status, sort_keys=True) + "\n")
        except OSError as exc:   # the policy is enforced all the same; say why nobody can see it
            log.error("cannot write %s: %s", self.status_path, exc)


def _rejection(exc: PolicyRejected) -> dict:
    return {"object": exc.object, "kind": exc.kind, "error": str(exc)}


def parse_source(spec: str) -> tuple[str, str]:
    """("file", PATH) or ("kube", ""); ConfigError for anything else."""
    from flannel_ext._util.errors import ConfigError
    if spec == "kube":
        return "kube", ""
    if spec.startswith("file:") and len(spec) > 5:
        return "file", spec[5:]
    raise ConfigError("--policy-source", None, spec, "must be file:PATH or kube",
                      "e.g. --policy-source file:/var/lib/flannel-ext/policy.json")


def start_agent(hook: PolicyHook, source_spec: str, node_name: str, state_dir: str,
                kube_options: dict | None = None) -> Callable[[], None]:
    """Start the agent and its source; returns the function that stops both."""
    kind, path = parse_source(source_spec)
    agent = PolicyAgent(hook, node_name, state_dir)
    source: FileSource | KubeSource
    if kind == "file":
        source = FileSource(path, agent.submit)
    else:
        from flannel_ext._policy.kube_source import KubeSource   # imports the kubernetes client
        source = KubeSource.from_options(agent.submit, **(kube_options or {}))
    agent.start()
    source.start()
    log.info("network policy: hook %s, source %s", type(hook).__name__, source_spec)

    def stop() -> None:
        source.stop()
        agent.stop()
    return stop
