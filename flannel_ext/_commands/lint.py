"""`flannel-ext lint FILE`: check a net-conf.json and its extension commands.

Three kinds of findings, one line each (``FILE: Backend.Field: level: message``):

* shellcheck's, with the variables each hook receives declared;
* remote-controlled values (another node's lease, or BackendData read from stdin)
  expanded without double quotes in SubnetAdd/RemoveCommand;
* shell features that flannel ≥ v0.28.2 no longer has: it splits a command on
  whitespace, expands only $VAR, and execs the first word (GHSA-vchx-5pr6-ffx2).

Exit codes: 0 clean (info only), 1 warnings, 2 errors (including a bad config).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from flannel_ext._util.errors import ConfigError
from flannel_ext._config.netconf import COMMAND_FIELDS, load_netconf

_LIFECYCLE = ("NETWORK", "SUBNET", "IPV6SUBNET", "PUBLIC_IP", "PUBLIC_IPV6")
REMOTE_VARS = ("SUBNET", "PUBLIC_IP", "IPV6SUBNET", "PUBLIC_IPV6")
REMOTE_FIELDS = ("SubnetAddCommand", "SubnetRemoveCommand")
#: What flannel-ext puts in each command's environment (besides its own environment).
HOOK_VARS = {
    "PreStartupCommand": ("FLANNEL_IFACE",),
    "PostStartupCommand": _LIFECYCLE + ("FLANNEL_IFACE",),
    "SubnetAddCommand": REMOTE_VARS + ("FLANNEL_IFACE",),
    "SubnetRemoveCommand": REMOTE_VARS + ("FLANNEL_IFACE",),
    "ShutdownCommand": _LIFECYCLE + ("FLANNEL_IFACE",),
}
# Builtins with no executable on a typical node (Alpine busybox has none of these).
BUILTINS = {"export", "read", "cd", "set", "unset", "eval", "exec", "source", ".", "alias", "local", "trap",
            "exit", "return", "shift", "readonly", "wait", "umask", "ulimit", "hash", "type", "command",
            "getopts", "break", "continue", ":"}
KEYWORDS = {"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
            "in", "{", "}", "!", "function"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_PORT = ("does not port to flannel ≥ v0.28.2 (no shell there: the command is split on whitespace "
         "and its first word exec'd)")
_LEVELS = {"error": 2, "warning": 1, "info": 0}


@dataclass
class Finding:
    field: str          # e.g. "Backend.SubnetAddCommand"
    level: str          # error | warning | info
    message: str

    def format(self, path: str) -> str:
        return f"{path}: {self.field}: {self.level}: {self.message}"


@dataclass
class _Word:
    start: int
    text: str = ""                                   # quotes removed, expansions kept as written
    expansions: list = field(default_factory=list)   # (name, offset, double-quoted)


class _Shell:
    """A small POSIX sh scanner: enough to find features, simple commands and expansions."""

    def __init__(self, text: str):
        self.s = text
        self.features: list[tuple[str, int]] = []                 # (feature, offset)
        self.expansions: list[tuple[str, int, bool]] = []         # (name, offset, safe from splitting)
        self.read_vars: list[str] = []
        self._scan(0)

    def _feature(self, name: str, at: int) -> None:
        self.features.append((name, at))

    def _scan(self, i: int, closer: str | None = None) -> int:
        """Scan unquoted shell text from `i` to `closer` (or the end); return the index after it."""
        s, words, word, target, depth = self.s, [], None, False, 0

        def end_word():
            nonlocal word, target
            if word is not None and not target:
                words.append(word)
            elif word is not None:
                target = False   # a redirect's target is no argument
            word = None

        def end_command():
            end_word()
            if words:
                self._command(list(words))
                words.clear()

        while i < len(s):
            c = s[i]
            if c == closer and depth == 0:
                end_command()
                return i + 1
            if word is None and c not in " \t\n;&|<>()":
                word = _Word(i)
            if c in " \t":
                end_word()
            elif c == "\n":
                self._feature("newline (several commands)", i)
                end_command()
            elif c == "#" and word.start == i:
                self._feature("comment '#'", i)
                i = s.find("\n", i) if "\n" in s[i:] else len(s)
                word = None
                continue
            elif c == "'":
                self._feature("quotes", i)
                end = s.find("'", i + 1)
                end = len(s) if end < 0 else end
                word.text += s[i + 1:end]
                i = end + 1
                continue
            elif c == '"':
                self._feature("quotes", i)
                i = self._dquote(i + 1, word)
                continue
            elif c == "\\":
                self._feature("backslash escape", i)
                word.text += s[i + 1:i + 2]
                i += 2
                continue
            elif c == "$":
                i = self._dollar(i, word, quoted=False)
                continue
            elif c == "`":
                i = self._backtick(i, word)
                continue
            elif c in ";&|":
                op = s[i:i + 2] if s[i:i + 2] in ("&&", "||", ";;") else c
                self._feature({"|": "pipe '|'", "&": "background '&'"}.get(op, f"'{op}'"), i)
                end_command()
                i += len(op)
                continue
            elif c in "<>":
                op = re.match(r"<<-?|>>|<>|[<>][&|]?", s[i:]).group()
                at = i
                if word is not None and word.text.isdigit():   # the fd of 2>, kept out of argv
                    op, at, word = word.text + op, word.start, None
                self._feature(f"redirect '{op}'", at)
                end_word()
                target = True
                i += len(op)
                continue
            elif c in "()":
                if c == "(":
                    depth += 1
                    self._feature("subshell '(…)'", i)
                else:
                    depth = max(0, depth - 1)
                end_command()
            else:
                if c in "*?" or (c == "~" and word.start == i):
                    self._feature("glob" if c != "~" else "tilde '~'", i)
                word.text += c
            i += 1
        end_command()
        return i

    def _dquote(self, i: int, word: _Word) -> int:
        s = self.s
        while i < len(s):
            c = s[i]
            if c == '"':
                return i + 1
            if c == "\\" and s[i + 1:i + 2] in ("$", "`", '"', "\\", "\n"):
                word.text += s[i + 1]
                i += 2
            elif c == "$":
                i = self._dollar(i, word, quoted=True)
            elif c == "`":
                i = self._backtick(i, word)
            else:
                word.text += c
                i += 1
        return i

    def _dollar(self, i: int, word: _Word, quoted: bool) -> int:
        s, nxt = self.s, self.s[i + 1:i + 2]
        if s.startswith("$((", i):
            self._feature("arithmetic '$((…))'", i)
            end = s.find("))", i)
            end = len(s) if end < 0 else end + 2
            word.text += s[i:end]
            return end
        if nxt == "(":
            self._feature("command substitution '$(…)'", i)
            word.text += "$(…)"
            return self._scan(i + 2, ")")
        if nxt == "{":
            end = s.find("}", i)
            end = len(s) if end < 0 else end
            body = s[i + 2:end]
            name = _NAME.match(body)
            if name:
                word.expansions.append((name.group(), i, quoted))
            if not name or name.group() != body:
                self._feature(f"parameter expansion '${{{body}}}' (flannel expands it to \"\")", i)
            word.text += s[i:end + 1]
            return end + 1
        name = _NAME.match(s, i + 1)
        if name:
            word.expansions.append((name.group(), i, quoted))
            word.text += s[i:name.end()]
            return name.end()
        if nxt and nxt in "0123456789?$@*#!-":
            self._feature(f"special parameter '${nxt}' (flannel expands it to \"\")", i)
            word.text += s[i:i + 2]
            return i + 2
        word.text += "$"
        return i + 1

    def _backtick(self, i: int, word: _Word) -> int:
        self._feature("backticks '`…`'", i)
        word.text += "`…`"
        return self._scan(i + 1, "`")

    def _command(self, words: list[_Word]) -> None:
        """One simple command: leading assignments, then argv[0] and its arguments."""
        first = 0
        while first < len(words) and _ASSIGN.match(words[first].text):
            self._feature("variable assignment", words[first].start)
            first += 1
        for index, word in enumerate(words):
            # NAME=$VALUE before the command is not word-split; anything else is.
            self.expansions += [(n, at, quoted or index < first) for n, at, quoted in word.expansions]
        if first == len(words):
            return
        argv0 = words[first].text
        if argv0 in BUILTINS:
            self._feature(f"shell builtin '{argv0}'", words[first].start)
        elif argv0 in KEYWORDS:
            self._feature(f"shell keyword '{argv0}'", words[first].start)
        if argv0 == "read":
            skip = False
            for word in words[first + 1:]:
                if skip or word.text.startswith("-"):
                    skip = word.text in ("-p", "-d", "-n", "-N", "-t", "-u")
                    continue
                if _NAME.fullmatch(word.text):
                    self.read_vars.append(word.text)


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def check_command(name: str, command: str) -> list[Finding]:
    """Our own checks of one Backend command: unquoted remote values, non-portable features."""
    where, shell, findings = f"Backend.{name}", _Shell(command), []
    if name in REMOTE_FIELDS:
        remote = set(REMOTE_VARS) | set(shell.read_vars)
        for var, at, safe in shell.expansions:
            if var in remote and not safe:
                origin = "stdin (another node's BackendData)" if var in shell.read_vars else "another node's lease"
                findings.append(Finding(where, "warning",
                                        f"${var} at {_position(command, at)} is not double-quoted; its value comes "
                                        f"from {origin}, so the shell would split and glob it: write \"${var}\""))
            if var in ("IPV6SUBNET", "PUBLIC_IPV6") and var not in shell.read_vars:
                findings.append(Finding(where, "info", f"${var} at {_position(command, at)} is set by flannel-ext "
                                        f"but never by upstream flannel for {name} (only SUBNET and PUBLIC_IP)"))
    seen: dict[str, list[int]] = {}
    for feature, at in shell.features:
        seen.setdefault(feature, []).append(at)
    for feature, offsets in sorted(seen.items(), key=lambda item: item[1][0]):
        more = f" (and {len(offsets) - 1} more)" if len(offsets) > 1 else ""
        extra = "; the quotes reach the program literally" if feature == "quotes" else ""
        findings.append(Finding(where, "warning", f"{feature} at {_position(command, offsets[0])}{more} {_PORT}"
                                f"{extra}"))
    if name == "ShutdownCommand":
        findings.append(Finding(where, "info", "upstream flannel never runs ShutdownCommand (flannel-ext does)"))
    return findings


def shellcheck_command(name: str, command: str, shellcheck: str) -> list[Finding]:
    """shellcheck's findings for one command, run as `sh` with the hook's variables declared."""
    preamble = ": " + " ".join(f'"${{{var}=}}"' for var in HOOK_VARS[name]) + "\n"
    proc = subprocess.run([shellcheck, "-s", "sh", "-f", "json1", "-"], input=preamble + command,
                          capture_output=True, text=True, timeout=60)
    try:
        comments = json.loads(proc.stdout)["comments"]
    except (ValueError, KeyError):
        return [Finding(f"Backend.{name}", "error", f"shellcheck failed: {(proc.stderr or proc.stdout).strip()}")]
    last_line = command.count("\n") + 1
    findings = []
    for item in comments:
        line = min(max(item["line"] - 1, 1), last_line)   # minus the preamble line
        level = "error" if item["level"] == "error" else "warning" if item["level"] == "warning" else "info"
        findings.append(Finding(f"Backend.{name}", level, f"SC{item['code']} at line {line}, column "
                                f"{item['column']}: {item['message']}"))
    return findings


def lint_file(path: str, *, kube: bool = False, shellcheck: str = "shellcheck") -> tuple[list[Finding], list[str]]:
    """Findings for the net-conf.json at `path`, plus notes for stderr. Raises ConfigError."""
    config = load_netconf(path, check_subnets=not kube)
    notes, tool = [], shutil.which(shellcheck)
    if config.commands and tool is None:
        notes.append(f"flannel-ext lint: {shellcheck} not found, so shell syntax is not checked "
                     "(apt-get install shellcheck)")
    findings = []
    for name in COMMAND_FIELDS.values():
        command = config.commands.get(name)
        if command:
            if tool:
                findings += shellcheck_command(name, command, tool)
            findings += check_command(name, command)
    return findings, notes


def exit_code(findings: list[Finding]) -> int:
    return max((_LEVELS[f.level] for f in findings), default=0)


def _run(args) -> int:
    try:
        findings, notes = lint_file(args.file, kube=args.kube, shellcheck=args.shellcheck)
    except ConfigError as exc:
        prefix = f"{exc.source}: " + (f"{exc.field}: " if exc.field else "")
        print(f"{exc.source}: {exc.field or 'config'}: error: {str(exc)[len(prefix):]}")
        return exc.exit_code
    for note in notes:
        print(note, file=sys.stderr)
    for finding in findings:
        print(finding.format(args.file))
    return exit_code(findings)


def register(subparsers) -> None:
    """Add `flannel-ext lint FILE`."""
    parser = subparsers.add_parser(
        "lint", help="check a net-conf.json and its extension commands",
        description="Check a net-conf.json: the config itself, shellcheck on each command, unquoted "
                    "remote values, and shell features flannel >= v0.28.2 no longer supports. "
                    "Exit 0 clean, 1 warnings, 2 errors.")
    parser.add_argument("file", metavar="FILE", help="the net-conf.json to check")
    parser.add_argument("--kube", action="store_true",
                        help="kube mode: skip the SubnetLen/SubnetMin/SubnetMax checks (as flannel does)")
    parser.add_argument("--shellcheck", default="shellcheck", metavar="PATH",
                        help="the shellcheck program (default: shellcheck from PATH)")
    parser.set_defaults(func=_run)
