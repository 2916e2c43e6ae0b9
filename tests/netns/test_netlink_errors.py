"""The kernel's own explanation (extended ack) reaches the error, through both netlink
paths: the recipes' batches (`flannel_ext.netlink`) and the single requests (`_util.rtnl`).
Run in a throwaway network namespace (`unshare --net`)."""
from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r'''
import ipaddress, json
from flannel_ext import netlink
from flannel_ext._util import rtnl
out = {}
with netlink.Batch() as batch:   # lo is up nowhere here, and 192.0.2.1 is not on-link
    batch.route("replace", "k", ipaddress.IPv4Network("10.1.0.0/24"), gateway="192.0.2.1", oif=1)
    [failure] = batch.commit()["k"]
    out["batch"] = [failure.code, failure.detail]
try:
    rtnl.link_add_vxlan("vx0", 1, 999, None, None)
except OSError as exc:
    out["request"] = [exc.errno, str(exc)]
print(json.dumps(out))
'''


def test_both_paths_carry_the_kernels_explanation():
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # The kernel's wording varies by version ("Nexthop has invalid gateway", "Invalid local
    # interface, device not found" here); that there is one is what is checked.
    code, detail = out["batch"]
    assert code == 101 and detail.strip()                                   # ENETUNREACH
    code, text = out["request"]
    assert code == 19 and text.startswith("[Errno 19] No such device (") and text.endswith(")")
