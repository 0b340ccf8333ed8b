"""`seq`: a nested sequence of layers, `[...]` or `{layers: [...], name, inline}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import Node
from archspec.lower.combinators.base import Combinator, register_combinator
from archspec.lower.fragments import INLINE, LAYER_LIST, NAME, described

if TYPE_CHECKING:
    from archspec.lower.core import Site
    from archspec.lower.walk import Lowerer


@register_combinator
class Seq(Combinator):
    name = "seq"
    doc = "a nested sequence of layers"
    takes_list = True
    chain = True
    class_name = "Chain"
    keys: tuple[str, ...] = ("layers", "name", "inline")
    layers_doc = "the layers, in order"

    def lower(self, lw: Lowerer, body: Any, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, inline = at
        items = body.get("layers") if isinstance(body, dict) else body
        if isinstance(body, dict):
            name = lw.item_name(body, body_loc, env, name)
            inline = bool(body.get("inline", inline))
            lw.options(body, body_loc, self.keys, self.name)
        if items is None:
            lw.error(body_loc, "E-MISSING-KEY", "`seq` needs `layers`", None)
            return lw.dead(key_loc, state, scope, name)
        return lw.seq(items, body_loc, state, env, scope, name, inline)

    def caption(self, node: Node) -> str | None:
        return None

    def schema(self) -> dict[str, Any]:
        props = {"layers": described(self.layers_doc, LAYER_LIST), "name": NAME, "inline": INLINE}
        mapping = {
            "type": "object",
            "required": ["layers"],
            "properties": {k: props[k] for k in self.keys},
            "additionalProperties": False,
        }
        return described(self.doc, {"anyOf": [LAYER_LIST, mapping]})
