"""bench/hostile_corpus.py for the tests (bench/ is not a package): `from hostile import corpus`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_corpus():
    path = Path(__file__).resolve().parents[1] / "bench" / "hostile_corpus.py"
    spec = importlib.util.spec_from_file_location("hostile_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
