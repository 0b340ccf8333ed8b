"""`residual`: a main path plus a shortcut, summed, then an optional `post`. `shortcut: auto` is
the identity, or a 1x1 conv (+ bn) projection when the main path changes the shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archspec.ir import Node
from archspec.lang.errors import Loc, did_you_mean
from archspec.lang.source import LMap, LSeq, loc_of
from archspec.lower.combinators.base import Combinator, Flow, X, register_combinator
from archspec.lower.core import UNKNOWN, Scope, Site, State, after, common_grid, finish
from archspec.lower.fragments import INLINE, NAME, REF_ITEM, described
from archspec.ops import OPS, fmt

if TYPE_CHECKING:
    from archspec.analysis.graph import Writer
    from archspec.lower.walk import Lowerer

KEYS = ("main", "shortcut", "projection", "post", "name", "inline")
SHORTCUTS = ("auto", "identity", "identity_if_same")
NO_SHORTCUT = "none"  # the node's merge when `identity_if_same` finds the shape changed


@register_combinator
class Residual(Combinator):
    name = "residual"
    doc = "main path plus shortcut, summed"

    def lower(self, lw: Lowerer, body: dict, at: Site) -> Node:
        key_loc, body_loc, state, env = at.key_loc, at.body_loc, at.state, at.env
        lw.options(body, body_loc, KEYS, self.name)
        node, inner = self.opened(lw, body, at, "add")
        prefix = f"{node.name}_" if node.inline and node.name else ""
        if "main" not in body:
            lw.error(
                key_loc,
                "E-MISSING-KEY",
                "`residual` needs `main`: the layers of the main path",
                None,
            )
            return node
        mloc = loc_of(body, "main", body_loc)
        main = lw.seq(
            body["main"],
            mloc,
            state,
            env,
            inner,
            f"{prefix}main",
            inline=True,
            prefix=prefix or None,
        )
        node.children = main.children
        mstate = after(main)
        sc = body.get("shortcut", "auto")
        sloc = loc_of(body, "shortcut", key_loc)
        sstate = state
        if sc == "auto":
            need = (
                mstate.shape is not None and state.shape is not None and mstate.shape != state.shape
            )
            if need:
                proj = _projection(lw, body, body_loc, state, mstate, env, inner, prefix, sloc)
                node.shortcut = proj
                sstate = after(proj)
        elif sc == "identity":
            pass
        elif sc == "identity_if_same":
            # MobileNet's and EfficientNet's blocks: the sum only where the shape is kept
            if mstate.shape is None or mstate.shape != state.shape:
                node.merge = NO_SHORTCUT
                sstate = mstate
        elif sc is None or isinstance(sc, str) and sc not in lw.templates and sc not in OPS:
            lw.error(
                sloc,
                "E-TYPE",
                f"`shortcut` must be `auto`, `identity`, `identity_if_same` or layers, got {sc!r}",
                did_you_mean(str(sc), SHORTCUTS),
            )
        else:
            node.shortcut = lw.item(sc, sloc, state, env, inner, f"{prefix}shortcut")
            sstate = after(node.shortcut)
        out = UNKNOWN
        if mstate.shape is not None and sstate.shape is not None:
            if mstate.shape != sstate.shape:
                lw.error(
                    key_loc,
                    "E-MERGE-ADD",
                    f"residual main path gives {fmt(mstate.shape)} but the shortcut gives {fmt(sstate.shape)}",
                    "use `shortcut: auto` for a 1x1 projection, or make the main path keep the shape",
                )
            else:
                rf = tuple(max(mstate.rf[i], sstate.rf[i]) for i in (0, 1))
                grid = common_grid([mstate, sstate])
                out = State(mstate.shape, rf, mstate.jump, mstate.trace, grid)  # type: ignore[arg-type]
        if "post" in body and body["post"] is not None:
            node.post = lw.item(
                body["post"], loc_of(body, "post", body_loc), out, env, inner, f"{prefix}post"
            )
            out = after(node.post)
        return finish(node, out)

    def forward(self, node: Node, x: X, flow: Flow[X]) -> X:
        main = x
        for child in node.children:
            main = flow.child(child, main)
        if node.merge == NO_SHORTCUT:
            out = main
        else:
            short = flow.child(node.shortcut, x) if node.shortcut is not None else x
            out = flow.join("add", [main, short], node)
        return flow.child(node.post, out) if node.post is not None else out

    def draw(self, g: Writer, node: Node, preds: list[str], key: str) -> list[str]:
        out = preds
        for i, child in enumerate(node.children):
            out = g.walk(child, out, f"{key}_{i}")
        if node.merge == NO_SHORTCUT:
            return g.walk(node.post, out, f"{key}_p") if node.post is not None else out
        if node.shortcut is not None:
            short = g.walk(node.shortcut, preds, f"{key}_s")
            style = {"style": "dashed"}
        else:
            short, style = preds, {"style": "dashed", "label": "identity"}
        add_shape = node.children[-1].out_shape if node.children else node.in_shape
        add = g.merge_node("add", add_shape)
        g.edges(out, add)
        g.edges(short, add, **style)
        if node.post is not None:
            return g.walk(node.post, [add], f"{key}_p")
        return [add]

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.doc,
            "required": ["main"],
            "properties": {
                "main": described("the layers of the main path", REF_ITEM),
                "shortcut": described(
                    "`auto` (identity, or a 1x1 projection when the shape changes), `identity`, "
                    "`identity_if_same` (identity when the shape is kept, else no shortcut and "
                    "no sum), or layers",
                    {"anyOf": [{"enum": list(SHORTCUTS)}, REF_ITEM], "default": "auto"},
                ),
                "projection": described(
                    "options of the `auto` projection",
                    {
                        "type": ["object", "null"],
                        "properties": {
                            "bn": described(
                                "follow the 1x1 conv with BatchNorm",
                                {"type": "boolean", "default": True},
                            ),
                            "bias": described(
                                "give the 1x1 conv a bias", {"type": "boolean", "default": False}
                            ),
                            "name": described(
                                "module name of the projection",
                                {"type": "string"},
                                examples=["downsample"],
                            ),
                            "norm": described(
                                "the op that follows the 1x1 conv when `bn` is true",
                                {"type": "string", "default": "bn"},
                                examples=["frozen_bn"],
                            ),
                        },
                        "additionalProperties": False,
                    },
                    examples=[{"bn": True, "bias": False, "name": "downsample"}],
                ),
                "post": described(
                    "layers applied after the sum",
                    {"anyOf": [REF_ITEM, {"type": "null"}]},
                    examples=["relu"],
                ),
                "name": NAME,
                "inline": INLINE,
            },
            "additionalProperties": False,
            "examples": [
                {
                    "main": [{"conv": {"out": "$c", "k": 3, "pad": 1}}, "bn", "relu"],
                    "shortcut": "auto",
                    "post": "relu",
                }
            ],
        }


def _projection(
    lw: Lowerer,
    body: dict,
    body_loc: Loc,
    state: State,
    mstate: State,
    env: dict,
    scope: Scope,
    prefix: str,
    loc: Loc,
) -> Node:
    """`shortcut: auto` when the shape changes: 1x1 conv (+ bn) with the main path's stride."""
    opts = body.get("projection") or {}
    ploc = loc_of(body, "projection", loc)
    allowed = ("bn", "bias", "name", "norm")
    if not isinstance(opts, dict):
        lw.error(
            ploc,
            "E-TYPE",
            "`projection` takes a mapping {bn, bias, name, norm}",
            "`shortcut: auto` picks identity or projection; `projection` only tunes the latter",
        )
        opts = {}
    lw.options(opts, ploc, allowed, "projection")
    assert state.shape is not None and mstate.shape is not None
    if len(state.shape) != 3 or len(mstate.shape) != 3:
        lw.error(loc, "E-SHAPE-RANK", "`shortcut: auto` needs image tensors on both paths", None)
        return lw.dead(loc, UNKNOWN, scope, f"{prefix}shortcut")
    stride = tuple(max(1, mstate.jump[i] // max(1, state.jump[i])) for i in (0, 1))
    # Every geometry field is explicit: `defaults: {conv: {pad: 1}}` is for the user's convs,
    # and would otherwise turn the 1x1 projection into one that pads (or groups).
    conv = LMap(
        {
            "out": mstate.shape[0],
            "k": 1,
            "stride": list(stride),
            "pad": 0,
            "dilation": 1,
            "groups": 1,
            "bias": bool(opts.get("bias", False)),
        }
    )
    conv.loc, conv.key_locs, conv.val_locs = ploc, {}, {}
    use_bn = bool(opts.get("bn", True))
    name = str(opts.get("name", f"{prefix}shortcut"))
    saved, lw.spec = lw.spec, lw.spec.model_copy(update={"width": 1.0})
    try:
        if not use_bn:
            return lw.layer("conv", conv, Site(loc, ploc, state, env, scope, name))
        items = LSeq([{"conv": conv}, str(opts.get("norm", "bn"))])
        items.loc, items.item_locs = ploc, [ploc, ploc]
        return lw.seq(items, loc, state, env, scope, name, inline=False)
    finally:
        lw.spec = saved
