"""`flannel-ext lint [FILE|-]`: check a net-conf.json and its extension commands for a target.

``--target flannel-ext`` (the default) judges what flannel-ext runs: each command goes to
``sh -c``, so it gets shellcheck (with the hook's variables declared), a check that no
value from another node is expanded unquoted, and the SubnetRemoveCommand contract.
``--target flannel`` judges portability to upstream flannel ≥ v0.28.2, which has no shell:
it splits a command on whitespace, expands only $VAR, and execs the first word.

The input is a net-conf.json, or a kube-flannel ConfigMap (YAML with data["net-conf.json"],
alone or in a whole manifest); ``-`` reads it from stdin. Exit codes: 0 clean (info lines
only), 1 findings, 2 unusable input. No finding is reported twice.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass

import yaml

from flannel_ext._config.netconf import COMMAND_FIELDS, parse_netconf
from flannel_ext._hooks.shell import COMMAND_VARS, REMOTE_VARS
from flannel_ext._util.errors import ConfigError
from flannel_ext._util.shellscan import Command, Scan, position

TARGETS = ("flannel-ext", "flannel")
REMOTE_FIELDS = ("SubnetAddCommand", "SubnetRemoveCommand")
_PORT = ("does not port to flannel ≥ v0.28.2 (no shell there: the command is split on whitespace "
         "and its first word exec'd)")
_FAILING = ("error", "warning")
# Deleting kernel state fails when the entry is already gone: `ip OBJECT del`, `bridge fdb del`.
_DELETE_OBJECTS = {"route", "ro", "r", "neigh", "neighbour", "neighbor", "n", "addr", "address", "a", "link",
                   "l", "rule", "ru", "fdb", "mdb", "vlan"}
_DELETE_VERBS = {"del", "delete", "flush"}
_KEYWORD_PREFIX = {"{", "then", "else", "do"}


@dataclass
class Finding:
    field: str          # e.g. "Backend.SubnetAddCommand"
    level: str          # error | warning | info
    message: str
    rule: str = ""      # e.g. "SC2086", "unquoted-remote", "not-portable", "remove-not-idempotent"
    line: int | None = None
    column: int | None = None

    def format(self, source: str) -> str:
        return f"{source}: {self.field}: {self.level}: {self.message}"


class UnusableInput(Exception):
    """The input cannot be linted at all (exit 2): unreadable, not JSON or YAML, no net-conf."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = source, field, message
        super().__init__(f"{source}: {field}: error: {message}")


# --- input ------------------------------------------------------------------------------

