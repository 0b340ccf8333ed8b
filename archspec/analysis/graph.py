"""The network as a picture: Graphviz DOT written from the IR (no torch, no graphviz package).

Stages are clusters, and so is every composite that owns a module. Each parallel branch hangs
from a small label node; the labels share one rank, chained left to right in spec order, so
`dot` lays the branches side by side and they meet at a merge node (concat / add). Each layer
is labelled with its op (`conv 3x3/2`) and output shape; its module path is the tooltip.
SVG/PNG/PDF go through Graphviz's `dot` program when it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from archspec.ir import AUX, IN, JOIN, LAYER, SEQ, Network, Node
from archspec.lower import COMBINATORS
from archspec.ops import OPS, fmt

RENDERED = ("svg", "png", "pdf")
INSTALL_HINT = (
    "install Graphviz (`apt-get install graphviz`, `brew install graphviz` or "
    "`conda install graphviz`), or write DOT text with `-o FILE.dot`"
)


class GraphvizMissing(RuntimeError):
    """`dot` is not installed, so only DOT text can be written."""


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Writer:
    """The DOT text being written; combinators draw themselves on it (`Combinator.draw`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        # Edges go after every cluster: an edge written inside a subgraph would pull both of
        # its ends into that cluster.
        self.edge_lines: list[str] = []
        self.fans: set[str] = set()  # the branch-label nodes of parallel blocks
        self.count = 0
        self.depth = 1
        self.exits: dict[
            str, list[str]
        ] = {}  # each output read by reference: the ids it leaves from

    def emit(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def node(self, label: str, **attrs: str) -> str:
        nid = f"n{self.count}"
        self.count += 1
        extra = "".join(f", {k}={_q(v)}" for k, v in attrs.items())
        self.emit(f"{nid} [label={_q(label)}{extra}];")
        return nid

    def edges(self, sources: list[str], target: str, **attrs: str) -> None:
        for s in sources:
            # A heavy edge under a branch label keeps short branches at the top, not the bottom.
            a = {**attrs, "weight": "8"} if s in self.fans else attrs
            extra = ", ".join(f"{k}={_q(v)}" for k, v in a.items())
            self.edge_lines.append(f"  {s} -> {target}" + (f" [{extra}]" if extra else "") + ";")

    def open_cluster(self, key: str, label: str, style: str = "rounded") -> None:
        self.emit(f"subgraph {_q('cluster_' + key)} {{")
        self.depth += 1
        self.emit(f'label={_q(label)}; style={_q(style)}; color="#888888"; fontsize=11;')

    def close_cluster(self) -> None:
        self.depth -= 1
        self.emit("}")

    # ------------------------------------------------------------------ the walk

    def walk(self, node: Node, preds: list[str], key: str, stage: bool = False) -> list[str]:
        """Draw `node` fed by `preds`; return the ids its output leaves from. A node that reads
        earlier outputs (`from:`) is fed by them, through a merge node when there are several;
        a skip edge is drawn dashed."""
        if node.reads:
            sources = [preds if p == IN else self.exits.get(p, []) for p in node.reads]
            if len(sources) == 1:
                preds = sources[0]
            else:
                merged = self.merge_node(
                    node.join, node.out_shape if node.kind == JOIN else node.in_shape
                )
                for p, ids in zip(node.reads, sources, strict=True):
                    self.edges(ids, merged, **({} if p == IN else {"style": "dashed"}))
                preds = [merged]
        out = preds if node.kind == JOIN else self._draw(node, preds, key, stage)
        if node.path:
            self.exits[node.path] = out
        return out

    def _draw(self, node: Node, preds: list[str], key: str, stage: bool) -> list[str]:
        if node.kind == LAYER:
            nid = self.layer(node, preds)
            for f, p in node.refs.items():  # a size taken from another output
                self.edges(self.exits.get(p, []), nid, style="dotted", label=f)
            return [nid]
        comb = COMBINATORS[node.kind]
        boxed = not node.inline  # a composite that owns a module is a box labelled with its path
        if boxed:
            caption = comb.caption(node)
            label = node.path if caption is None else f"{node.path} ({caption})"
            dashed = node.kind == AUX or (node.kind == SEQ and not stage)
            self.open_cluster(key, label, "rounded,dashed" if dashed else "rounded")
        out = comb.draw(self, node, preds, key)
        if boxed:
            self.close_cluster()
        return out

    def layer(self, node: Node, preds: list[str]) -> str:
        op = OPS.get(node.op)
        desc = op.describe(node.params) if op is not None and node.params is not None else node.op
        shape = fmt(node.out_shape) if node.out_shape else "?"
        # Fill colours by op family (Op.color): the eye finds convolutions, pools and dense
        # layers at a glance; the others are white, in smaller type.
        color = op.color if op is not None else None
        light = color is None
        nid = self.node(
            f"{desc}\n{shape}",
            tooltip=node.path,
            fillcolor=color or "#ffffff",
            **({"fontsize": "10"} if light else {}),
        )
        self.edges(preds, nid)
        return nid

    def merge_node(self, what: str, shape: tuple[int, ...] | None) -> str:
        return self.node(
            f"{what}\n{fmt(shape) if shape else '?'}",
            shape="oval",
            fillcolor="#f4cccc",
            fontsize="10",
        )


def to_dot(network: Network, title: str | None = None) -> str:
    """DOT text of a lowered network (every layer must have been inferred)."""
    w = Writer()
    # No `newrank`: with it, dot 2.43 lays sibling clusters out in reverse order.
    w.emit("rankdir=TB; nodesep=0.25; ranksep=0.3;")
    w.emit(
        'node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, height=0.3];'
    )
    w.emit('edge [arrowsize=0.6, color="#555555", fontname="Helvetica", fontsize=9];')
    w.emit('graph [fontname="Helvetica"];')
    label = title or network.name + (f" ({network.variant})" if network.variant else "")
    w.emit(f"label={_q(label)}; labelloc=t; fontsize=14;")
    entry = w.node(f"input\n{fmt(network.input)}", shape="box", fillcolor="#ffffff", style="filled")
    preds = [entry]
    for i, stage in enumerate(network.root.children):
        # A stage that owns a module is boxed by `walk`; a one-layer or inline stage is boxed here.
        own_box = stage.kind == LAYER or stage.inline
        if own_box:
            w.open_cluster(f"s{i}", stage.name)
        preds = w.walk(stage, preds, f"s{i}", stage=True)
        if own_box:
            w.close_cluster()
    ends = [(k, w.exits.get(p, [])) for k, p in network.outputs] or [("output", preds)]
    for key, ids in ends:
        shape = network.named[dict(network.outputs)[key]].out_shape if network.outputs else None
        shape = shape if network.outputs else network.root.out_shape
        out = w.node(
            f"{'output' if not network.outputs else 'output ' + key}\n{fmt(shape) if shape else '?'}",
            shape="box",
            fillcolor="#ffffff",
            style="filled",
        )
        w.edges(ids, out)
    return "digraph archspec {\n" + "\n".join(w.lines + w.edge_lines) + "\n}\n"


def output_format(path: str | Path) -> str:
    """`dot`, or a format the `dot` program renders; ValueError for anything else."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("dot", "gv"):
        return "dot"
    if suffix in RENDERED:
        return suffix
    raise ValueError(
        f"cannot tell the picture format from `{path}`: use .dot, .gv, .svg, .png or .pdf"
    )


def write(dot: str, path: str | Path, timeout: float = 120.0) -> str:
    """Write DOT text to `path`, rendering it with Graphviz when the suffix asks for a picture.
    Returns the format written; raises GraphvizMissing or RuntimeError (dot failed)."""
    kind = output_format(path)
    if kind == "dot":
        Path(path).write_text(dot, encoding="utf-8")
        return kind
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(
            f"writing {Path(path).name} needs the Graphviz `dot` program, which is not installed"
        )
    proc = subprocess.run(
        [exe, f"-T{kind}", "-o", str(path)],
        check=False,  # its stderr becomes our error message below
        input=dot.encode(),
        capture_output=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`dot -T{kind}` failed: {proc.stderr.decode(errors='replace').strip()[:500]}"
        )
    return kind
