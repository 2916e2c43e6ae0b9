"""Shared by the bench scripts (run as `python3 bench/NAME.py`, so this is importable)."""


def pct(values, q):
    """The q-th percentile by nearest rank (no interpolation), as every table here reports."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
