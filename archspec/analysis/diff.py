"""`archspec diff`: layer-by-layer differences between two checked networks (no torch).

Layers are aligned with difflib on module path and op kind, then what is left on stage and op
kind, so an inserted layer shows as one addition instead of changing every later layer; a
layer whose module path (its state_dict key) moved shows the old and new path.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from archspec.analysis.report import Report
from archspec.ir import Node
from archspec.ops import OPS, fmt


@dataclass(frozen=True)
class Layer:
    """A layer as `diff` compares it."""

    path: str
    op: str  # its description: `conv 3x3/2`
    output: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class Row:
    """One row of a diff: a layer in A, in B or in both."""

    change: str  # same | changed | added | removed
    a: Layer | None
    b: Layer | None

    def what(self) -> list[str]:
        """Which of op / output / params differ (for `changed`)."""
        if self.a is None or self.b is None:
            return []
        return [
            k
            for k in ("path", "op", "output", "params", "macs")
            if getattr(self.a, k) != getattr(self.b, k)
        ]

    def to_json(self) -> dict[str, Any]:
        def side(x: Layer | None) -> dict[str, Any] | None:
            return (
                None
                if x is None
                else {
                    "path": x.path,
                    "op": x.op,
                    "output": list(x.output),
                    "params": x.params,
                    "macs": x.macs,
                }
            )

        return {"change": self.change, "differs": self.what(), "a": side(self.a), "b": side(self.b)}


def layers_of(report: Report) -> list[Layer]:
    return [_layer(n) for n in report.layers]


def _layer(n: Node) -> Layer:
    assert n.inferred is not None
    op = OPS.get(n.op)
    desc = op.describe(n.params) if op is not None else n.op
    return Layer(n.path, desc, tuple(n.inferred.out), n.inferred.params, n.inferred.macs)


def diff_layers(a: list[Layer], b: list[Layer]) -> list[Row]:
    """Align layers on (module path, op kind) first, then what is left on (stage, op kind):
    an inserted layer shows as one addition, and the layers it renumbers as moved paths."""
    rows: list[Row] = []
    for tag, i1, i2, j1, j2 in _opcodes(a, b, _exact):
        if tag == "equal":
            rows += [
                Row("same" if x == y else "changed", x, y)
                for x, y in zip(a[i1:i2], b[j1:j2], strict=True)
            ]
            continue
        sa, sb = a[i1:i2], b[j1:j2]
        for tag2, k1, k2, l1, l2 in _opcodes(sa, sb, _loose):
            if tag2 == "equal":
                rows += [Row("changed", x, y) for x, y in zip(sa[k1:k2], sb[l1:l2], strict=True)]
            else:
                rows += [Row("removed", x, None) for x in sa[k1:k2]]
                rows += [Row("added", None, y) for y in sb[l1:l2]]
    return rows


def _opcodes(a: list[Layer], b: list[Layer], key: Any) -> list[Any]:
    return difflib.SequenceMatcher(
        a=[key(x) for x in a], b=[key(y) for y in b], autojunk=False
    ).get_opcodes()


def _exact(x: Layer) -> tuple[str, str]:
    return x.path, x.op.split(" ", 1)[0]


def _loose(x: Layer) -> tuple[str, str]:
    return x.path.split(".", 1)[0], x.op.split(" ", 1)[0]


def label(report: Report) -> str:
    return report.spec + (f" --variant {report.variant}" if report.variant else "")


def diff_json(ra: Report, rb: Report, rows: list[Row], everything: bool = False) -> dict[str, Any]:
    def side(r: Report) -> dict[str, Any]:
        return {
            "spec": r.spec,
            "variant": r.variant,
            "name": r.name,
            "input": list(r.input or ()),
            "output": list(r.output or ()),
            "params": r.params,
            "macs": r.macs,
            "layers": len(r.layers),
        }

    counts = {
        k: sum(1 for r in rows if r.change == k) for k in ("same", "changed", "added", "removed")
    }
    return {
        "a": side(ra),
        "b": side(rb),
        "params_delta": (rb.params or 0) - (ra.params or 0),
        "macs_delta": (rb.macs or 0) - (ra.macs or 0),
        "counts": counts,
        "layers": [r.to_json() for r in rows if everything or r.change != "same"],
    }


def render(ra: Report, rb: Report, rows: list[Row], everything: bool = False) -> str:
    from archspec.analysis.table import human_number

    def shown(x: Layer | None, key: str) -> str:
        if x is None:
            return ""
        v = getattr(x, key)
        if key == "output":
            return fmt(v)
        if key == "params":
            return f"{v:,}" if v else "-"
        return str(v)

    def pair(row: Row, key: str) -> str:
        x, y = shown(row.a, key), shown(row.b, key)
        if row.a is None or row.b is None or x == y:
            return x or y
        return f"{x} -> {y}"

    mark = {"same": " ", "changed": "~", "added": "+", "removed": "-"}
    table = [
        [mark[r.change], pair(r, "path"), pair(r, "op"), pair(r, "output"), pair(r, "params")]
        for r in rows
        if everything or r.change != "same"
    ]
    out = [f"a: {label(ra)}  ({ra.name})", f"b: {label(rb)}  ({rb.name})", ""]
    if table:
        out += [columns(["", "path", "op", "output", "params"], table, right={4}), ""]
    else:
        out += ["no layer differs", ""]
    counts = {
        k: sum(1 for r in rows if r.change == k) for k in ("changed", "added", "removed", "same")
    }
    out.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    for what, x, y in (
        ("params", ra.params or 0, rb.params or 0),
        ("MACs", ra.macs or 0, rb.macs or 0),
    ):
        d = y - x
        pct = f", {d / x:+.1%}" if x else ""
        out.append(
            f"{what + ':':8s}{x:,} -> {y:,}  ({'+' if d >= 0 else '-'}{human_number(abs(d))}{pct})"
        )
    if ra.output != rb.output:
        out.append(f"output: {fmt(ra.output or ())} -> {fmt(rb.output or ())}")
    return "\n".join(out)


def columns(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table: a header, a rule, one line per row; `right` columns right-aligned."""
    right = right or set()
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
