"""`split`: the input's channels cut into as many equal parts as there are branches; branch `i`
runs on part `i` and the outputs are concatenated (ShuffleNet v2's unit: `x.chunk(2, 1)`, one
half kept, the other through `branch2`). A branch that is an empty list passes its part on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import SEQ, Node
from archspec.lower.combinators.base import Flow, X, register_combinator
from archspec.lower.combinators.parallel import Parallel, branch_list, merged
from archspec.lower.core import UNKNOWN, State, after, finish
from archspec.lower.fragments import INLINE, NAME, REF_ITEM, described
from archspec.ops import fmt

if TYPE_CHECKING:
    from archspec.lower.core import Site
    from archspec.lower.walk import Lowerer

KEYS = ("branches", "name", "inline")


@register_combinator
class Split(Parallel):
    name = "split"
    doc = "the channels cut into equal parts, one per branch, and the outputs concatenated"

    def lower(self, lw: Lowerer, body: dict, at: Site) -> Node:
        lw.options(body, at.body_loc, KEYS, self.name)
        node, inner = self.opened(lw, body, at, "concat")
        pairs = branch_list(lw, body, at, "`split` needs `branches`, one per part")
        if pairs is None:
            return finish(node, UNKNOWN)
        part = UNKNOWN
        x = at.state
        if x.shape is not None:
            if len(x.shape) != 3 or x.shape[0] % max(1, len(pairs)):
                lw.error(
                    at.key_loc,
                    "E-GROUPS",
                    f"`split` cuts the channels of {fmt(x.shape)} into {len(pairs)} equal parts",
                    f"give it a CxHxW input whose channels are a multiple of {len(pairs)}",
                )
            else:
                part = State((x.shape[0] // len(pairs), *x.shape[1:]), x.rf, x.jump)
        prefix = f"{node.name}_" if node.inline and node.name else ""
        for bname, branch, loc in pairs:
            if isinstance(branch, list) and not branch:  # an empty list: the part as it is
                child, _ = lw.container(SEQ, loc, part, inner, prefix + bname, False)
                finish(child, part)
            else:
                child = lw.item(branch, loc, part, at.env, inner, prefix + bname)
            node.children.append(child)
        if part.shape is None:
            return finish(node, UNKNOWN)
        return finish(node, merged(lw, node, [after(c) for c in node.children], at.key_loc))

    def forward(self, node: Node, x: X, flow: Flow[X]) -> X:
        parts = flow.split(x, len(node.children), node)
        outs = [flow.child(b, p) for b, p in zip(node.children, parts, strict=True)]
        return flow.join("concat", outs, node)

    def caption(self, node: Node) -> str | None:
        return "split, concat"

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.doc,
            "required": ["branches"],
            "properties": {
                "branches": described(
                    "one branch per part: a list, or a mapping from branch name to layers "
                    "(an empty list passes its part on)",
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
                "name": NAME,
                "inline": INLINE,
            },
            "additionalProperties": False,
            "examples": [{"branches": {"branch1": [], "branch2": [{"conv": {"out": 8, "k": 1}}]}}],
        }
