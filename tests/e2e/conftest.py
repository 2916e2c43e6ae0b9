import pathlib
import sys

import pytest

# the e2e helpers (policy_lab) are importable from every e2e module
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from policy_lab import lab_cmd  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def lab_name(netns_prefix):
    """A lab named after the test's namespace prefix; `lab down` afterwards, even on failure."""
    name = netns_prefix.rstrip("-")
    try:
        yield name
    finally:
        lab_cmd("down", "--name", name)
