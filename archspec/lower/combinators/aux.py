"""`aux`: an auxiliary head (GoogLeNet's aux1, Inception v3's AuxLogits), a stage whose layers
read the current tensor but whose output leaves the main path: the next stage gets this stage's
input. It runs in training only; only a stage can be one, so the model's forward can hand its
output back next to the main one (compile.py, memory.py: the network's forward)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import AUX, Node
from archspec.lower.combinators.base import register_combinator
from archspec.lower.combinators.seq import Seq

if TYPE_CHECKING:
    from archspec.analysis.graph import Writer
    from archspec.lower.core import Site
    from archspec.lower.walk import Lowerer


@register_combinator
class Aux(Seq):
    name = AUX
    doc = (
        "an auxiliary head (training only): a stage whose layers read the tensor but whose "
        "output leaves the main path; the next stage gets this stage's input"
    )
    class_name = "Aux"
    keys = ("layers", "name")
    layers_doc = "the head's layers"

    def lower(self, lw: Lowerer, body: Any, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, inline = at
        items = body
        if isinstance(body, dict):
            lw.options(body, body_loc, self.keys, self.name)
            name = lw.item_name(body, body_loc, env, name)
            items = body.get("layers")
            if items is None:
                lw.error(body_loc, "E-MISSING-KEY", "`aux` needs `layers`", None)
                return lw.dead(key_loc, state, scope, name)
        if scope.path or inline:
            lw.error(
                key_loc,
                "E-AUX-PLACE",
                "an `aux` head must be a stage of its own",
                "move it to `stages:`, right after the stage whose output it reads",
            )
        node = lw.seq(items, body_loc, state, env, scope, name, inline=False)
        node.kind = AUX
        node._state = state  # type: ignore[attr-defined]  # the main path goes on from its input
        return node

    def caption(self, node: Node) -> str | None:
        return "auxiliary head, training only"

    def draw(self, g: Writer, node: Node, preds: list[str], key: str) -> list[str]:
        super().draw(g, node, preds, key)
        return preds  # a side output: the main path goes on from the head's input

    def schema(self) -> dict[str, Any]:
        head = [
            {"avgpool": {"k": 5, "stride": 3}},
            {"conv": {"out": 128, "k": 1}},
            "relu",
            "flatten",
            {"linear": {"out": "$num_classes"}},
        ]
        return {**super().schema(), "examples": [head]}
