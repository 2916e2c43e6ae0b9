#!/usr/bin/env python3
"""Crash-consistency soak: real daemons in namespaces, killed in the middle of lease bursts.

  python3 bench/soak.py [--trials 3] [--stores sqlite,etcd] [--recipes all] [--seed N]

For each store (a SQLite file; a real etcd from Debian's etcd-server in the hub namespace)
and recipe (flannel's host-gw commands verbatim, the Python host-gw and vxlan recipes;
`--recipes all` adds the shipped shell recipes), one node runs while a writer plays the
other nodes with a burst of lease puts, changes and deletes:

  kill -9    the node is killed at a random moment of the burst, the burst finishes while
             it is down, it restarts on the same state dir;
  SIGTERM    the same with SIGTERM (an exit code other than 0 counts as unclean);
  etcd       (etcd only) etcd is restarted mid-burst and the node keeps running.

After each trial the node's kernel (`ip -j route`, `ip -j neigh`, `bridge -j fdb`) is
compared with the store once it settles (`--settle` seconds at most): stale = entries
the store does not want, missing = wanted entries absent. "lost" is the difference left
when the node never restarted (etcd trials). Needs root. Then the hostile-lease corpus
(bench/hostile_corpus.py) is run and printed, when that module is present.
"""
from __future__ import annotations

import argparse
import importlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_lab import DEFAULT_RECIPES, RECIPES, Bed  # noqa: E402


@dataclass
class Row:
    store: str
    recipe: str
    kind: str
    trials: int = 0
    kills: int = 0
    stale: int = 0
    missing: int = 0
    lost: int | None = None
    bad: int = 0              # trials with any stale or missing entry
    unclean: int = 0          # SIGTERM exits other than 0
    error: str = ""           # the combination could not run (setup failed, ...)
    settle: list[float] = field(default_factory=list)

    def add(self, stale: int, missing: int, seconds: float) -> None:
        self.trials += 1
        self.stale += stale
        self.missing += missing
        self.bad += bool(stale or missing)
        self.settle.append(seconds)


def burst(bed: Bed, rng: random.Random, length: int, interval: float,
          at: int = -1, action: Callable[[], None] | None = None) -> None:
    """`length` random lease changes; `action()` runs after change number `at`."""
    for i in range(length):
        bed.random_op(rng)
        if i == at and action is not None:
            time.sleep(rng.uniform(0, interval))   # anywhere between two changes
            action()
        time.sleep(rng.uniform(0, 2 * interval))


def signal_trial(bed: Bed, rng: random.Random, row: Row, args, sig: int) -> None:
    node = bed.node
    assert node and node.proc

    def hit() -> None:
        if sig == signal.SIGKILL:
            node.kill()
        else:
            code = node.stop()
            if code != 0:
                row.unclean += 1
                bed.keep = True
                print(f"{row.store} {row.recipe} SIGTERM: exit code {code}; log {node.log_path}",
                      file=sys.stderr, flush=True)
        row.kills += 1

    burst(bed, rng, args.burst, args.interval, rng.randrange(args.burst), hit)
    start = time.monotonic()
    node.start()
    stale, missing = bed.settle(args.settle)
    row.add(stale, missing, time.monotonic() - start)
    if stale or missing:
        print(f"{row.store} {row.recipe} {row.kind}: {bed.explain()}", file=sys.stderr, flush=True)


def etcd_trial(bed: Bed, rng: random.Random, row: Row, args) -> None:
    assert bed.etcd

    def restart() -> None:
        bed.etcd.stop()  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.1, 0.5))
        bed.etcd.start()  # type: ignore[union-attr]

    burst(bed, rng, args.burst, args.interval, rng.randrange(args.burst), restart)
    start = time.monotonic()
    stale, missing = bed.settle(args.settle)
    row.add(stale, missing, time.monotonic() - start)
    row.lost = (row.lost or 0) + stale + missing
    if stale or missing:
        print(f"{row.store} {row.recipe} {row.kind}: {bed.explain()}", file=sys.stderr, flush=True)


