import os
import shutil

import pytest

pytest_plugins = ["flannel_ext.testing"]

# What the suite runs for real. A missing one is a broken set-up (`.ci/install` installs them all),
# so the run stops at once with the fix instead of skipping the tests that would have caught a bug.
REQUIRED_TOOLS = {
    "etcd": "etcd-server", "etcdctl": "etcd-client", "shellcheck": "shellcheck", "make": "make",
    "ip": "iproute2", "bridge": "iproute2", "nft": "nftables", "podman": "podman", "runc": "runc",
    "curl": "curl", "nsenter": "util-linux", "unshare": "util-linux", "openssl": "openssl",
    "systemd-analyze": "systemd",
}


def pytest_sessionstart(session):
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.exit(f"missing Debian packages: {' '.join(missing)} (run: sudo bash .ci/install)", returncode=4)


def pytest_collection_modifyitems(config, items):
    # Root-only tiers are skipped, not failed, for an unprivileged developer.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (netns/e2e tier)")
    for item in items:
        if "netns" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)