def read_inputs(arg: str) -> list[tuple[str, str, bool]]:
    """(source label, net-conf text, from a ConfigMap) for FILE or `-`: the file itself, or
    each ConfigMap's data["net-conf.json"] when it is YAML (kube-flannel.yml style)."""
    label = "<stdin>" if arg == "-" else arg
    try:
        if arg == "-":
            text = sys.stdin.read()
        else:
            with open(arg, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise UnusableInput(label, "input", f"cannot read it ({exc.strerror}); give a net-conf.json, "
                                            "a kube-flannel ConfigMap, or - for stdin") from None
    except UnicodeDecodeError as exc:
        raise UnusableInput(label, "input", f"not UTF-8 text (byte {exc.start})") from None
    if text.lstrip().startswith("{") or not text.strip():
        return [(label, text, False)]
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UnusableInput(label, "input", f"neither JSON nor YAML: {getattr(exc, 'problem', None) or exc}{where}"
                            ) from None
    found = []
    for doc in docs:
        data = doc.get("data") if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" else None
        if isinstance(data, dict) and isinstance(data.get("net-conf.json"), str):
            meta = doc.get("metadata") or {}
            name = "/".join(str(meta[k]) for k in ("namespace", "name") if meta.get(k))
            found.append((f"{label}: ConfigMap {name or '(unnamed)'} net-conf.json", data["net-conf.json"], True))
    if not found:
        raise UnusableInput(label, "input", 'YAML with no ConfigMap holding data["net-conf.json"]; give a '
                                            "net-conf.json or a kube-flannel ConfigMap")
    return found


# --- checks for flannel-ext (sh -c) -----------------------------------------------------

def _at(command: str, offset: int) -> tuple[str, int, int]:
    line, column = position(command, offset)
    return f"line {line}, column {column}", line, column


def unquoted_remote(name: str, command: str, scan: Scan) -> list[Finding]:
    """Values from another node (its lease, or stdin read by `read`) expanded without quotes."""
    if name not in REMOTE_FIELDS:
        return []
    findings, remote = [], set(REMOTE_VARS) | set(scan.read_vars)
    for var, offset, safe in scan.expansions:
        if var in remote and not safe:
            where, line, column = _at(command, offset)
            origin = "stdin (another node's BackendData)" if var in scan.read_vars else "another node's lease"
            findings.append(Finding(f"Backend.{name}", "warning",
                                    f"${var} at {where} is not double-quoted; its value comes from {origin}, so "
                                    f"the shell would split and glob it: write \"${var}\"", "unquoted-remote",
                                    line, column))
    return findings


def shellcheck_command(name: str, command: str, shellcheck: str) -> list[Finding]:
    """shellcheck's findings for one command, run as `sh` with the hook's variables declared."""
    preamble = ": " + " ".join(f'"${{{var}=}}"' for var in COMMAND_VARS[name]) + "\n"
    proc = subprocess.run([shellcheck, "-s", "sh", "-f", "json1", "-"], input=preamble + command,
                          capture_output=True, text=True, timeout=60)
    try:
        comments = json.loads(proc.stdout)["comments"]
    except (ValueError, KeyError):
        return [Finding(f"Backend.{name}", "error", f"shellcheck failed: {(proc.stderr or proc.stdout).strip()}",
                        "shellcheck")]
    last_line = command.count("\n") + 1
    findings = []
    for item in comments:
        line = min(max(item["line"] - 1, 1), last_line)   # minus the preamble line
        level = item["level"] if item["level"] in _FAILING else "info"
        findings.append(Finding(f"Backend.{name}", level, f"SC{item['code']} at line {line}, column "
                                f"{item['column']}: {item['message']}", f"SC{item['code']}", line, item["column"]))
    return findings


def _deletes(argv: list[str]) -> str | None:
    """`ip route del`-style text when `argv` deletes kernel state, else None."""
    while argv and argv[0] in _KEYWORD_PREFIX:
        argv = argv[1:]
    if not argv or os.path.basename(argv[0]) not in ("ip", "bridge"):
        return None
    words = [a for a in argv[1:] if not a.startswith("-")]
    for obj, verb in zip(words, words[1:], strict=False):
        if obj in _DELETE_OBJECTS and verb in _DELETE_VERBS:
            return f"{os.path.basename(argv[0])} {obj} {verb}"
    return None


def remove_contract(name: str, command: str, scan: Scan | None) -> list[Finding]:
    """SubnetRemoveCommand must tolerate an absent entry (Documentation/lint.md).

    A delete decides the command's result when it is the last command, when `&&` follows
    it, or under `set -e`; `|| …` after it, or a later command, takes that away.
    """
    if name != "SubnetRemoveCommand":
        return []
    if scan is None:   # flannel: one exec, no shell to add `|| true` with
        found = _deletes(command.split())
        if not found:
            return []
        return [Finding(f"Backend.{name}", "warning",
                        f"`{found}` fails when the entry is already gone, and flannel ≥ v0.28.2 has no shell for "
                        "`|| true`: point SubnetRemoveCommand at a script that tolerates an absent entry",
                        "remove-not-idempotent", 1, 1)]
    top = [c for c in scan.commands if not c.nested]
    findings = []
    for cmd in top:
        found = _deletes(cmd.argv)
        if found and _decides_result(cmd, top):
            where, line, column = _at(command, cmd.start)
            findings.append(Finding(f"Backend.{name}", "warning",
                                    f"`{found}` at {where} fails when the entry is already gone (a repeated or "
                                    "retried remove, a restart after kill -9), and that failure is the command's "
                                    f"result: write `{found} … || true`, or check afterwards that the entry is gone",
                                    "remove-not-idempotent", line, column))
    return findings


def _decides_result(cmd: Command, top: list[Command]) -> bool:
    if cmd.after in ("||", "|", "&"):
        return False
    return cmd is top[-1] or cmd.after == "&&" or cmd.errexit


# --- checks for upstream flannel (no shell) ---------------------------------------------

def not_portable(name: str, command: str, scan: Scan) -> list[Finding]:
    """Shell features flannel ≥ v0.28.2 does not have, one finding per feature."""
    field, findings = f"Backend.{name}", []
    seen: dict[str, list[int]] = {}
    for feature, offset in scan.features:
        seen.setdefault(feature, []).append(offset)
    for feature, offsets in sorted(seen.items(), key=lambda item: item[1][0]):
        where, line, column = _at(command, offsets[0])
        more = f" (and {len(offsets) - 1} more)" if len(offsets) > 1 else ""
        extra = "; the quotes reach the program literally" if feature == "quotes" else ""
        findings.append(Finding(field, "warning", f"{feature} at {where}{more} {_PORT}{extra}", "not-portable",
                                line, column))
    if name in REMOTE_FIELDS:
        for var, offset, _ in scan.expansions:
            if var in ("IPV6SUBNET", "PUBLIC_IPV6") and var not in scan.read_vars:
                where, line, column = _at(command, offset)
                findings.append(Finding(field, "warning", f"${var} at {where} is empty on flannel: it sets only "
                                        f"SUBNET and PUBLIC_IP for {name}", "upstream-unset", line, column))
    if name == "ShutdownCommand":
        findings.append(Finding(field, "info", "upstream flannel never runs ShutdownCommand (flannel-ext does)",
                                "upstream-ignores"))
    return findings


# --- running ----------------------------------------------------------------------------

def check_command(name: str, command: str, *, target: str = "flannel-ext",
                  shellcheck: str | None = None) -> list[Finding]:
    """Every finding for one Backend command under `target`."""
    scan = Scan(command)
    if target == "flannel":
        return not_portable(name, command, scan) + remove_contract(name, command, None)
    ours = unquoted_remote(name, command, scan)
    flagged = {(f.line, f.column) for f in ours}
    # shellcheck's SC2086 at a spot we already flagged says the same thing: keep ours, which
    # says where the value comes from.
    theirs = [f for f in (shellcheck_command(name, command, shellcheck) if shellcheck else [])
              if not (f.rule == "SC2086" and (f.line, f.column) in flagged)]
    return theirs + ours + remove_contract(name, command, scan)


def lint_text(text: str, source: str, *, target: str = "flannel-ext", kube: bool = False,
              shellcheck: str = "shellcheck") -> tuple[list[Finding], list[str]]:
    """Findings for one net-conf text, plus notes for stderr. Raises ConfigError."""
    config = parse_netconf(text, source, check_subnets=not kube)
    notes, tool = [], shutil.which(shellcheck) if target == "flannel-ext" else None
    if config.commands and target == "flannel-ext" and tool is None:
        notes.append(f"flannel-ext lint: {shellcheck} is missing, so shell syntax is not checked "
                     "(apt-get install shellcheck)")
    findings = []
    for name in COMMAND_FIELDS.values():
        if config.commands.get(name):
            findings += check_command(name, config.commands[name], target=target, shellcheck=tool)
    return findings, notes


def lint_inputs(arg: str, *, target: str = "flannel-ext", kube: bool = False,
                shellcheck: str = "shellcheck") -> tuple[list[tuple[str, Finding]], list[str]]:
    """(source, finding) for every net-conf in `arg` (a file, `-`, or a manifest's ConfigMaps),
    plus notes for stderr. Raises UnusableInput or ConfigError (exit 2)."""
    results: list[tuple[str, Finding]] = []
    notes: list[str] = []
    for source, text, from_configmap in read_inputs(arg):
        # A ConfigMap is what --kube-subnet-mgr reads, and kube mode never checks subnets.
        findings, extra = lint_text(text, source, target=target, kube=kube or from_configmap, shellcheck=shellcheck)
        results += [(source, f) for f in findings]
        notes += [n for n in extra if n not in notes]
    return results, notes


def lint_file(path: str, **options) -> tuple[list[Finding], list[str]]:
    results, notes = lint_inputs(path, **options)
    return [f for _, f in results], notes


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.level in _FAILING for f in findings) else 0


