"""What the language server answers, on plain data: no pygls here, so it is tested directly.

Positions are 0-based (line, column) in code points; the server converts them to the client's
units. Locations in the spec (`Loc`) are 1-based, as `check` prints them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from archspec.analysis.report import layer_row
from archspec.analysis.table import human_number, render_rows
from archspec.ir import LAYER, Node
from archspec.lang.errors import Diagnostic, Loc
from archspec.lang.source import LMap, Source
from archspec.lower import COMBINATORS
from archspec.lsp.engine import Analysis
from archspec.ops import OPS

MAX_HOVER_ROWS = 8
_WORD = re.compile(r"[A-Za-z0-9_]+")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a rename may call a template
# Keys of an item whose values are not items: a string there names no template.
_NOT_ITEMS = ("name", "merge", "prefix", "inline", "flat", "repeat", "start", "projection")


@dataclass(frozen=True)
class Span:
    """A range on one line: 0-based line, start and end columns."""

    line: int
    start: int
    end: int


def span_of(loc: Loc, lines: list[str]) -> Span:
    """Where a located error or node stands: its width when the node gave one, else the word
    (or at least the character) at its position."""
    line, col = max(loc.line - 1, 0), max(loc.column - 1, 0)
    text = lines[line] if line < len(lines) else ""
    if loc.width > 1:
        return Span(line, col, col + loc.width)
    m = _WORD.match(text, col)
    return Span(line, col, m.end() if m else min(col + 1, max(len(text), col + 1)))


def name_span(loc: Loc, lines: list[str]) -> Span:
    """The characters of a scalar, inside its quotes if it has them."""
    s = span_of(loc, lines)
    text = lines[s.line] if s.line < len(lines) else ""
    if s.end - s.start >= 2 and text[s.start : s.start + 1] in "'\"":
        return Span(s.line, s.start + 1, s.end - 1)
    return s


# ---------------------------------------------------------------------- diagnostics


def diagnostics(analysis: Analysis) -> list[tuple[Span, Diagnostic]]:
    lines = (analysis.source.text if analysis.source else "").split("\n")
    if analysis.source is None:
        lines = analysis.report.source_lines or lines
    return [(span_of(d.loc, lines), d) for d in analysis.report.errors]


# ---------------------------------------------------------------------- the position index


@dataclass
class Index:
    """Every node and template use of one analysis, by the line it is written on."""

    by_line: dict[int, dict[tuple[int, int], list[Node]]]
    uses: dict[tuple[int, int], str]  # (line, column) of a template use -> its template
    whole: tuple[int, ...] = ()  # the network's input shape (the receptive field's bound)

    @classmethod
    def build(cls, analysis: Analysis) -> Index:
        by_line: dict[int, dict[tuple[int, int], list[Node]]] = {}

        def put(loc: Loc, node: Node) -> None:
            group = by_line.setdefault(loc.line - 1, {}).setdefault((loc.column - 1, 0), [])
            if all(n is not node for n in group):
                group.append(node)

        net = analysis.report.network
        if net is not None:
            todo = list(reversed(net.root.parts()))
            while todo:  # in forward order, so a template's uses are listed as they run
                node = todo.pop()
                put(node.loc, node)
                todo.extend(reversed(node.parts()))
        uses = {}
        for use in analysis.uses:
            put(use.loc, use.node)
            uses[(use.loc.line - 1, use.loc.column - 1)] = use.template
        return cls(by_line, uses, tuple(net.input) if net is not None else ())

    def at(self, line: int, col: int) -> list[Node]:
        """The nodes written at a position: the last thing on the line starting at or before
        the column (or the first on the line); every use of it, in forward order."""
        groups = self.by_line.get(line)
        if not groups:
            return []
        keys = sorted(groups)
        before = [k for k in keys if k[0] <= col]
        return groups[before[-1] if before else keys[0]]


def _rf(node: Node, whole: tuple[int, ...]) -> tuple[int, int] | None:
    if node.kind == LAYER:
        return node.rf
    state = getattr(node, "_state", None)  # what lower passed on: shape and receptive field
    return state.shown_rf(whole) if state is not None else None


def node_row(node: Node, whole: tuple[int, ...] = ()) -> dict | None:
    """A table row for a layer, or for a composite (its layers' sums), None if unknown."""
    if node.kind == LAYER:
        return layer_row(node) if node.inferred is not None else None
    if node.out_shape is None:
        return None
    leaves = [n for n in node.leaves() if n.inferred is not None]
    rf = _rf(node, whole)
    return {
        "path": node.path or "(model)",
        "op": node.kind,
        "output": list(node.out_shape),
        "params": sum(n.inferred.params for n in leaves if n.inferred),
        "macs": sum(n.inferred.macs for n in leaves if n.inferred),
        "receptive_field": list(rf) if rf else None,
    }


def hover(index: Index, line: int, col: int) -> str | None:
    """Markdown: the node under the cursor as `check`'s table prints it, one row per use."""
    nodes = index.at(line, col)
    if not nodes:
        return None
    rows = [r for r in (node_row(n, index.whole) for n in nodes) if r is not None]
    first = nodes[0]
    what = first.op if first.kind == LAYER else first.kind
    head = f"**{what}**"
    shapes = {tuple(r["output"]) for r in rows}
    if len(shapes) == 1:
        head += " → `" + "x".join(map(str, next(iter(shapes)))) + "`"
    if len(nodes) > 1:
        head += f" — {len(nodes)} uses"
    if not rows:
        return head + "\n\nshape unknown: an error before it stops inference"
    shown = render_rows(rows[:MAX_HOVER_ROWS])
    if len(rows) > MAX_HOVER_ROWS:
        shown.append(f"... and {len(rows) - MAX_HOVER_ROWS} more uses")
    if len(rows) > 1:
        params = sum(r["params"] for r in rows)
        macs = sum(r["macs"] for r in rows)
        shown.append(
            f"all uses: params {params:,} ({human_number(params)}), MACs {human_number(macs)}"
        )
    return head + "\n```text\n" + "\n".join(shown) + "\n```"


def inlay_hints(index: Index, lines: list[str]) -> list[tuple[int, int, str]]:
    """(line, column, label): the output shape at the end of each line whose last node has one
    shape (in a template used with several shapes, none)."""
    hints = []
    for line, groups in sorted(index.by_line.items()):
        nodes = groups[max(groups)]
        shapes = {n.out_shape for n in nodes}
        if len(shapes) != 1 or None in shapes or line >= len(lines):
            continue
        (shape,) = shapes
        hints.append((line, len(lines[line].rstrip()), "→ " + "x".join(map(str, shape or ()))))
    return hints


# ---------------------------------------------------------------------- the spec's names


def templates(src: Source | None) -> LMap:
    root = src.root if src is not None else None
    found = root.get("templates") if isinstance(root, LMap) else None
    return found if isinstance(found, LMap) else LMap()


def template_params(src: Source | None, name: str) -> list[str]:
    t = templates(src).get(name)
    params = t.get("params") if isinstance(t, dict) else None
    return [str(k) for k in params] if isinstance(params, dict) else []


def spec_params(src: Source | None) -> LMap | None:
    root = src.root if src is not None else None
    params = root.get("params") if isinstance(root, LMap) else None
    return params if isinstance(params, LMap) else None


def enclosing_template(src: Source | None, line: int) -> str | None:
    """The template whose definition holds 0-based `line`, if any."""
    root = src.root if src is not None else None
    tmpl = templates(src)
    if not isinstance(root, LMap) or not tmpl or "templates" not in root.key_locs:
        return None
    tops = sorted(loc.line - 1 for loc in root.key_locs.values())
    start = root.key_locs["templates"].line - 1
    end = next((t for t in tops if t > start), 1 << 30)
    if not start < line < end:
        return None
    inside = [(loc.line - 1, k) for k, loc in tmpl.key_locs.items() if loc.line - 1 <= line]
    return str(max(inside)[1]) if inside else None


# ---------------------------------------------------------------------- completion


@dataclass(frozen=True)
class Completion:
    """One completion item offered in the editor."""

    label: str
    kind: str  # op, combinator, template, param, variable, variant
    detail: str = ""


_IN_ATTRS = [
    ("c", "channels of the incoming image"),
    ("h", "height of the incoming image"),
    ("w", "width of the incoming image"),
    ("f", "features of an incoming flat tensor"),
]


def _op_params(name: str) -> list[str]:
    return [*OPS[name].Params.model_fields, "name"]


def _items(src: Source | None) -> list[Completion]:
    out = [Completion(n, "op", getattr(op, "doc", "")) for n, op in OPS.items()]
    out += [Completion(n, "combinator") for n in COMBINATORS]
    for t in templates(src):
        out.append(Completion(str(t), "template", "{" + ", ".join(template_params(src, t)) + "}"))
    return out


def _params_of(key: str, line_text: str, src: Source | None) -> list[Completion] | None:
    if key in OPS:
        return [Completion(p, "param", f"{key} parameter") for p in _op_params(key)]
    if key in ("with", "first", "at"):
        m = re.search(r"\buse:\s*['\"]?(\$?[A-Za-z0-9_]+)", line_text)
        key = m.group(1) if m else ""
        if key.startswith("$"):  # chosen by a parameter, which variants may set: any template
            names = dict.fromkeys(p for t in templates(src) for p in template_params(src, t))
            return [Completion(p, "param", "template parameter") for p in names]
    if key in templates(src):
        return [Completion(p, "param", f"{key} parameter") for p in template_params(src, key)]
    return None


def _dollar_names(src: Source | None, line: int) -> list[Completion]:
    names = [Completion("in", "variable", "the incoming shape: $in.c, $in.h, $in.w")]
    names.append(Completion("i", "variable", "the repetition index"))
    names += [Completion(n, "variable", "spec value") for n in ("num_classes", "width")]
    params = spec_params(src)
    names += [Completion(str(p), "variable", "spec parameter") for p in params or ()]
    t = enclosing_template(src, line)
    if t is not None:
        names += [Completion(p, "variable", f"parameter of {t}") for p in template_params(src, t)]
    return names


def complete(src: Source | None, lines: list[str], line: int, col: int) -> list[Completion]:
    """What may be typed at a position, from the text before the cursor: `$` names, template
    names after `use:`, an op's or template's parameters inside its mapping, and op, combinator
    and template names where a layer starts."""
    text = lines[line] if line < len(lines) else ""
    before = text[:col]
    if re.search(r"\$in\.[a-z]*$", before):
        return [Completion(a, "variable", d) for a, d in _IN_ATTRS]
    if re.search(r"\$[A-Za-z0-9_]*$", before):
        return _dollar_names(src, line)
    if re.search(r"\buse:\s*['\"]?[A-Za-z0-9_]*$", before):
        return [c for c in _items(src) if c.kind == "template"]
    if re.search(r"\bextends:\s*['\"]?[A-Za-z0-9_-]*$", before):
        return [Completion(v, "variant", "a variant of this spec") for v in _variants(src)]
    key = _open_brace_key(before)
    if key is not None:
        if re.search(r"[{,]\s*[A-Za-z0-9_]*$", before):
            return _params_of(key, text, src) or []
        if re.search(r":\s*[A-Za-z0-9_]*$", before):
            return []  # a value
    if re.fullmatch(r"\s*-\s*[A-Za-z0-9_]*|.*[\[,]\s*[A-Za-z0-9_]*", before):
        return _items(src)
    m = re.fullmatch(r"(\s+)[A-Za-z0-9_]*", before)
    if m:  # a key of a block mapping: whose?
        parent = _parent_key(lines, line, len(m.group(1)))
        if parent is not None:
            got = _params_of(parent, lines[line], src)
            if got is not None:
                return got
            if parent in ("main", "post", "layers", "body", "shortcut"):
                return _items(src)
    m = re.fullmatch(r"(\s+)[A-Za-z0-9_]+:\s*[A-Za-z0-9_]*", before)
    if m and _parent_key(lines, line, len(m.group(1))) == "stages":
        return _items(src)  # `stem: bn`: a stage that is one layer
    return []


def _open_brace_key(before: str) -> str | None:
    """The key whose flow mapping `{` is still open before the cursor on this line."""
    depth = 0
    for i in range(len(before) - 1, -1, -1):
        ch = before[i]
        if ch == "}":
            depth += 1
        elif ch == "{":
            if depth == 0:
                m = re.search(r"([A-Za-z0-9_]+)['\"]?:\s*$", before[:i])
                return m.group(1) if m else ""
            depth -= 1
    return None


def _parent_key(lines: list[str], line: int, indent: int) -> str | None:
    """The key of the nearest line above, indented less than `indent`, that opens a block."""
    for i in range(line - 1, -1, -1):
        body = lines[i].lstrip(" ")
        if not body or body.startswith("#"):
            continue
        ind = len(lines[i]) - len(body)
        if ind < indent:
            m = re.match(r"(?:-\s+)?['\"]?([A-Za-z0-9_]+)['\"]?:\s*(#.*)?$", body)
            return m.group(1) if m else None
    return None


# ---------------------------------------------------------------------- definition and rename


def word_at(lines: list[str], line: int, col: int) -> tuple[str, Span] | None:
    text = lines[line] if line < len(lines) else ""
    for m in _WORD.finditer(text):
        if m.start() <= col <= m.end():
            dollar = m.start() > 0 and text[m.start() - 1] == "$"
            word = ("$" if dollar else "") + m.group()
            return word, Span(line, m.start(), m.end())
    return None


def definition(src: Source | None, lines: list[str], line: int, col: int) -> Loc | None:
    """Where the template (or `$` parameter) under the cursor is defined."""
    got = word_at(lines, line, col)
    if got is None or src is None:
        return None
    word, _ = got
    if word.startswith("$"):
        name = word[1:]
        t = enclosing_template(src, line)
        tparams = templates(src).get(t) if t is not None else None
        decl = tparams.get("params") if isinstance(tparams, LMap) else None
        if isinstance(decl, LMap) and name in decl:
            return decl.key_locs[name]
        params = spec_params(src)
        if params is not None and name in params:
            return params.key_locs[name]
        return None
    tmpl = templates(src)
    if word in tmpl:
        return tmpl.key_locs[word]
    variants = _variants(src)
    if word in variants and re.search(r"\bextends:", lines[line]):
        return variants.key_locs[word]
    return None


def _variants(src: Source | None) -> LMap:
    found = src.root.get("variants") if src is not None and isinstance(src.root, LMap) else None
    return found if isinstance(found, LMap) else LMap()


def template_refs(src: Source, name: str) -> list[Loc]:
    """The definition of a template and every place that names it: items that use it (as an
    op, a string item or `use:`), and string values of parameters and arguments, which may
    choose a template (`params: {block: basic}` read by `use: $block`)."""
    refs: list[Loc] = []

    def args(value: Any) -> None:
        if isinstance(value, LMap):
            for k, v in value.items():
                if v == name:
                    refs.append(value.val_locs[k])
                args(v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if v == name:
                    refs.append(value.item_locs[i])  # type: ignore[attr-defined]
                args(v)

    def item(value: Any, loc: Loc | None) -> None:
        if isinstance(value, str):
            if value == name and loc is not None:
                refs.append(loc)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                item(v, value.item_locs[i])  # type: ignore[attr-defined]
        elif isinstance(value, LMap):
            for k, v in value.items():
                if k == name:
                    refs.append(value.key_locs[k])
                if k == "use":
                    item(v, value.val_locs[k])
                elif k in ("params", "with", "first") or k in tmpl:
                    args(v)
                elif k == "at" and isinstance(v, dict):
                    for over in v.values():
                        args(over)
                elif k == "branches" and isinstance(v, dict):
                    for bk, b in v.items():
                        item(b, v.val_locs[bk])  # type: ignore[attr-defined]
                elif k not in OPS and k not in _NOT_ITEMS:
                    item(v, value.val_locs[k])

    def top(doc: Any) -> None:
        if not isinstance(doc, LMap):
            return
        found = doc.get("templates")
        if isinstance(found, LMap):
            for t, body in found.items():
                if t == name:
                    refs.append(found.key_locs[t])
                item(body, None)
        stages = doc.get("stages")
        if isinstance(stages, LMap):
            for k, v in stages.items():
                item(v, stages.val_locs[k])
        args(doc.get("params"))
        variants = doc.get("variants")
        if doc is src.root and isinstance(variants, dict):
            for overlay in variants.values():
                top(overlay)

    tmpl = templates(src)
    top(src.root)
    seen, out = set(), []
    for loc in refs:
        if (loc.line, loc.column) not in seen:
            seen.add((loc.line, loc.column))
            out.append(loc)
    return sorted(out, key=lambda loc: (loc.line, loc.column))


def rename(
    src: Source | None, lines: list[str], line: int, col: int, new: str
) -> list[Span] | None:
    """The spans to replace to rename the template under the cursor, None if it is none."""
    target = template_at(src, lines, line, col)
    if target is None or src is None:
        return None
    return [name_span(loc, lines) for loc in template_refs(src, target[0])]


def template_at(
    src: Source | None, lines: list[str], line: int, col: int
) -> tuple[str, Span] | None:
    got = word_at(lines, line, col)
    if got is None or got[0].startswith("$") or got[0] not in templates(src):
        return None
    return got
