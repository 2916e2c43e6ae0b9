"""Issue 11 §2: kill -9 at a random moment of a lease burst leaves no stale or missing entry.

The short version of `bench/soak.py`: one real daemon per store and recipe, killed in the
middle of a burst of lease puts/changes/deletes; the burst finishes while it is down;
after the restart on the same state dir, its kernel (routes, neighbours, FDB) must
equal what the store holds. No timing assertions: `settle` waits up to 60 s.
"""
from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import soak  # noqa: E402
from soak_lab import Bed  # noqa: E402

STORES = ["sqlite", "etcd"]
RECIPES = ["shell host-gw (flannel)", "python host-gw", "python vxlan"]


class Args:
    burst, interval, settle = 30, 0.02, 60.0


@pytest.fixture
def bed(request, netns_prefix):
    store, recipe = request.param
    bed = Bed(netns_prefix, store, recipe)
    yield bed.setup()
    bed.teardown()


@pytest.mark.parametrize("bed", [(s, r) for s in STORES for r in RECIPES], indirect=True,
                         ids=lambda p: f"{p[0]}-{p[1]}".replace(" ", "_"))
def test_kill9_mid_burst_then_restart(bed):
    rng = random.Random()
    row = soak.Row(bed.store_kind, bed.recipe, "kill -9")
    for _ in range(2):
        soak.signal_trial(bed, rng, row, Args, signal.SIGKILL)
    assert (row.kills, row.stale, row.missing) == (2, 0, 0), bed.node.log()[-3000:]


@pytest.mark.parametrize("bed", [("sqlite", "python vxlan")], indirect=True, ids=["sqlite-vxlan"])
def test_sigterm_mid_burst_exits_cleanly(bed):
    row = soak.Row(bed.store_kind, bed.recipe, "SIGTERM")
    soak.signal_trial(bed, random.Random(), row, Args, signal.SIGTERM)
    assert (row.unclean, row.stale, row.missing) == (0, 0, 0), bed.node.log()[-3000:]


@pytest.mark.parametrize("bed", [("etcd", "shell host-gw (flannel)")], indirect=True, ids=["etcd-hostgw"])
def test_etcd_restart_mid_burst_loses_nothing(bed):
    row = soak.Row(bed.store_kind, bed.recipe, "etcd restart")
    soak.etcd_trial(bed, random.Random(), row, Args)
    assert row.lost == 0, bed.node.log()[-3000:]