def run_combo(store: str, recipe: str, args, rng: random.Random, index: int) -> list[Row]:
    bed = Bed(f"crash{os.getpid() % 10000}s{index}-", store, recipe)
    rows = [Row(store, recipe, "kill -9"), Row(store, recipe, "SIGTERM")]
    if store == "etcd":
        rows.append(Row(store, recipe, "etcd restart"))
    try:
        bed.setup()
        bed.settle(args.settle)
        for _ in range(args.trials):
            signal_trial(bed, rng, rows[0], args, signal.SIGKILL)
        for _ in range(args.sigterm_trials):
            signal_trial(bed, rng, rows[1], args, signal.SIGTERM)
        for _ in range(args.etcd_restarts if store == "etcd" else 0):
            etcd_trial(bed, rng, rows[2], args)
    except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        # One broken combination (e.g. a daemon that never came up) is reported, not fatal.
        bed.keep = True
        rows[0].error = f"{type(exc).__name__}: {exc}; node log {bed.node.log_path if bed.node else '-'}"
        print(f"{store} {recipe}: {rows[0].error}", file=sys.stderr, flush=True)
    finally:
        bed.teardown()
    return [row for row in rows if row.trials or row.error]


def print_rows(rows: list[Row]) -> None:
    head = (f"{'store':<7} {'recipe':<26} {'trial':<13} {'trials':>6} {'kills':>5} {'stale':>5} "
            f"{'missing':>7} {'lost':>5} {'bad':>4} {'unclean':>7} {'settle p50':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        lost = "-" if r.lost is None else str(r.lost)
        p50 = f"{statistics.median(r.settle):.1f}s" if r.settle else "-"
        print(f"{r.store:<7} {r.recipe:<26} {r.kind:<13} {r.trials:>6} {r.kills:>5} {r.stale:>5} "
              f"{r.missing:>7} {lost:>5} {r.bad:>4} {r.unclean:>7} {p50:>10}"
              + (f"  ERROR {r.error}" if r.error else ""))


def print_hostile(stores: tuple[str, ...]) -> None:
    print("\nhostile lease corpus (bench/hostile_corpus.py):")
    try:
        corpus = importlib.import_module("hostile_corpus")
    except ModuleNotFoundError:
        print("not available")
        return
    results = corpus.run(stores=stores)
    print(f"{'store':<8} {'entries':>8} {'rejected':>8} {'executed':>8} {'crashed':>8}")
    for r in results:
        print(f"{r['store']:<8} {r['entries']:>8} {r['rejected']:>8} {r['executed']:>8} {r['crashed']:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="kill -9 trials per store and recipe")
    parser.add_argument("--sigterm-trials", type=int, default=1, help="SIGTERM trials per store and recipe")
    parser.add_argument("--etcd-restarts", type=int, default=1, help="etcd restart trials per recipe")
    parser.add_argument("--stores", default="sqlite,etcd", help="comma-separated: sqlite, etcd")
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                        help=f"comma-separated, or 'all' ({', '.join(RECIPES)})")
    parser.add_argument("--burst", type=int, default=40, help="lease changes per burst")
    parser.add_argument("--interval", type=float, default=0.02, help="mean seconds between changes")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the kernel to match")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile-lease corpus")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear the namespaces down
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    recipes = list(RECIPES) if args.recipes == "all" else [r.strip() for r in args.recipes.split(",")]
    for recipe in recipes:
        if recipe not in RECIPES:
            parser.error(f"unknown recipe {recipe!r}; one of {', '.join(RECIPES)}")
    stores = tuple(s.strip() for s in args.stores.split(","))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed}; {args.trials} kill -9, {args.sigterm_trials} SIGTERM, {args.etcd_restarts} etcd "
          f"restart trial(s) per store and recipe; bursts of {args.burst} changes\n", flush=True)
    rows: list[Row] = []
    for store in stores:
        for recipe in recipes:
            rows += run_combo(store, recipe, args, rng, len(rows))
    print_rows(rows)
    if not args.no_hostile:
        print_hostile(stores + ("kube",))
    return 1 if any(r.stale or r.missing or r.unclean or r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
