"""Issue 11 §3: a state dir that cannot be written is retried and reported (/readyz,
stats.json for `lab status`, one log line), and the node keeps programming leases.

The state dir is a 256 KiB tmpfs mounted in a private mount namespace (`unshare -m`), so
the root namespace never sees it; the test fills it from inside that namespace with
nsenter (ENOSPC). Nothing of ours is monkeypatched. (A read-only remount is refused while
the journal is open for writing; EROFS and EIO take the same path as ENOSPC, and the unit
tests drive it with a real EISDIR.)
"""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess


from examples import FLANNEL_EXAMPLES
from flannel_ext._stores.lease import Lease, LeaseAttrs
from flannel_ext._stores.sqlite import SqliteStore
from flannel_ext.testing import NodeDaemon, routes, wait_for

PORT = 19411


class TmpfsStateNode(NodeDaemon):
    """A daemon whose state dir is a small tmpfs of its own mount namespace."""

    @property
    def argv(self) -> list[str]:
        mount = 'mount -t tmpfs -o size=256k flannel-ext-test "$0" && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(self.state_dir),
                *super().argv]

    def inside(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run a command in the daemon's mount namespace."""
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", *argv], capture_output=True,
                              text=True, check=check)

    def get(self, path: str) -> tuple[int, str]:
        out = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-s", "-w", "\n%{http_code}",
                              f"http://127.0.0.1:{PORT}{path}"], capture_output=True, text=True).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def readyz(self) -> tuple[int, str]:
        return self.get("/readyz")

    def stats_inside(self) -> dict:
        out = self.inside("cat", str(self.state_dir / "stats.json")).stdout
        try:
            return json.loads(out)
        except ValueError:
            return {}


def peer(store: SqliteStore, n: int) -> str:
    subnet = f"10.50.{n}.0/24"
    lease = Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(public_ip=f"192.168.77.{100 + n}",
                                                             backend_type="extension"))
    store.put_lease(lease)
    return subnet


def test_full_state_dir_is_reported_and_retried(underlay, netns_prefix, tmp_path, daemons):
    ns = f"{netns_prefix}n0"
    underlay.add_node(ns, 0)
    conf = tmp_path / "net-conf.json"
    shutil.copy(FLANNEL_EXAMPLES / "extension-hostgw.json", conf)
    store = SqliteStore(tmp_path / "leases.db")
    node = TmpfsStateNode(ns, conf, f"sqlite:{tmp_path}/leases.db", tmp_path,
                          extra=["--healthz-ip", "127.0.0.1", "--healthz-port", str(PORT)])
    node.state_dir.mkdir(parents=True)
    daemons.append(node)
    node.start(wait=False)
    wait_for(lambda: node.subnet_file.exists() or node.proc.poll() is not None, 60)
    assert node.proc.poll() is None, node.log()
    wait_for(lambda: node.readyz()[0] == 200, 60, what="/readyz 200")
    have = lambda subnet: any(r.get("dst") == subnet for r in routes(ns))  # noqa: E731

    # Fill the tmpfs: the next hook call cannot be journaled.
    node.inside("dd", "if=/dev/zero", f"of={node.state_dir}/fill", "bs=4k")
    first = peer(store, 11)
    wait_for(lambda: have(first), 60, what="route while the state dir is full")
    wait_for(lambda: node.readyz()[0] == 503, 60, what="/readyz 503")
    code, body = node.readyz()
    assert "cannot write state in" in body and "ENOSPC" in body, body
    wait_for(lambda: "ENOSPC" in node.stats_inside().get("state_write_error", ""), 60,
             what="stats.json (lab status) showing the error")
    assert "flannel_ext_state_write_error 1.0" in node.get("/metrics")[1]
    second = peer(store, 12)                     # still programming
    wait_for(lambda: have(second), 60, what="second route while the state dir is full")
    assert node.log().count("cannot write state in") == 1, node.log()
    node.inside("rm", f"{node.state_dir}/fill", check=True)
    wait_for(lambda: node.readyz()[0] == 200, 60, what="/readyz 200 after space came back")
    assert "work again" in node.log()
    assert "flannel_ext_state_write_error 0.0" in node.get("/metrics")[1]
    recorded = json.loads(node.inside("cat", str(node.state_dir / "programmed.json"), check=True).stdout)
    assert {"10.50.11.0-24", "10.50.12.0-24"} <= set(recorded["programmed"])

    assert node.stop() == 0, node.log()
    assert "Traceback" not in node.log()
