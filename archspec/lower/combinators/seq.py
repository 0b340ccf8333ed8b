"""`seq`: a nested sequence of layers, `[...]` or `{layers: [...], name, inline}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import Node
from archspec.lang.errors import did_you_mean
from archspec.lang.source import loc_of
from archspec.lower.combinators.base import (
    INLINE,
    LAYER_LIST,
    NAME,
    Combinator,
    described,
    register_combinator,
)

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

    def lower(self, lw: Lowerer, body: Any, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, inline = at
        items = body.get("layers") if isinstance(body, dict) else body
        if isinstance(body, dict):
            name = lw.item_name(body, body_loc, env, name)
            inline = bool(body.get("inline", inline))
            extra = set(body) - {"layers", "name", "inline"}
            for k in extra:
                lw.error(
                    loc_of(body, k, body_loc, key_loc=True),
                    "E-UNKNOWN-KEY",
                    f"unknown key `{k}` in `seq`",
                    did_you_mean(str(k), ["layers", "name", "inline"]),
                )
        if items is None:
            lw.error(body_loc, "E-MISSING-KEY", "`seq` needs `layers`", None)
            return lw.dead(key_loc, state, scope, name)
        return lw.seq(items, body_loc, state, env, scope, name, inline)

    def caption(self, node: Node) -> str | None:
        return None

    def schema(self) -> dict[str, Any]:
        return described(
            self.doc,
            {
                "anyOf": [
                    LAYER_LIST,
                    {
                        "type": "object",
                        "required": ["layers"],
                        "properties": {
                            "layers": described("the layers, in order", LAYER_LIST),
                            "name": NAME,
                            "inline": INLINE,
                        },
                        "additionalProperties": False,
                    },
                ]
            },
        )
