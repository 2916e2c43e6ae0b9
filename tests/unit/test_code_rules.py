"""The architecture's rules, enforced: import contracts, ruff and mypy (configured in pyproject.toml).

Each tool runs on the checkout under test; a broken rule fails here with the tool's own report.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("argv", [
    # --no-cache: a cached graph once hid a broken contract
    (os.path.join(BIN, "lint-imports"), "--no-cache"),
    (sys.executable, "-m", "ruff", "check", "--no-cache", "flannel_ext", "recipes", "hooks", "tests", "bench"),
    (sys.executable, "-m", "mypy", "--no-incremental", "flannel_ext"),
], ids=["import-linter", "ruff", "mypy"])
def test_rule_holds(argv):
    proc = _run(*argv)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