def _run(args) -> int:
    notes: list[str] = []
    try:
        results, notes = lint_inputs(args.file, target=args.target, kube=args.kube, shellcheck=args.shellcheck)
        code = exit_code([f for _, f in results])
    except ConfigError as exc:
        where = f"{exc.source}: " + (f"{exc.field}: " if exc.field else "")
        results, code = [(exc.source, Finding(exc.field or "config", "error", str(exc)[len(where):],
                                               "unusable-input"))], 2
    except UnusableInput as exc:
        results, code = [(exc.source, Finding(exc.field, "error", exc.message, "unusable-input"))], 2
    for note in notes:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps({"target": args.target, "exit_code": code,
                          "findings": [{"source": source, **asdict(f)} for source, f in results]}, indent=2))
    else:
        for source, finding in results:
            print(finding.format(source))
    return code


def register(subparsers) -> None:
    """Add `flannel-ext lint FILE`."""
    parser = subparsers.add_parser(
        "lint", help="check a net-conf.json and its extension commands",
        description="Check a net-conf.json (or a kube-flannel ConfigMap) and its extension commands for a "
                    "target: flannel-ext (sh -c: shellcheck, unquoted remote values, the remove contract) or "
                    "flannel >= v0.28.2 (no shell: portability). Exit 0 clean, 1 findings, 2 unusable input.")
    parser.add_argument("file", metavar="FILE",
                        help="the net-conf.json, or a YAML manifest with a ConfigMap's data[\"net-conf.json\"]; "
                             "- reads stdin")
    parser.add_argument("--target", choices=TARGETS, default="flannel-ext",
                        help="what will run the commands: flannel-ext (default) or upstream flannel >= v0.28.2")
    parser.add_argument("--json", action="store_true", help="print one JSON object: target, exit_code, findings")
    parser.add_argument("--kube", action="store_true",
                        help="kube mode: skip the SubnetLen/SubnetMin/SubnetMax checks, as flannel does "
                             "(implied for a ConfigMap)")
    parser.add_argument("--shellcheck", default="shellcheck", metavar="PATH",
                        help="the shellcheck program (default: shellcheck from PATH)")
    parser.set_defaults(func=_run)
