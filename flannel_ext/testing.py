"""pytest fixtures for dataplane tests (``pytest_plugins = ["flannel_ext.testing"]``).

`netns_prefix` gives each test a unique namespace prefix, and everything created under
it is deleted at teardown, even when the test fails.
"""
from __future__ import annotations

import itertools
import os
import shutil

import pytest

from ._cogs.netns import Underlay, delete_netns, list_netns

_counter = itertools.count()


def _needs_root():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")


@pytest.fixture
def netns_prefix():
    """A unique prefix like ``fxt1234a3-``; all namespaces starting with it are removed after."""
    _needs_root()
    prefix = f"fxt{os.getpid() % 100000}{next(_counter)}-"
    yield prefix
    for name in list_netns(prefix):
        delete_netns(name)


@pytest.fixture
def underlay(netns_prefix):
    """An `Underlay` (hub bridge namespace) under the test's prefix; destroyed after."""
    net = Underlay(netns_prefix).create()
    yield net
    net.destroy()
