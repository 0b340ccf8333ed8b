"""`parallel`: branches that all read the same input, merged by `concat` (Inception) or `add`.
`flat: true` registers the branches' layers on this module (the seeds' `p2_1` names)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from archspec.ir import SEQ, Node
from archspec.lang.errors import Loc, did_you_mean
from archspec.lang.source import loc_of
from archspec.lower.combinators.base import Combinator, Flow, X, register_combinator
from archspec.lower.core import UNKNOWN, State, after, common_grid, finish
from archspec.lower.fragments import INLINE, NAME, REF_ITEM, described
from archspec.ops import Shape, fmt

if TYPE_CHECKING:
    from archspec.analysis.graph import Writer
    from archspec.lower.core import Site
    from archspec.lower.walk import Lowerer

KEYS = ("branches", "merge", "flat", "name", "inline")
MERGES = ("concat", "add", "mul")


@register_combinator
class Parallel(Combinator):
    name = "parallel"
    doc = "branches that all read the same input, merged by concat, add or mul"

    def lower(self, lw: Lowerer, body: dict, at: Site) -> Node:
        key_loc, body_loc, state, env = at.key_loc, at.body_loc, at.state, at.env
        lw.options(body, body_loc, KEYS, self.name)
        flat = bool(body.get("flat", False))
        merge_kind = body.get("merge", "concat")
        if merge_kind not in MERGES:
            lw.error(
                loc_of(body, "merge", body_loc),
                "E-TYPE",
                f"merge must be `concat`, `add` or `mul`, got `{merge_kind}`",
                did_you_mean(str(merge_kind), MERGES),
            )
            merge_kind = "concat"
        node, inner = self.opened(lw, body, at, merge_kind)
        name, inline = node.name, node.inline
        pairs = branch_list(lw, body, at, "`parallel` needs `branches`")
        if pairs is None:
            return node
        bname_prefix = f"{name}_" if inline and name else ""
        for bname, branch, loc in pairs:
            full = bname_prefix + bname
            if flat and isinstance(branch, list):
                child = lw.seq(branch, loc, state, env, inner, full, inline=True)
            else:
                child = lw.item(branch, loc, state, env, inner, full)
            node.children.append(child)
        outs = [after(c) for c in node.children]
        return finish(node, merged(lw, node, outs, key_loc))

    def forward(self, node: Node, x: X, flow: Flow[X]) -> X:
        return flow.join(node.merge, [flow.child(b, x) for b in node.children], node)

    def caption(self, node: Node) -> str | None:
        return f"parallel, {node.merge}"

    def draw(self, g: Writer, node: Node, preds: list[str], key: str) -> list[str]:
        # One small label node per branch, on one rank and chained left to right in spec order:
        # the branches hang from them side by side. The labels sit in this cluster, not in a
        # branch's own, which keeps `rank=same` valid whatever clusters the branches open.
        fans = [
            g.node(
                b.name, shape="plaintext", style="", fontsize="9", fontcolor="#666666", height="0.1"
            )
            for b in node.children
        ]
        g.fans.update(fans)
        if len(fans) > 1:
            g.emit("{rank=same; " + " -> ".join(fans) + " [style=invis];}")
        exits: list[str] = []
        for i, (branch, fan) in enumerate(zip(node.children, fans, strict=True)):
            g.edges(preds, fan, arrowhead="none")
            # A branch is named by its label node: don't box its own Sequential as well.
            if branch.kind == SEQ and not branch.inline:
                branch = replace(branch, inline=True)
            exits += g.walk(branch, [fan], f"{key}_b{i}")
        merged = g.merge_node(node.merge, node.out_shape)
        g.edges(exits, merged)
        return [merged]

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.doc,
            "required": ["branches"],
            "properties": {
                "branches": described(
                    "the branches: a list, or a mapping from branch name to layers",
                    {
                        "anyOf": [
                            {"type": "array", "items": REF_ITEM, "minItems": 1},
                            {
                                "type": "object",
                                "additionalProperties": REF_ITEM,
                                "minProperties": 1,
                            },
                        ]
                    },
                ),
                "merge": described(
                    "how branch outputs are joined: `concat` along channels, `add` or `mul` "
                    "element-wise (`mul` broadcasts a 1x1 or 1-channel factor)",
                    {"enum": list(MERGES), "default": "concat"},
                ),
                "flat": described(
                    "register the branch layers directly on this module (Inception naming)",
                    {"type": "boolean", "default": False},
                ),
                "name": NAME,
                "inline": INLINE,
            },
            "additionalProperties": False,
            "examples": [
                {
                    "flat": True,
                    "branches": {
                        "p1": [{"conv": {"out": 64, "k": 1}}, "relu"],
                        "p2": [{"maxpool": {"k": 3, "stride": 1, "pad": 1}}],
                    },
                }
            ],
        }


def merged(lw: Lowerer, node: Node, outs: list[State], loc: Loc) -> State:
    """The shape rule: `add` needs equal shapes, `concat` equal height and width."""
    shapes = [o.shape for o in outs if o.shape is not None]
    if not shapes or len(shapes) < len(outs):
        return UNKNOWN
    rf = tuple(max(o.rf[i] for o in outs) for i in (0, 1))
    jump = tuple(max(o.jump[i] for o in outs) for i in (0, 1))
    named = ", ".join(f"{c.name}: {fmt(s)}" for c, s in zip(node.children, shapes))
    if node.merge == "add":
        if len(set(shapes)) != 1:
            lw.error(
                loc,
                "E-MERGE-ADD",
                f"`add` needs equal shapes, but the branches give {named}",
                "make every branch end with the same channels and size",
            )
            return UNKNOWN
        return State(shapes[0], rf, jump, outs[0].trace, common_grid(outs))  # type: ignore[arg-type]
    if node.merge == "mul":
        shape = broadcast(shapes)  # type: ignore[arg-type]
        if shape is None:
            lw.error(
                loc,
                "E-MERGE-MUL",
                f"`mul` needs shapes that broadcast to one, but the branches give {named}",
                "each size must equal the others' or be 1 (a 1x1 gate, or one channel)",
            )
            return UNKNOWN
        grid = common_grid([o for o in outs if o.shape == shape])
        return State(shape, rf, jump, outs[0].trace, grid)  # type: ignore[arg-type]
    ranks = {len(s) for s in shapes}  # type: ignore[arg-type]
    spatial = {tuple(s[1:]) for s in shapes}  # type: ignore[index]
    if len(ranks) != 1 or len(spatial) != 1:
        lw.error(
            loc,
            "E-MERGE-CONCAT",
            f"`concat` needs equal height and width, but the branches give {named}",
            "pad or stride the branches so their spatial sizes agree",
        )
        return UNKNOWN
    first = shapes[0]
    out = (sum(s[0] for s in shapes), *first[1:])
    return State(out, rf, jump, outs[0].trace)  # type: ignore[arg-type]


def broadcast(shapes: list[Shape]) -> Shape | None:
    """The shape an element-wise product of same-rank `shapes` gives, as torch broadcasts
    (each size equal to the others' or 1); None when they do not broadcast."""
    if len({len(s) for s in shapes}) != 1:
        return None
    out = []
    for sizes in zip(*shapes, strict=True):
        big = {d for d in sizes if d != 1}
        if len(big) > 1:
            return None
        out.append(big.pop() if big else 1)
    return tuple(out)


def branch_list(
    lw: Lowerer, body: dict, at: Site, missing: str
) -> list[tuple[str, Any, Loc]] | None:
    """`branches:` as (name, layers, position) triples: a list is named by position, a mapping
    by its keys. None, after saying `missing`, when there are none."""
    branches = body.get("branches")
    bloc = loc_of(body, "branches", at.body_loc)
    if isinstance(branches, list):
        pairs = [(str(i), b, loc_of(branches, i, bloc)) for i, b in enumerate(branches)]
    elif isinstance(branches, dict):
        pairs = [(str(k), b, loc_of(branches, k, bloc)) for k, b in branches.items()]
    else:
        pairs = None
    if pairs:
        return pairs
    if pairs is not None:
        lw.error(bloc, "E-ITEM", f"{missing.split(' needs')[0]} needs at least one branch", None)
        return None
    lw.error(
        bloc if branches is not None else at.key_loc,
        "E-MISSING-KEY",
        f"{missing}: a list or a mapping of layer lists",
        None,
    )
    return None
