"""`lab check --port P --protocol PROTO`: a reachability truth table, as Kubernetes' e2e
netpol suite prints it, and its comparison with an expected table.

Every ordered pair of distinct pods is probed with real packets from inside the source
pod to the destination pod's IP and port (`probe`). A pod reaching its own IP never
leaves its namespace, so the diagonal is not probed (``-``). The text form::

    reachability TCP/80 (lab l1): 9 pods, 60/72 pairs allowed
    -    x/a x/b x/c y/a ...
    x/a   -   .   .   X
    ...

``.`` allowed, ``X`` blocked. `--expect FILE` reads either that text form or the JSON of
``--json`` (``{"pairs": [{"src", "dst", "ok"}, ...]}``), so a saved table is a test.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from flannel_ext._lab import probe as probing
from flannel_ext._lab.pods import sctp_available
from flannel_ext._lab.state import Lab, LabError

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass
class Table:
    lab: str
    port: int
    protocol: str
    pods: list[str]                      # display names, sorted
    cells: dict[tuple[str, str], bool]   # (src, dst) -> allowed
    errors: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def allowed(self) -> int:
        return sum(self.cells.values())


def run(lab: Lab, port: int, protocol: str, timeout: float = 1.0) -> Table:
    protocol = protocol.upper()
    if protocol not in PROTOCOLS:
        raise LabError(f"--protocol must be TCP, UDP or SCTP, got {protocol!r}")
    if not 1 <= port <= 65535:
        raise LabError(f"--port must be 1-65535, got {port}")
    if protocol == "SCTP" and not sctp_available():
        raise LabError("--protocol SCTP: this kernel has no SCTP (`modprobe sctp` failed)")
    pods = sorted((p for _, p in lab.pods() if p.ip), key=lambda p: p.display)
    targets = [probing.Target(p.name, p.ip) for p in pods]
    if len(targets) < 2:
        results = {}
    elif protocol == "UDP":
        results = probing.probe_udp(targets, port, timeout=timeout)
    else:
        results = probing.probe(targets, port, timeout=timeout, icmp=False, protocol=protocol)
    show = {p.name: p.display for p in pods}
    cells = {(show[s], show[d]): r.tcp for (s, d), r in results.items()}
    errors = {(show[s], show[d]): r.error for (s, d), r in results.items() if not r.tcp}
    return Table(lab.name, port, protocol, [p.display for p in pods], cells, errors)


def format_text(table: Table) -> str:
    width = max([len(n) for n in table.pods] + [1])
    lines = [(f"reachability {table.protocol}/{table.port} (lab {table.lab}): {len(table.pods)} pods, "
              f"{table.allowed}/{len(table.cells)} pairs allowed"),
             f"{'-':<{width}} " + " ".join(table.pods)]
    for src in table.pods:
        cells = ["-" if src == dst else "." if table.cells[(src, dst)] else "X" for dst in table.pods]
        # Each mark under the last character of its column's name.
        lines.append(f"{src:<{width}} " + " ".join(f"{c:>{len(n)}}" for c, n in zip(cells, table.pods, strict=True)))
    lines.append("(. allowed, X blocked, - self)")
    return "\n".join(lines)


def to_json(table: Table) -> dict:
    pairs = [{"src": s, "dst": d, "port": table.port, "protocol": table.protocol, "ok": ok,
              **({"error": table.errors[(s, d)]} if not ok else {})}
             for (s, d), ok in sorted(table.cells.items())]
    return {"lab": table.lab, "port": table.port, "protocol": table.protocol, "pods": table.pods,
            "pairs": pairs, "summary": {"pairs": len(pairs), "allowed": table.allowed,
                                        "blocked": len(pairs) - table.allowed}}


def parse_expected(path: str) -> dict[tuple[str, str], bool]:
    """(src, dst) -> allowed from an expected table: the JSON of --json, or the text table."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise LabError(f"--expect {path}: {exc.strerror}")
    if text.lstrip().startswith("{"):
        try:
            pairs = json.loads(text)["pairs"]
            return {(p["src"], p["dst"]): bool(p["ok"]) for p in pairs}
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(f"--expect {path}: not a table in the JSON of `lab check --json` ({exc})")
    return parse_text(text, path)


def parse_text(text: str, where: str = "table") -> dict[tuple[str, str], bool]:
    """The text table: a header line starting with ``-`` naming the columns, then one row
    per source pod; cells ``.`` (allowed) or ``X`` (blocked), ``-`` on the diagonal."""
    cells: dict[tuple[str, str], bool] = {}
    header: list[str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if header is None:
            if words[0] == "-":
                header = words[1:]
            continue
        if words[0].startswith("("):
            break
        src, marks = words[0], words[1:]
        if len(marks) != len(header):
            raise LabError(f"--expect {where} line {n}: {len(marks)} cells for {len(header)} columns")
        for dst, mark in zip(header, marks, strict=True):
            if src == dst:
                continue
            if mark not in (".", "X", "x"):
                raise LabError(f"--expect {where} line {n}: cell {src} -> {dst} is {mark!r}, "
                               "not . (allowed) or X (blocked)")
            cells[(src, dst)] = mark == "."
    if header is None:
        raise LabError(f"--expect {where}: no header line (`- pod1 pod2 ...`)")
    return cells


def differences(table: Table, expected: dict[tuple[str, str], bool]) -> list[str]:
    """One line per cell that differs, or that only one of the two tables has."""
    def word(ok: bool | None) -> str:
        return {True: "allowed", False: "blocked", None: "absent"}[ok]
    out = []
    for key in sorted(set(table.cells) | set(expected)):
        got, want = table.cells.get(key), expected.get(key)
        if got != want:
            out.append(f"{key[0]} -> {key[1]} {table.protocol}/{table.port}: expected {word(want)}, "
                       f"got {word(got)}" + (f" ({table.errors[key]})" if key in table.errors and want else ""))
    return out
