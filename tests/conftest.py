import os

import pytest

pytest_plugins = ["flannel_ext.testing"]


def pytest_collection_modifyitems(config, items):
    # Root-only tiers are skipped, not failed, for an unprivileged developer.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (netns/e2e tier)")
    for item in items:
        if "netns" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)
