"""A small POSIX sh scanner: enough to find shell features, simple commands and expansions.

It is no parser: it reads a one-liner the way ``sh -c`` would split it into simple
commands joined by ``;``, ``&&``, ``||``, ``|``, ``&`` and newlines, with quotes,
expansions and redirects located by offset. `flannel-ext lint` builds its checks on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Builtins with no executable on a typical node (Alpine busybox has none of these).
BUILTINS = {"export", "read", "cd", "set", "unset", "eval", "exec", "source", ".", "alias", "local", "trap",
            "exit", "return", "shift", "readonly", "wait", "umask", "ulimit", "hash", "type", "command",
            "getopts", "break", "continue", ":"}
KEYWORDS = {"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
            "in", "{", "}", "!", "function"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_REDIRECT = re.compile(r"<<-?|>>|<>|[<>][&|]?")


@dataclass
class Word:
    start: int
    text: str = ""                                    # quotes removed, expansions kept as written
    expansions: list[tuple[str, int, bool]] = field(default_factory=list)   # (name, offset, double-quoted)


@dataclass
class Command:
    """One simple command: its words (quotes removed), where it starts, what follows it."""

    argv: list[str]
    start: int
    after: str          # the operator after it: ';', '&&', '||', '|', '&', ';;', '\n', ')' or '' (the end)
    nested: bool        # inside $(…) or backticks: its status is not the command line's
    errexit: bool       # `set -e` was in force when it ran


class Scan:
    """The features, simple commands and expansions of one sh command line."""

    def __init__(self, text: str):
        self.s = text
        self.features: list[tuple[str, int]] = []                 # (feature, offset)
        self.expansions: list[tuple[str, int, bool]] = []         # (name, offset, safe from splitting)
        self.read_vars: list[str] = []
        self.commands: list[Command] = []
        self._errexit = False
        self._scan(0)

    def _feature(self, name: str, at: int) -> None:
        self.features.append((name, at))

    def _scan(self, i: int, closer: str | None = None) -> int:
        """Scan unquoted shell text from `i` to `closer` (or the end); return the index after it."""
        s, words, depth = self.s, [], 0
        word: Word | None = None
        target = False
        nested = closer is not None

        def end_word() -> None:
            nonlocal word, target
            if word is not None and not target:
                words.append(word)
            elif word is not None:
                target = False   # a redirect's target is no argument
            word = None

        def end_command(after: str) -> None:
            end_word()
            if words:
                self._command(list(words), after, nested)
                words.clear()

        while i < len(s):
            c = s[i]
            if c == closer and depth == 0:
                end_command(")")
                return i + 1
            if word is None and c not in " \t\n;&|<>()":
                word = Word(i)
            if c in " \t":
                end_word()
            elif c == "\n":
                self._feature("newline (several commands)", i)
                end_command("\n")
            elif c == "#" and word is not None and word.start == i:
                self._feature("comment '#'", i)
                i = s.find("\n", i) if "\n" in s[i:] else len(s)
                word = None
                continue
            elif word is not None and c == "'":
                self._feature("quotes", i)
                end = s.find("'", i + 1)
                end = len(s) if end < 0 else end
                word.text += s[i + 1:end]
                i = end + 1
                continue
            elif word is not None and c == '"':
                self._feature("quotes", i)
                i = self._dquote(i + 1, word)
                continue
            elif word is not None and c == "\\":
                self._feature("backslash escape", i)
                word.text += s[i + 1:i + 2]
                i += 2
                continue
            elif word is not None and c == "$":
                i = self._dollar(i, word, quoted=False)
                continue
            elif word is not None and c == "`":
                i = self._backtick(i, word)
                continue
            elif c in ";&|":
                op = s[i:i + 2] if s[i:i + 2] in ("&&", "||", ";;") else c
                self._feature({"|": "pipe '|'", "&": "background '&'"}.get(op, f"'{op}'"), i)
                end_command(op)
                i += len(op)
                continue
            elif c in "<>":
                match = _REDIRECT.match(s, i)
                op = match.group() if match else c
                at = i
                if word is not None and word.text.isdigit():   # the fd of 2>, kept out of argv
                    op, at, word = word.text + op, word.start, None
                self._feature(f"redirect '{op}'", at)
                end_word()
                target = True
                i += len(op) - (i - at)   # the fd digits were already read
                continue
            elif c in "()":
                if c == "(":
                    depth += 1
                    self._feature("subshell '(…)'", i)
                else:
                    depth = max(0, depth - 1)
                end_command(c)
            elif word is not None:
                if c in "*?" or (c == "~" and word.start == i):
                    self._feature("glob" if c != "~" else "tilde '~'", i)
                word.text += c
            i += 1
        end_command("")
        return i

    def _dquote(self, i: int, word: Word) -> int:
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

    def _dollar(self, i: int, word: Word, quoted: bool) -> int:
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

    def _backtick(self, i: int, word: Word) -> int:
        self._feature("backticks '`…`'", i)
        word.text += "`…`"
        return self._scan(i + 1, "`")

    def _command(self, words: list[Word], after: str, nested: bool) -> None:
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
        argv = [w.text for w in words[first:]]
        self.commands.append(Command(argv, words[first].start, after, nested, self._errexit))
        if argv[0] in BUILTINS:
            self._feature(f"shell builtin '{argv[0]}'", words[first].start)
        elif argv[0] in KEYWORDS:
            self._feature(f"shell keyword '{argv[0]}'", words[first].start)
        if argv[0] == "set" and not nested:
            self._set_options(argv[1:])
        if argv[0] == "read":
            skip = False
            for text in argv[1:]:
                if skip or text.startswith("-"):
                    skip = text in ("-p", "-d", "-n", "-N", "-t", "-u")
                    continue
                if _NAME.fullmatch(text):
                    self.read_vars.append(text)

    def _set_options(self, args: list[str]) -> None:
        """Follow `set -e` / `set +e` (and the -o errexit spelling) for the commands after it."""
        for index, arg in enumerate(args):
            if arg in ("-o", "+o") and args[index + 1:index + 2] == ["errexit"]:
                self._errexit = arg == "-o"
            elif re.fullmatch(r"[-+][a-zA-Z]+", arg) and "e" in arg:
                self._errexit = arg[0] == "-"


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, column) of `offset`, both 1-based."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1
