"""`scale`: the input times what its `by` layers compute from it — squeeze-and-excitation's
gating (`x * sigmoid(fc2(relu(fc1(gap(x)))))`). The `by` layers are registered directly on
the scale module, like torchvision's `SqueezeExcitation` (`fc1`, `fc2`, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import Node
from archspec.lang.source import loc_of
from archspec.lower.combinators.base import Combinator, Flow, X, register_combinator
from archspec.lower.combinators.parallel import broadcast
from archspec.lower.core import UNKNOWN, State, after, finish
from archspec.lower.fragments import INLINE, NAME, REF_ITEM, described
from archspec.ops import fmt

if TYPE_CHECKING:
    from archspec.analysis.graph import Writer
    from archspec.lower.core import Site
    from archspec.lower.walk import Lowerer

KEYS = ("by", "name", "inline")


@register_combinator
class Scale(Combinator):
    name = "scale"
    doc = "the input times what its `by` layers compute from it (squeeze-and-excitation)"

    def lower(self, lw: Lowerer, body: dict, at: Site) -> Node:
        lw.options(body, at.body_loc, KEYS, self.name)
        node, inner = self.opened(lw, body, at, "mul")
        if "by" not in body:
            lw.error(at.key_loc, "E-MISSING-KEY", "`scale` needs `by`: the layers of the gate")
            return finish(node, UNKNOWN)
        prefix = f"{node.name}_" if node.inline and node.name else None
        by = lw.seq(
            body["by"],
            loc_of(body, "by", at.body_loc),
            at.state,
            at.env,
            inner,
            f"{prefix or ''}by",
            inline=True,
            prefix=prefix,
        )
        node.children = by.children
        x, g = at.state, after(by)
        if x.shape is None or g.shape is None:
            return finish(node, UNKNOWN)
        if len(g.shape) != len(x.shape) or broadcast([x.shape, g.shape]) != x.shape:
            lw.error(
                at.key_loc,
                "E-MERGE-MUL",
                f"`scale` gets {fmt(x.shape)} but `by` gives {fmt(g.shape)}, which does not "
                "broadcast to it",
                "end `by` with as many channels as its input (or 1), at 1x1 or the input's size",
            )
            return finish(node, UNKNOWN)
        rf = tuple(max(a, b) for a, b in zip(x.rf, g.rf, strict=True))
        return finish(node, State(x.shape, rf, x.jump))  # type: ignore[arg-type]

    def forward(self, node: Node, x: X, flow: Flow[X]) -> X:
        g = x
        for child in node.children:
            g = flow.child(child, g)
        return flow.join("mul", [g, x], node)  # torchvision: `scale * input`

    def draw(self, g: Writer, node: Node, preds: list[str], key: str) -> list[str]:
        gate = preds
        for i, child in enumerate(node.children):
            gate = g.walk(child, gate, f"{key}_{i}")
        mul = g.merge_node("mul", node.out_shape)
        g.edges(preds, mul, style="dashed")
        g.edges(gate, mul)
        return [mul]

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.doc,
            "required": ["by"],
            "properties": {
                "by": described(
                    "the layers computing the factor, registered on this module", REF_ITEM
                ),
                "name": NAME,
                "inline": INLINE,
            },
            "additionalProperties": False,
            "examples": [
                {
                    "by": [
                        "gap",
                        {"conv": {"out": "$in.c // 4", "k": 1, "name": "fc1"}},
                        "relu",
                        {"conv": {"out": 64, "k": 1, "name": "fc2"}},
                        "sigmoid",
                    ]
                }
            ],
        }
