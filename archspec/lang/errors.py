"""Diagnostics: one located error each, rendered rustc-style, and the exception that carries them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple


class Loc(NamedTuple):
    """A 1-based position in a spec file."""

    file: str
    line: int = 1
    column: int = 1
    width: int = 1  # how many characters the caret underlines

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Diagnostic(NamedTuple):
    """One located error: where, its code, the message and a hint."""

    loc: Loc
    code: str
    message: str
    help: str | None = None
    # where an error inside a template body happened: the uses (module paths) that failed
    note: str | None = None

    def to_json(self) -> dict:
        out = {
            "file": self.loc.file,
            "line": self.loc.line,
            "column": self.loc.column,
            "code": self.code,
            "message": self.message,
            "help": self.help,
        }
        if self.note is not None:
            out["note"] = self.note
        return out

    def render(self, source_lines: list[str] | None = None) -> str:
        out = [f"{self.loc}: error[{self.code}]: {_printable(self.message)}"]
        if source_lines and 1 <= self.loc.line <= len(source_lines):
            text = source_lines[self.loc.line - 1].rstrip("\n")
            if len(text) <= 200:
                gutter = " " * len(str(self.loc.line))
                out.append(f"{gutter} |")
                out.append(f"{self.loc.line} | {text}")
                caret = "^" * max(1, min(self.loc.width, len(text) - self.loc.column + 1))
                out.append(f"{gutter} | {' ' * (self.loc.column - 1)}{caret}")
        if self.note:
            out.append(f"note: {_printable(self.note)}")
        if self.help:
            out.append(f"help: {_printable(self.help)}")
        return "\n".join(out)


def _printable(text: str) -> str:
    """Escape control characters and lone surrogates a spec smuggled into a name (`"\\e[2J"`),
    so an error message cannot drive the user's terminal or fail to encode."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)


class SpecError(Exception):
    """Raised by `archspec.build` (and friends) when a spec has errors; carries all of them."""

    def __init__(self, diagnostics: Iterable[Diagnostic], source_lines: list[str] | None = None):
        self.diagnostics = list(diagnostics)
        self.source_lines = source_lines
        super().__init__(self.render())

    @property
    def errors(self) -> list[Diagnostic]:
        return self.diagnostics

    def render(self) -> str:
        return "\n".join(d.render(self.source_lines) for d in self.diagnostics)


class Problem(Exception):
    """Raised inside a rule; the caller attaches the location and turns it into a Diagnostic."""

    def __init__(self, code: str, message: str, help: str | None = None, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.help = help
        self.field = field  # the parameter at fault, so the caller can point at its value


@dataclass
class Collector:
    """Gathers every diagnostic of one check, so all errors of a file are reported at once."""

    items: list[Diagnostic] = field(default_factory=list)
    limit: int = 200
    # the template use being lowered (the walk sets it): an error's note names it
    context: str | None = None
    _places: dict[int, list[str]] = field(default_factory=dict)  # a diagnostic's uses, by index

    def add(
        self, loc: Loc, code: str, message: str, help: str | None = None, note: str | None = None
    ) -> None:
        place = self.context if note is None else note
        # A repeat or template lowers the same text once per use: say each error once, with
        # every use where it happens.
        for i, d in enumerate(self.items):
            if d.loc == loc and d.code == code and d.message == message:
                places = self._places.get(i)
                if place is not None and places is not None and place not in places:
                    places.append(place)
                    self.items[i] = d._replace(note=_note(places))
                return
        if len(self.items) < self.limit:
            if place is not None:
                self._places[len(self.items)] = [place]
            self.items.append(Diagnostic(loc, code, message, help, _note([place] if place else [])))

    def problem(self, loc: Loc, p: Problem) -> None:
        self.add(loc, p.code, p.message, p.help)


def _note(places: list[str]) -> str | None:
    """`in the use at `l2.0` (line 13)`, for one use or several."""
    if not places:
        return None
    if len(places) == 1:
        return f"in the use at {places[0]}"
    shown = places[:4] if len(places) <= 5 else [*places[:4], f"{len(places) - 4} more"]
    return f"in the uses at {', '.join(shown[:-1])} and {shown[-1]}"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A `help:` line suggesting the closest known name, or listing the known names."""
    choices = sorted({str(c) for c in choices})  # YAML keys may be numbers
    # difflib ranks the candidates; a suggestion must also be a few edits away, or `attention`
    # would suggest `flatten` and `hardsigmoid` `sigmoid` (a different thing, not a typo).
    import difflib  # here, not above: a clean check never suggests anything

    most = max(2, len(word) // 3)
    for close in difflib.get_close_matches(word, choices, n=3, cutoff=0.6):
        if edits(word.lower(), close.lower()) <= most:
            return f"did you mean `{close}`?"
    if choices and len(choices) <= 30:
        return "expected one of: " + ", ".join(choices)
    return None


def raised_at(e: BaseException) -> str:
    """`file:line` where an exception was raised (for a SyntaxError, where the bad code is)."""
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}"
    import traceback  # here: only a failing plugin is located this way

    frames = traceback.extract_tb(e.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "an unknown place"


def edits(a: str, b: str) -> int:
    """Edit distance: insertions, deletions, substitutions and swaps of neighbours, each 1."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]
