"""Every ```sh and ```python block in Documentation/*.md runs from the repo root.

```text blocks are display only (cluster commands, output samples). A page's blocks run
in order in one test, so a later block may use what an earlier one made.
"""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "Documentation").glob("*.md"))
FENCE = re.compile(r"^```(sh|bash|python)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(page: pathlib.Path):
    return FENCE.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path):
    for lang, code in blocks(page):
        if lang == "python":
            argv = [sys.executable, "-c", code]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", code]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              env={**__import__("os").environ, "TMPDIR": str(tmp_path)})
        assert proc.returncode == 0, \
            f"{page.name} block failed:\n{code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
