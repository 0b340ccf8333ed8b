"""`dense`: a dense block (DenseNet). A repeat (`repeat`, `use` or `body`, `with`, `first`,
`at`, `prefix`, `start`) whose every layer sees the concatenation of the block input and all
earlier layers' outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import Node
from archspec.lower.combinators.base import Combinator, Flow, X, register_combinator
from archspec.lower.core import UNKNOWN, State
from archspec.lower.repeat import repeat, schema_props
from archspec.ops import fmt

if TYPE_CHECKING:
    from archspec.analysis.graph import Writer
    from archspec.lower.core import Site
    from archspec.lower.walk import Lowerer


@register_combinator
class Dense(Combinator):
    name = "dense"
    doc = "dense block: each layer's output is concatenated to its input"

    def lower(self, lw: Lowerer, body: dict, at: Site) -> Node:
        return repeat(
            lw, body, at.body_loc, at.state, at.env, at.scope, at.name, self, head_loc=at.key_loc
        )

    def step(self, lw: Lowerer, before: State, out: State, child: Node, i: int) -> State:
        """The state after layer `i`: its output concatenated to its input."""
        if before.shape is None or out.shape is None:
            return UNKNOWN
        if len(out.shape) != 3 or out.shape[1:] != before.shape[1:]:
            lw.error(
                child.loc,
                "E-MERGE-CONCAT",
                f"dense layer {i} turns {fmt(before.shape)} into {fmt(out.shape)}; it must keep height and width",
                "dense layers are concatenated to their input: pad so the size stays the same",
            )
            return UNKNOWN
        shape = (before.shape[0] + out.shape[0], *before.shape[1:])
        rf = tuple(max(before.rf[j], out.rf[j]) for j in (0, 1))
        return State(shape, rf, before.jump, before.trace)  # type: ignore[arg-type]

    def forward(self, node: Node, x: X, flow: Flow[X]) -> X:
        for child in node.children:
            x = flow.join("concat", [x, flow.child(child, x)], node)
        return x

    def draw(self, g: Writer, node: Node, preds: list[str], key: str) -> list[str]:
        cur = preds
        shape = node.in_shape
        for i, child in enumerate(node.children):
            out = g.walk(child, cur, f"{key}_{i}")
            if shape is not None and child.out_shape is not None:
                shape = (shape[0] + child.out_shape[0], *shape[1:])
            cat = g.merge_node("concat", shape)
            g.edges(cur, cat, style="dashed")
            g.edges(out, cat)
            cur = [cat]
        return cur

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.doc,
            "required": ["repeat"],
            "properties": schema_props(),
            "additionalProperties": False,
            "examples": [{"repeat": 4, "use": "conv_block", "with": {"growth": 32}}],
        }
