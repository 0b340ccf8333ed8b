"""The reader of doc pages, for tests/test_docs.py.

The generated regions of the pages (the op reference and top-level keys in docs/language.md,
the command reference in docs/cli.md) are written by the package, `archspec.analysis.docs`;
tests/test_docs.py regenerates each and compares. After changing an op, a spec key or a
command, rewrite them with

    python -m archspec.analysis.docs --write

Code blocks in the pages follow a convention the tests read (HTML comments right before a
fence, invisible in the rendered site):

- a `yaml` block with a top-level `stages:` is a whole spec: it must pass `archspec check`;
- `<!-- spec: layers input=C,H,W -->`: the block is a list of layers, checked as one stage of
  a spec with that input;
- `<!-- expect: E-CODE[, E-CODE...] -->`: the spec must fail with exactly these error codes;
- `<!-- fragment: why -->`: a piece of a spec shown on its own, not checked;
- `bash`/`console` blocks are run from a scratch directory that sees `specs/`, `docs/` and
  `benchmarks/`; a `console` block's output must match what the command prints (a line `...`
  matches any number of lines); `<!-- exit: N -->` is the exit status of the block's last
  command (the others, and every command without it, must exit 0); `<!-- no-run: why -->`
  skips a block;
- `pycon` blocks are doctests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from archspec.analysis.docs import DOCS, GENERATED, ROOT, region, wrap_layers

__all__ = ["DOCS", "GENERATED", "ROOT", "region", "wrap_layers"]
CODE_RE = re.compile(r'"(E-[A-Z0-9-]+)"')


# --------------------------------------------------------------------------- reading pages


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARK = re.compile(r"^\s*<!--\s*([\w-]+)\s*(?::\s*(.*?))?\s*-->\s*$")


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3)
        marks: dict[str, str] = {}
        j = i - 1
        while j >= 0 and (not lines[j].strip() or MARK.match(lines[j])):
            mm = MARK.match(lines[j])
            if mm:
                marks.setdefault(mm.group(1), (mm.group(2) or "").strip())
            elif marks:  # a blank line after the marks ends them
                break
            j -= 1
        body: list[str] = []
        k = i + 1
        while k < len(lines) and not re.match(
            rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[k]
        ):
            body.append(
                lines[k][len(indent) :] if lines[k].startswith(indent) else lines[k].lstrip()
            )
            k += 1
        out.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n", marks))
        i = k + 1
    return out


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$', re.MULTILINE)


def expand_snippets(text: str) -> str:
    """Inline `--8<-- "path"` lines (pymdownx.snippets, paths from the repository root)."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8").rstrip("\n"), text)


def spec_text(block: Block) -> str | None:
    """The spec a yaml block stands for, or None when it is not a spec (a marked fragment)."""
    if "fragment" in block.marks:
        return None
    text = expand_snippets(block.text)
    kind = block.marks.get("spec", "")
    if kind.startswith("layers"):
        m = re.search(r"input=([\d,]+)", kind)
        return wrap_layers(text, m.group(1) if m else "3,32,32")
    return text


def error_codes_in_source() -> set[str]:
    codes: set[str] = set()
    for path in (ROOT / "archspec").rglob("*.py"):
        codes |= set(CODE_RE.findall(path.read_text(encoding="utf-8")))
    return codes
