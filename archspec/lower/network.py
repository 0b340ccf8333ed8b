"""The whole spec -> IR: the variant overlaid, the top level validated, the spec's `params`
bound, then each stage lowered by the walk in order."""

from __future__ import annotations

from typing import Any

from archspec.ir import SEQ, Network, Node
from archspec.lang.errors import Collector, Loc
from archspec.lang.model import Invalid
from archspec.lang.source import LMap, LSeq, Source, loc_of, to_plain
from archspec.lang.spec import SpecModel, pydantic_errors
from archspec.lower import inplace, refs
from archspec.lower.core import (
    MAX_LAYERS,
    MAX_NESTING,
    Scope,
    State,
    TooBig,
    TooDeep,
    after,
    finish,
    kind_of,
)
from archspec.lower.repeat import REPEAT_KEYS
from archspec.lower.templates import spec_params
from archspec.lower.variants import overlay
from archspec.lower.walk import Lowerer
from archspec.ops import OPS
from archspec.ops.base import suggest_op
from archspec.plugins import load_plugins


def lower(
    src: Source,
    variant: str | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    out: Collector,
    lowerer: type[Lowerer] | None = None,
    outputs: list[str] | dict[str, str] | None = None,
) -> Network | None:
    """The whole walk. Returns None when the file is too broken to lower at all. `lowerer`, a
    subclass of Lowerer, lets the language server reuse unchanged stages between edits;
    `outputs` (build's) replaces the spec's `outputs:`."""
    root = src.root
    if not isinstance(root, LMap):
        out.add(
            getattr(root, "loc", Loc(src.path)),
            "E-SPEC-TYPE",
            f"the top level of a spec must be a mapping, got {kind_of(root)}",
            "start with `name:`, `input:` and `stages:`",
        )
        return None
    doc = overlay(root, variant, out)
    if doc is None:
        return None
    plugins_ok = load_plugins(doc, root.loc, out)  # before anything looks an op up
    plain = to_plain(doc)
    if input_shape is not None:
        plain["input"] = list(input_shape)
    if num_classes is not None:
        plain["num_classes"] = num_classes
    try:
        spec = SpecModel.model_validate(plain)
    except Invalid as exc:
        pydantic_errors(
            exc.errors, doc, root.loc, out, what="the spec", known_keys=SpecModel.model_fields
        )
        return None
    if not plugins_ok:  # the layers would be unknown ops: the E-PLUGIN errors say it all
        return None
    if any(d < 1 or d > (1 << 16) for d in spec.input):
        out.add(
            loc_of(doc, "input", root.loc),
            "E-RANGE",
            f"`input` must be [C, H, W], [L, D] or [F] with sizes from 1 to 65536, got {spec.input}",
            None,
        )
        return None
    for op in spec.defaults:
        if op not in OPS:
            out.add(
                loc_of(doc.get("defaults", {}), op, root.loc, key_loc=True),
                "E-UNKNOWN-OP",
                f"`defaults` names unknown op `{op}`",
                suggest_op(op, OPS),
            )
    lw = (lowerer or Lowerer)(src, doc, spec, out)
    spec_params(lw, doc, root.loc)
    shape = tuple(spec.input)
    top = Scope("")
    rootnode = Node(SEQ, "", "", root.loc, shape)
    state = State(shape)
    stages = doc["stages"]
    top.key_locs = {str(k): loc_of(stages, k, root.loc, key_loc=True) for k in stages}
    try:
        for sname, body in stages.items():
            bloc = loc_of(stages, sname, root.loc)
            body = _stage_body(body, bloc)
            child = lw.item(body, bloc, state, dict(lw.globals), top, str(sname))
            state = after(child)
            if not child.name:  # a stage a false `when` left out: no module
                continue
            rootnode.children.append(child)
            refs.register_tree(lw, child)
    except TooBig as e:
        out.add(
            e.loc,
            "E-TOO-BIG",
            f"the spec expands to more than {MAX_LAYERS:,} layers",
            "lower the `repeat` counts",
        )
        return None
    except TooDeep as e:
        t = e.templates
        chain = " -> ".join(t if len(t) <= 5 else [*t[:4], "...", t[-1]])
        out.add(
            e.loc,
            "E-TOO-DEEP",
            f"the spec nests more than {MAX_NESTING} layers deep when expanded",
            f"templates inside templates: {chain}" if t else "flatten some of the nesting",
        )
        return None
    finish(rootnode, state)
    refs.unresolved(lw)
    refs.finish_merges(lw)
    net = Network(spec.name, variant, shape, spec.num_classes, rootnode, plain, named=lw.named)
    refs.outputs(lw, net, doc.get("outputs"), loc_of(doc, "outputs", root.loc), outputs)
    if not out.items:  # a network with errors has unknown parts: nothing sound to replay
        inplace.check(net, out)
    return net


def _stage_body(body: Any, loc: Loc) -> Any:
    """A stage's module is named by its key and registered on the model. A one-item stage that
    names itself (`name:`) or asks to be `inline` would take another name or spill its layers
    onto the model, so it becomes a one-item list: a Sequential named by the key that holds
    the item (`body.first`, or the inline repetitions as `b3.0, b3.1, ...`)."""
    if not isinstance(body, dict):
        return body
    inner = [body] + [v for k, v in body.items() if k not in REPEAT_KEYS and isinstance(v, dict)]
    if not any("name" in d or d.get("inline") for d in inner):
        return body
    wrapped = LSeq([body])
    wrapped.loc, wrapped.item_locs = loc, [loc]
    return wrapped
