"""Located spec tree -> IR: variants overlaid, templates expanded, expressions evaluated and
every layer's shape inferred, in one walk (expressions may read the incoming shape `$in`).

Errors never stop the walk: a layer whose input shape is unknown (because something before it
failed) is still validated structurally, so one run reports every mistake in the file.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pydantic import ValidationError

from archspec.ir import AUX, DENSE, LAYER, PARALLEL, RESIDUAL, SEQ, Network, Node
from archspec.lang.errors import Collector, Loc, Problem, did_you_mean
from archspec.lang.expr import Shape as ExprShape
from archspec.lang.expr import evaluate, is_expression
from archspec.lang.source import LMap, LSeq, Source, loc_of, merge, to_plain
from archspec.lang.spec import SpecModel, pydantic_errors
from archspec.ops import OPS, Shape, Window, fmt
from archspec.plugins import load_plugins

COMBINATORS = ("parallel", "residual", "dense", "seq", "aux")
REPEAT_KEYS = {"use", "body", "with", "repeat", "first", "at", "prefix", "start", "name", "inline"}
MAX_REPEAT = 1024
MAX_LAYERS = 100_000
# Items inside items once templates are expanded. A fixed bound, not Python's recursion limit,
# which torch.compile and others raise at will: the same spec must fail the same way everywhere.
MAX_NESTING = 100
NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
DOLLAR_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
UNSET = object()  # a template parameter an earlier error left without a value: reading it is silent
# Names a child module may not take: they would shadow nn.Module's own attributes.
RESERVED = {
    "forward",
    "training",
    "train",
    "eval",
    "cuda",
    "cpu",
    "to",
    "float",
    "double",
    "half",
    "bfloat16",
    "apply",
    "parameters",
    "named_parameters",
    "buffers",
    "named_buffers",
    "modules",
    "named_modules",
    "children",
    "named_children",
    "state_dict",
    "load_state_dict",
    "type",
    "zero_grad",
    "register_buffer",
    "register_parameter",
    "add_module",
    "extra_repr",
    "requires_grad_",
    "get_submodule",
    "get_parameter",
    "get_buffer",
    "share_memory",
    "compile",
    "dump_patches",
    "call_super_init",
    "spec_name",
    "input_shape",
    "num_classes",
    "append",
    "extend",
    "insert",
    "pop",
    "aux_heads",
    "op_names",
}
TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "list": list, "any": object}


@dataclass(frozen=True)
class State:
    """What flows between layers: the shape (None once unknown) and receptive-field geometry."""

    shape: Shape | None
    rf: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)

    def through(self, window: Window | None, out: Shape) -> State:
        if window is None:
            return State(out, self.rf, self.jump)
        rf = tuple(
            self.rf[i] + window.dilation[i] * (window.k[i] - 1) * self.jump[i] for i in (0, 1)
        )
        jump = tuple(self.jump[i] * window.stride[i] for i in (0, 1))
        return State(out, rf, jump)  # type: ignore[arg-type]


UNKNOWN = State(None)


def join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


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


class Scope:
    """The module that children register on: one set of names, duplicates refused."""

    def __init__(self, path: str):
        self.path = path
        self.names: set[str] = set()
        self.key_locs: dict[str, Loc] = {}  # the model's scope: where each stage's name is written


class Site(NamedTuple):
    """Where an op or combinator is written and what it receives: the key's and the body's
    positions, the incoming state, the expression environment, the module it registers on and
    its name (None: the next position), and whether it splices into that module."""

    key_loc: Loc
    body_loc: Loc
    state: State
    env: dict
    scope: Scope
    name: str | None
    inline: bool = False


class Lowerer:
    def __init__(self, src: Source, doc: LMap, spec: SpecModel, out: Collector):
        self.src = src
        self.doc = doc
        self.out = out
        self.spec = spec
        self.templates: LMap = doc.get("templates") or LMap()
        self.defaults = spec.defaults
        self.stack: list[str] = []
        self.count = 0
        self.depth = 0  # items being lowered, one inside the other
        self.globals: dict[str, Any] = {"num_classes": spec.num_classes, "width": spec.width}

    # ------------------------------------------------------------------ helpers

    def error(self, loc: Loc, code: str, message: str, help: str | None = None) -> None:
        self.out.add(loc, code, message, help)

    def claim(self, scope: Scope, name: str | None, loc: Loc) -> str:
        """Register a module name on `scope`; `None` means "the next position", like a list."""
        if name is None:
            name = str(len(scope.names))
        if not NAME_RE.match(name) or name in RESERVED:
            self.error(
                scope.key_locs.get(name, loc),
                "E-NAME",
                f"`{name}` is not a valid layer name",
                "use letters, digits and _",
            )
        elif name in scope.names:
            where = scope.path or "the model"
            self.error(
                loc,
                "E-NAME-DUP",
                f"`{name}` is already a module in {where}",
                "give one of them another `name`",
            )
        scope.names.add(name)
        return name

    def resolve(self, value: Any, loc: Loc, env: dict, state: State) -> Any:
        """Evaluate expressions inside a value. Raises Problem on the first failure."""
        if isinstance(value, dict):
            return {k: self.resolve(v, loc_of(value, k, loc), env, state) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, loc_of(value, i, loc), env, state) for i, v in enumerate(value)]
        if is_expression(value):
            scope = dict(env)
            if state.shape is not None:
                scope["in"] = ExprShape(state.shape)
            elif "$in" in value:
                raise _Unknown()
            if any(scope.get(n) is UNSET for n in DOLLAR_NAME.findall(value)):
                raise _Unknown()  # an earlier error left this parameter without a value
            try:
                return evaluate(value, scope)
            except Problem as p:
                raise _Located(loc, p) from None
        return value

    # ------------------------------------------------------------------ items

    def item(
        self,
        item: Any,
        loc: Loc,
        state: State,
        env: dict,
        scope: Scope,
        name: str | None,
        splice: bool = False,
    ) -> Node:
        """Lower one item of a layer list (or a stage, or a template body). With `splice`, a
        list's layers are registered on the enclosing module instead of a nested Sequential."""
        self.count += 1
        if self.count > MAX_LAYERS:
            raise _TooBig(loc)
        with self.deeper(loc):
            if isinstance(item, str):
                return self.named_thing(item, None, loc, loc, state, env, scope, name)
            if isinstance(item, list):
                return self.seq(item, loc, state, env, scope, name, inline=splice)
            if not isinstance(item, dict) or not item:
                self.error(
                    loc,
                    "E-ITEM",
                    f"expected a layer, got {_kind(item)}",
                    "a layer is an op name (`relu`), a mapping `{conv: {out: 64, k: 3}}`, or a list",
                )
                return self.dead(loc, state, scope, name)
            keys = set(item)
            if keys & {"use", "body", "repeat"}:
                return self.repeat(item, loc, state, env, scope, name)
            name = self.item_name(item, loc, env, name)
            heads = [k for k in item if k not in ("name", "inline")]
            if len(heads) != 1:
                self.error(
                    loc,
                    "E-ITEM",
                    f"a layer mapping needs exactly one op, got {', '.join(map(str, heads)) or 'none'}",
                    "write each layer as its own list item: `- conv: {...}`",
                )
                return self.dead(loc, state, scope, name)
            head = heads[0]
            return self.named_thing(
                str(head),
                item[head],
                loc_of(item, head, loc, key_loc=True),
                loc_of(item, head, loc),
                state,
                env,
                scope,
                name,
                inline=bool(item.get("inline", False)),
            )

    def item_name(self, item: dict, loc: Loc, env: dict, default: str | None) -> str | None:
        if "name" not in item:
            return default
        try:
            value = self.resolve(item["name"], loc_of(item, "name", loc), env, UNKNOWN)
        except (_Located, _Unknown):
            value = item["name"]
        return str(value)

    def named_thing(
        self,
        head: str,
        body: Any,
        key_loc: Loc,
        body_loc: Loc,
        state: State,
        env: dict,
        scope: Scope,
        name: str | None,
        inline: bool = False,
    ) -> Node:
        if head in OPS:
            return self.layer(head, body, Site(key_loc, body_loc, state, env, scope, name))
        if head in COMBINATORS:
            if not isinstance(body, dict) and head not in ("seq", "aux"):
                self.error(body_loc, "E-ITEM", f"`{head}` takes a mapping of options", None)
                return self.dead(key_loc, state, scope, name)
            at = Site(key_loc, body_loc, state, env, scope, name, inline)
            return getattr(self, "comb_" + head)(body, at)
        if head in self.templates:
            args = body if isinstance(body, dict) else LMap()
            if body is not None and not isinstance(body, dict):
                self.error(
                    body_loc, "E-TYPE", f"template `{head}` takes a mapping of arguments", None
                )
            if "name" in args:
                name = str(args["name"])
                args = {k: v for k, v in args.items() if k != "name"}
            return self.instantiate(head, args, key_loc, body_loc, state, env, scope, name)
        known = [*OPS, *COMBINATORS, *self.templates]
        self.error(
            key_loc, "E-UNKNOWN-OP", f"unknown op or template `{head}`", did_you_mean(head, known)
        )
        return self.dead(key_loc, state, scope, name)

    @contextlib.contextmanager
    def deeper(self, loc: Loc) -> Iterator[None]:
        """One more level of items inside items; past MAX_NESTING the spec is refused."""
        if self.depth >= MAX_NESTING:
            raise _TooDeep(loc, list(self.stack))
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def container(
        self,
        kind: str,
        loc: Loc,
        state: State,
        scope: Scope,
        name: str | None,
        inline: bool,
        merge: str = "concat",
    ) -> tuple[Node, Scope]:
        """A composite node and the scope its children register on: its own module, named on
        `scope`, or with `inline` none, its children then registering on `scope` directly."""
        if not inline:
            name = self.claim(scope, name, loc)
        name = name or ""
        node = Node(
            kind, name, join(scope.path, name), loc, state.shape, inline=inline, merge=merge
        )
        return node, scope if inline else Scope(node.path)

    def dead(self, loc: Loc, state: State, scope: Scope, name: str | None) -> Node:
        name = name or "?"
        return Node(LAYER, name, join(scope.path, name), loc, state.shape, None, op="?")

    # ------------------------------------------------------------------ layers

    def layer(self, opname: str, body: Any, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, _ = at
        op = OPS[opname]
        raw = dict(self.defaults.get(opname, {}))
        if body is not None and not isinstance(body, dict):
            self.error(
                body_loc,
                "E-TYPE",
                f"`{opname}` takes a mapping of parameters, got {_kind(body)}",
                _param_hint(opname),
            )
            body = {}
        body = body or {}
        if "name" in body:
            name = self.item_name(body, body_loc, env, name)
        name = self.claim(scope, name, loc_of(body, "name", key_loc) if "name" in body else key_loc)
        node = Node(LAYER, name, join(scope.path, name), key_loc, state.shape, op=opname)
        node.loc = replace(key_loc, width=len(opname))
        values: dict = {}
        ok = True
        for k, v in raw.items():
            values[k] = v
        for k, v in body.items():
            if k == "name":
                continue
            vloc = loc_of(body, k, body_loc)
            try:
                values[k] = self.resolve(v, vloc, env, state)
            except _Located as e:
                self.out.problem(e.loc, e.problem)
                ok = False
            except _Unknown:
                ok = False
            if (
                k == "out"
                and op.scales_with_width
                and self.spec.width != 1
                and ok
                and not (isinstance(v, str) and "$in" in v)
                and isinstance(values.get(k), int)
            ):
                values[k] = max(1, math.floor(values[k] * self.spec.width + 1e-9))
        if not ok:
            return node
        try:
            params = op.Params.model_validate(values)
        except ValidationError as exc:
            pydantic_errors(
                exc, body, body_loc, self.out, what=f"`{opname}`", known_keys=op.Params.model_fields
            )
            return node
        node.params = params
        if state.shape is None:  # still check the rules that need no input shape (pad, ranges)
            try:
                if hasattr(op, "geometry"):
                    op.geometry(params)
            except Problem as p:
                self.out.problem(
                    loc_of(body, p.field, node.loc) if p.field in body else node.loc, p
                )
            return node
        try:
            inferred = op.infer(params, state.shape)
        except Problem as p:  # a value out of range is shown at the value, a shape rule at the op
            self.out.problem(loc_of(body, p.field, node.loc) if p.field in body else node.loc, p)
            return node
        node.inferred = inferred
        node.out_shape = inferred.out
        after = state.through(inferred.window, inferred.out)
        node.rf = after.rf
        node._state = after  # type: ignore[attr-defined]
        return node

    # ------------------------------------------------------------------ combinators

    def seq(
        self,
        items: Any,
        loc: Loc,
        state: State,
        env: dict,
        scope: Scope,
        name: str | None,
        inline: bool,
        prefix: str | None = None,
    ) -> Node:
        node, inner = self.container(SEQ, loc, state, scope, name, inline)
        if not isinstance(items, list):
            items = LSeq([items])
            items.item_locs = [loc]
        if not items:
            self.error(loc, "E-ITEM", "empty layer list", "remove it or add layers")
        for i, it in enumerate(items):
            child = self.item(
                it, loc_of(items, i, loc), state, env, inner, f"{prefix}{i}" if prefix else None
            )
            node.children.append(child)
            state = _after(child)
        return _finish(node, state)

    def comb_seq(self, body: Any, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, inline = at
        items = body.get("layers") if isinstance(body, dict) else body
        if isinstance(body, dict):
            name = self.item_name(body, body_loc, env, name)
            inline = bool(body.get("inline", inline))
            extra = set(body) - {"layers", "name", "inline"}
            for k in extra:
                self.error(
                    loc_of(body, k, body_loc, key_loc=True),
                    "E-UNKNOWN-KEY",
                    f"unknown key `{k}` in `seq`",
                    did_you_mean(str(k), ["layers", "name", "inline"]),
                )
        if items is None:
            self.error(body_loc, "E-MISSING-KEY", "`seq` needs `layers`", None)
            return self.dead(key_loc, state, scope, name)
        return self.seq(items, body_loc, state, env, scope, name, inline)

    def comb_aux(self, body: Any, at: Site) -> Node:
        """An auxiliary head (GoogLeNet's aux1, Inception v3's AuxLogits): a module whose layers
        read the current tensor, but whose output leaves the main path: the next stage gets this
        stage's input. It runs in training only (see compile.py); only a stage can be one, so the
        model's forward can hand its output back next to the main one."""
        key_loc, body_loc, state, env, scope, name, inline = at
        items = body
        if isinstance(body, dict):
            self.options(body, body_loc, ("layers", "name"), "aux")
            name = self.item_name(body, body_loc, env, name)
            items = body.get("layers")
            if items is None:
                self.error(body_loc, "E-MISSING-KEY", "`aux` needs `layers`", None)
                return self.dead(key_loc, state, scope, name)
        if scope.path or inline:
            self.error(
                key_loc,
                "E-AUX-PLACE",
                "an `aux` head must be a stage of its own",
                "move it to `stages:`, right after the stage whose output it reads",
            )
        node = self.seq(items, body_loc, state, env, scope, name, inline=False)
        node.kind = AUX
        node._state = state  # type: ignore[attr-defined]  # the main path goes on from its input
        return node

    def options(self, body: dict, body_loc: Loc, allowed: tuple[str, ...], what: str) -> None:
        for k in body:
            if k not in allowed:
                self.error(
                    loc_of(body, k, body_loc, key_loc=True),
                    "E-UNKNOWN-KEY",
                    f"unknown key `{k}` in `{what}`",
                    did_you_mean(str(k), allowed),
                )

    def comb_parallel(self, body: dict, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, inline = at
        self.options(body, body_loc, ("branches", "merge", "flat", "name", "inline"), "parallel")
        name = self.item_name(body, body_loc, env, name)
        inline = bool(body.get("inline", inline))
        flat = bool(body.get("flat", False))
        merge_kind = body.get("merge", "concat")
        if merge_kind not in ("concat", "add"):
            self.error(
                loc_of(body, "merge", body_loc),
                "E-TYPE",
                f"merge must be `concat` or `add`, got `{merge_kind}`",
                None,
            )
            merge_kind = "concat"
        node, inner = self.container(PARALLEL, key_loc, state, scope, name, inline, merge_kind)
        name = node.name
        branches = body.get("branches")
        bloc = loc_of(body, "branches", body_loc)
        if isinstance(branches, list):
            pairs = [(str(i), b, loc_of(branches, i, bloc)) for i, b in enumerate(branches)]
        elif isinstance(branches, dict):
            pairs = [(str(k), b, loc_of(branches, k, bloc)) for k, b in branches.items()]
        else:
            self.error(
                bloc if branches is not None else key_loc,
                "E-MISSING-KEY",
                "`parallel` needs `branches`: a list or a mapping of layer lists",
                None,
            )
            return node
        if len(pairs) < 1:
            self.error(bloc, "E-ITEM", "`parallel` needs at least one branch", None)
        bname_prefix = f"{name}_" if inline and name else ""
        for bname, branch, loc in pairs:
            full = bname_prefix + bname
            if flat and isinstance(branch, list):
                child = self.seq(branch, loc, state, env, inner, full, inline=True)
            else:
                child = self.item(branch, loc, state, env, inner, full)
            node.children.append(child)
        outs = [_after(c) for c in node.children]
        return _finish(node, self.merge(node, outs, key_loc, state))

    def merge(self, node: Node, outs: list[State], loc: Loc, state: State) -> State:
        shapes = [o.shape for o in outs if o.shape is not None]
        if not shapes or len(shapes) < len(outs):
            return UNKNOWN
        rf = tuple(max(o.rf[i] for o in outs) for i in (0, 1))
        jump = tuple(max(o.jump[i] for o in outs) for i in (0, 1))
        named = ", ".join(f"{c.name}: {fmt(s)}" for c, s in zip(node.children, shapes))
        if node.merge == "add":
            if len(set(shapes)) != 1:
                self.error(
                    loc,
                    "E-MERGE-ADD",
                    f"`add` needs equal shapes, but the branches give {named}",
                    "make every branch end with the same channels and size",
                )
                return UNKNOWN
            return State(shapes[0], rf, jump)  # type: ignore[arg-type]
        ranks = {len(s) for s in shapes}  # type: ignore[arg-type]
        spatial = {tuple(s[1:]) for s in shapes}  # type: ignore[index]
        if len(ranks) != 1 or len(spatial) != 1:
            self.error(
                loc,
                "E-MERGE-CONCAT",
                f"`concat` needs equal height and width, but the branches give {named}",
                "pad or stride the branches so their spatial sizes agree",
            )
            return UNKNOWN
        first = shapes[0]
        out = (sum(s[0] for s in shapes), *first[1:])
        return State(out, rf, jump)  # type: ignore[arg-type]

    def comb_residual(self, body: dict, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, inline = at
        self.options(
            body, body_loc, ("main", "shortcut", "projection", "post", "name", "inline"), "residual"
        )
        inline = bool(body.get("inline", inline))
        name = self.item_name(body, body_loc, env, name)
        node, inner = self.container(RESIDUAL, key_loc, state, scope, name, inline, "add")
        name = node.name
        prefix = f"{name}_" if inline and name else ""
        if "main" not in body:
            self.error(
                key_loc,
                "E-MISSING-KEY",
                "`residual` needs `main`: the layers of the main path",
                None,
            )
            return node
        mloc = loc_of(body, "main", body_loc)
        main = self.seq(
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
        mstate = _after(main)
        sc = body.get("shortcut", "auto")
        sloc = loc_of(body, "shortcut", key_loc)
        sstate = state
        if sc == "auto":
            need = (
                mstate.shape is not None and state.shape is not None and mstate.shape != state.shape
            )
            if need:
                proj = self.projection(body, body_loc, state, mstate, env, inner, prefix, sloc)
                node.shortcut = proj
                sstate = _after(proj)
        elif sc == "identity":
            pass
        elif sc is None:
            self.error(sloc, "E-TYPE", "`shortcut` must be `auto`, `identity` or layers", None)
        else:
            node.shortcut = self.item(sc, sloc, state, env, inner, f"{prefix}shortcut")
            sstate = _after(node.shortcut)
        after = UNKNOWN
        if mstate.shape is not None and sstate.shape is not None:
            if mstate.shape != sstate.shape:
                self.error(
                    key_loc,
                    "E-MERGE-ADD",
                    f"residual main path gives {fmt(mstate.shape)} but the shortcut gives {fmt(sstate.shape)}",
                    "use `shortcut: auto` for a 1x1 projection, or make the main path keep the shape",
                )
            else:
                rf = tuple(max(mstate.rf[i], sstate.rf[i]) for i in (0, 1))
                after = State(mstate.shape, rf, mstate.jump)  # type: ignore[arg-type]
        if "post" in body and body["post"] is not None:
            node.post = self.item(
                body["post"], loc_of(body, "post", body_loc), after, env, inner, f"{prefix}post"
            )
            after = _after(node.post)
        return _finish(node, after)

    def projection(
        self,
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
        allowed = ("bn", "bias", "name")
        if not isinstance(opts, dict):
            self.error(
                ploc,
                "E-TYPE",
                "`projection` takes a mapping {bn, bias, name}",
                "`shortcut: auto` picks identity or projection; `projection` only tunes the latter",
            )
            opts = {}
        self.options(opts, ploc, allowed, "projection")
        assert state.shape is not None and mstate.shape is not None
        if len(state.shape) != 3 or len(mstate.shape) != 3:
            self.error(
                loc, "E-SHAPE-RANK", "`shortcut: auto` needs image tensors on both paths", None
            )
            return self.dead(loc, UNKNOWN, scope, f"{prefix}shortcut")
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
        saved, self.spec = self.spec, self.spec.model_copy(update={"width": 1.0})
        try:
            if not use_bn:
                return self.layer("conv", conv, Site(loc, ploc, state, env, scope, name))
            items = LSeq([{"conv": conv}, "bn"])
            items.loc, items.item_locs = ploc, [ploc, ploc]
            return self.seq(items, loc, state, env, scope, name, inline=False)
        finally:
            self.spec = saved

    def comb_dense(self, body: dict, at: Site) -> Node:
        """Each layer sees the concatenation of the block input and all earlier layer outputs."""
        return self.repeat(
            body, at.body_loc, at.state, at.env, at.scope, at.name, dense=True, head_loc=at.key_loc
        )

    # ------------------------------------------------------------------ repeat / templates

    def repeat(
        self,
        item: dict,
        loc: Loc,
        state: State,
        env: dict,
        scope: Scope,
        name: str | None,
        dense: bool = False,
        head_loc: Loc | None = None,
    ) -> Node:
        what = "dense" if dense else "repeat"
        self.options(item, loc, tuple(sorted(REPEAT_KEYS)), what)
        name = self.item_name(item, loc, env, name)
        inline = bool(item.get("inline", False))
        uses, body = item.get("use"), item.get("body")
        if (uses is None) == (body is None):
            self.error(
                head_loc or loc,
                "E-MISSING-KEY",
                f"`{what}` needs exactly one of `use` (a template) or `body` (layers)",
                None,
            )
            return self.dead(loc, state, scope, name)
        args = item.get("with") or LMap()
        for key in ("with", "first", "at"):  # mappings, or the repetitions would read garbage
            if item.get(key) is not None and not isinstance(item[key], dict):
                self.error(
                    loc_of(item, key, loc),
                    "E-TYPE",
                    f"`{key}` must be a mapping, got {_kind(item[key])}",
                    "e.g. `with: {c: 64}`, `first: {stride: 2}`, `at: {-1: {stride: 1}}`",
                )
        if not isinstance(args, dict):  # said above; the body would only add "missing argument"
            return self.dead(loc, state, scope, name)
        times = item.get("repeat", None)
        if dense and times is None:
            self.error(
                head_loc or loc,
                "E-MISSING-KEY",
                "`dense` needs `repeat`: the number of layers",
                None,
            )
            return self.dead(loc, state, scope, name)
        rloc = loc_of(item, "repeat", loc)
        if times is not None:
            try:
                times = self.resolve(times, rloc, env, state)
            except _Located as e:
                self.out.problem(e.loc, e.problem)
                times = 1
            except _Unknown:
                times = 1
            if (
                isinstance(times, bool)
                or not isinstance(times, int)
                or not 1 <= times <= MAX_REPEAT
            ):
                self.error(
                    rloc,
                    "E-RANGE",
                    f"`repeat` must be a whole number from 1 to {MAX_REPEAT}, got {times!r}",
                    None,
                )
                times = 1
        uloc = loc_of(item, "use" if uses is not None else "body", loc)
        if is_expression(
            uses
        ):  # `use: $block`: the template is a parameter (ResNet's basic/bottleneck)
            try:
                uses = self.resolve(uses, uloc, env, state)
            except _Located as e:
                self.out.problem(e.loc, e.problem)
                return self.dead(loc, state, scope, name)
            except _Unknown:
                return self.dead(loc, state, scope, name)
        if uses is not None and (not isinstance(uses, str) or uses not in self.templates):
            self.error(
                uloc,
                "E-UNKNOWN-TEMPLATE",
                f"unknown template `{uses}`",
                did_you_mean(str(uses), self.templates),
            )
            return self.dead(loc, state, scope, name)

        def one(i: int | None, st: State, sc: Scope, nm: str | None) -> Node:
            call = dict(args)
            for key, sel in (("first", 0), ("at", None)):
                over = item.get(key)
                if over is None or i is None:
                    continue
                if key == "first":
                    if i == 0:
                        call.update(over if isinstance(over, dict) else {})
                elif isinstance(over, dict):
                    for k, v in over.items():
                        idx = _index(k, times or 1)
                        if idx is None:
                            self.error(
                                loc_of(over, k, loc, key_loc=True),
                                "E-RANGE",
                                f"`at` key `{k}` is not a repetition index (0..{(times or 1) - 1})",
                                None,
                            )
                        elif idx == i and isinstance(v, dict):
                            call.update(v)
            local = dict(env, i=i if i is not None else 0)
            if uses is not None:
                return self.instantiate(
                    uses,
                    _relocate(call, args, item),
                    uloc,
                    loc_of(item, "with", loc),
                    st,
                    local,
                    sc,
                    nm,
                    splice=inline,
                )
            # `with` values see the repetition index `$i`, like a template's arguments do; a
            # value that fails reads as unknown in the body instead of as an unknown name.
            scope_env = dict(local)
            located = _relocate(call, args, item)
            for k, v in call.items():
                try:
                    scope_env[k] = self.resolve(
                        v, located.val_locs.get(k) or loc_of(item, "with", loc), local, st
                    )
                except _Located as e:
                    self.out.problem(e.loc, e.problem)
                    scope_env[k] = UNSET
                except _Unknown:
                    scope_env[k] = UNSET
            return self.item(body, uloc, st, scope_env, sc, nm, splice=inline)

        if times is None and not dense:
            return one(None, state, scope, name)
        node, inner = self.container(
            DENSE if dense else SEQ, head_loc or loc, state, scope, name, inline
        )
        prefix = item.get("prefix")
        start = item.get("start", 0)
        start = start if isinstance(start, int) else 0
        cur = state
        least = None  # fewest items a repetition after the first expanded to
        assert times is not None  # a dense block without `repeat` returned above
        for i in range(times):
            auto = None if inline else str(start + i)
            before = self.count
            child = one(i, cur, inner, f"{prefix}{start + i}" if prefix is not None else auto)
            if i >= 1:  # refuse a nested-repeat bomb after two repetitions, not 100,000 layers
                least = min(least or self.count - before, self.count - before)
                if self.count + least * (times - 1 - i) > MAX_LAYERS:
                    raise _TooBig(head_loc or loc)
            node.children.append(child)
            out = _after(child)
            if dense:
                cur = self.dense_step(cur, out, child, i)
            else:
                cur = out
        return _finish(node, cur)

    def dense_step(self, before: State, out: State, child: Node, i: int) -> State:
        if before.shape is None or out.shape is None:
            return UNKNOWN
        if len(out.shape) != 3 or out.shape[1:] != before.shape[1:]:
            self.error(
                child.loc,
                "E-MERGE-CONCAT",
                f"dense layer {i} turns {fmt(before.shape)} into {fmt(out.shape)}; it must keep height and width",
                "dense layers are concatenated to their input: pad so the size stays the same",
            )
            return UNKNOWN
        shape = (before.shape[0] + out.shape[0], *before.shape[1:])
        rf = tuple(max(before.rf[j], out.rf[j]) for j in (0, 1))
        return State(shape, rf, before.jump)  # type: ignore[arg-type]

    def instantiate(
        self,
        tname: str,
        args: Any,
        key_loc: Loc,
        args_loc: Loc,
        state: State,
        env: dict,
        scope: Scope,
        name: str | None,
        splice: bool = False,
    ) -> Node:
        template = self.templates[tname]
        tloc = loc_of(self.templates, tname, key_loc)
        if tname in self.stack:
            chain = " -> ".join([*self.stack[self.stack.index(tname) :], tname])
            self.error(
                key_loc,
                "E-TEMPLATE-RECURSION",
                f"template `{tname}` uses itself ({chain})",
                "a template may not contain itself, directly or through another template",
            )
            return self.dead(key_loc, state, scope, name)
        if not isinstance(template, dict):
            self.error(
                tloc,
                "E-TEMPLATE",
                f"template `{tname}` must be a mapping with `params` and `body`",
                None,
            )
            return self.dead(key_loc, state, scope, name)
        declared = template.get("params") or {}
        local = dict(self.globals)
        local["i"] = env.get("i", 0)
        ok = True
        for k in args:
            if k not in declared:
                self.error(
                    loc_of(args, k, args_loc, key_loc=True),
                    "E-TEMPLATE-ARG",
                    f"template `{tname}` has no parameter `{k}`",
                    did_you_mean(str(k), declared),
                )
                ok = False
        for p, decl in declared.items():
            ploc = loc_of(declared, p, tloc)
            tdecl, spec = _declaration(decl)
            if tdecl is not None and tdecl not in TYPES:
                self.error(
                    ploc,
                    "E-TEMPLATE",
                    f"parameter `{p}` of `{tname}` has unknown type `{tdecl}`",
                    did_you_mean(str(tdecl), TYPES) or "types: " + ", ".join(TYPES),
                )
                tdecl = "any"
            required = spec is _REQUIRED
            if p in args:
                aloc = loc_of(args, p, args_loc)
                try:
                    value = self.resolve(args[p], aloc, env, state)
                except _Located as e:
                    self.out.problem(e.loc, e.problem)
                    ok, local[p] = False, UNSET
                    continue
                except _Unknown:
                    ok, local[p] = False, UNSET
                    continue
                want = (
                    TYPES[tdecl]
                    if tdecl
                    else (TYPES["float"] if isinstance(spec, float) else type(spec))
                )
                if not _isinstance(value, want):
                    tn = tdecl or type(spec).__name__
                    self.error(
                        aloc,
                        "E-TYPE",
                        f"parameter `{p}` of `{tname}` must be {tn}, got {_kind(value)}",
                        f"declared at line {ploc.line}",
                    )
                    ok, value = False, UNSET  # said once here, not again wherever it is read
                local[p] = value
            elif required:
                self.error(
                    key_loc,
                    "E-TEMPLATE-ARG-MISSING",
                    f"template `{tname}` needs parameter `{p}` ({tdecl})",
                    f"pass it with `with: {{{p}: ...}}`",
                )
                ok, local[p] = False, UNSET
            else:
                try:
                    local[p] = self.resolve(spec, ploc, local, state)
                except _Located as e:  # was swallowed: `$d` then read as the text "$c + 1"
                    self.out.problem(e.loc, e.problem)
                    local[p] = UNSET
                except _Unknown:
                    local[p] = UNSET
        body_key = (
            "body" if "body" in template else next((k for k in template if k != "params"), None)
        )
        extra = [k for k in template if k not in ("params", body_key)]
        for k in extra:
            self.error(
                loc_of(template, k, tloc, key_loc=True),
                "E-TEMPLATE",
                f"template `{tname}` has more than one body (`{body_key}` and `{k}`)",
                None,
            )
        if body_key is None:
            self.error(tloc, "E-TEMPLATE", f"template `{tname}` has no body", "add `body: [...]`")
            return self.dead(key_loc, state, scope, name)
        body = template[body_key] if body_key == "body" else LMap({body_key: template[body_key]})
        if body_key != "body":
            body.loc = loc_of(template, body_key, tloc, key_loc=True)
            body.key_locs = {body_key: body.loc}
            body.val_locs = {body_key: loc_of(template, body_key, tloc)}
        bloc = loc_of(template, body_key, tloc)
        if not ok:
            state = UNKNOWN
        self.stack.append(tname)
        try:
            return self.item(body, bloc, state, local, scope, name, splice=splice)
        finally:
            self.stack.pop()


class _Located(Exception):
    def __init__(self, loc: Loc, problem: Problem):
        self.loc, self.problem = loc, problem


class _Unknown(Exception):
    """An expression reads `$in` but the incoming shape is unknown after an earlier error."""


class _TooBig(Exception):
    def __init__(self, loc: Loc):
        self.loc = loc


class _TooDeep(Exception):
    def __init__(self, loc: Loc, templates: list[str]):
        self.loc, self.templates = loc, templates


def _after(node: Node) -> State:
    return getattr(node, "_state", UNKNOWN)


def _finish(node: Node, state: State) -> Node:
    node.out_shape = state.shape
    node._state = state  # type: ignore[attr-defined]
    return node


def _kind(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {v}"
    if isinstance(v, str):
        return f"string `{v[:40]}`"
    if isinstance(v, list):
        return "a list"
    return "a mapping"


_REQUIRED = object()


def _declaration(decl: Any) -> tuple[str | None, Any]:
    """A template parameter's declared type (None: its default's type) and default (_REQUIRED if
    none): `c: int` is required, `stride: 1` defaults to the int 1, and `k: {type: any, default: 1}`
    defaults to 1 but also takes other types (a kernel as n or [h, w])."""
    if isinstance(decl, str) and decl in TYPES:
        return decl, _REQUIRED
    if isinstance(decl, dict) and "type" in decl and set(decl) <= {"type", "default"}:
        return str(decl["type"]), decl.get("default", _REQUIRED)
    return None, decl


def _isinstance(value: Any, want: Any) -> bool:
    if isinstance(value, bool) and want in (int, (int, float)):
        return False
    return isinstance(value, want)


def _param_hint(op: str) -> str | None:
    fields = list(OPS[op].Params.model_fields)
    if not fields:
        return f"`{op}` has no parameters: write it as `- {op}`"
    return f"`{op}` takes {{" + ", ".join(fields) + "}"


def _index(key: Any, n: int) -> int | None:
    try:
        i = int(key)
    except (TypeError, ValueError):
        return None
    if -n <= i < n:
        return i % n
    return None


def _relocate(call: dict, args: Any, item: dict) -> LMap:
    """Keep the file positions of `with`/`first`/`at` arguments for error messages."""
    out = LMap(call)
    out.loc = getattr(args, "loc", getattr(item, "loc", None))  # type: ignore[assignment]
    out.key_locs, out.val_locs = {}, {}
    sources = [args, item.get("first")]
    at = item.get("at")
    if isinstance(at, dict):
        sources += list(at.values())
    for src in sources:
        if isinstance(src, LMap):
            for k in src:
                if k in call and call[k] is src[k]:
                    out.key_locs[k] = src.key_locs.get(k)
                    out.val_locs[k] = src.val_locs.get(k)
    return out


def spec_params(lw: Lowerer, doc: Any, fallback: Loc) -> None:
    """Top-level `params`: the spec's own named values (`$layers`, `$block`), visible in every
    expression and template, so a family is one body plus a table of per-variant values. A value
    may be an expression over the parameters before it and `$num_classes`."""
    given = doc.get("params") or LMap()
    for pname, value in given.items():
        kloc = loc_of(given, pname, fallback, key_loc=True)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(pname)) or pname in (
            "in",
            "i",
            "num_classes",
            "width",
        ):
            lw.error(
                kloc,
                "E-NAME",
                f"`{pname}` cannot name a spec parameter",
                "use letters, digits and _; `in`, `i`, `num_classes` and `width` are taken",
            )
            continue
        try:
            lw.globals[str(pname)] = lw.resolve(
                to_plain(value), loc_of(given, pname, fallback), lw.globals, UNKNOWN
            )
        except _Located as e:
            lw.out.problem(e.loc, e.problem)
        except _Unknown:
            lw.error(
                loc_of(given, pname, fallback),
                "E-EXPR-NAME",
                f"spec parameter `{pname}` cannot read `$in`",
                "`$in` exists inside layers only",
            )


def lower(
    src: Source,
    variant: str | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    out: Collector,
    lowerer: type[Lowerer] | None = None,
) -> Network | None:
    """The whole walk. Returns None when the file is too broken to lower at all. `lowerer`, a
    subclass of Lowerer, lets the language server reuse unchanged stages between edits."""
    root = src.root
    name = src.path
    if not isinstance(root, LMap):
        out.add(
            getattr(root, "loc", Loc(name)),
            "E-SPEC-TYPE",
            f"the top level of a spec must be a mapping, got {_kind(root)}",
            "start with `name:`, `input:` and `stages:`",
        )
        return None
    variants = root.get("variants") or {}
    doc: Any = root
    if variant is not None:
        if not isinstance(variants, dict) or variant not in variants:
            vloc = (
                loc_of(root, "variants", root.loc, key_loc=True) if "variants" in root else root.loc
            )
            names = list(variants) if isinstance(variants, dict) else []
            out.add(
                vloc,
                "E-VARIANT",
                f"unknown variant `{variant}`",
                did_you_mean(variant, names) if names else "this spec defines no variants",
            )
            return None
        overlay = variants[variant]
        if not isinstance(overlay, dict):
            out.add(
                loc_of(variants, variant, root.loc),
                "E-VARIANT",
                f"variant `{variant}` must be a mapping",
                None,
            )
            return None
        doc = merge(root, overlay)
    plugins_ok = load_plugins(doc, root.loc, out)  # before anything looks an op up
    plain = to_plain(doc)
    if input_shape is not None:
        plain["input"] = list(input_shape)
    if num_classes is not None:
        plain["num_classes"] = num_classes
    try:
        spec = SpecModel.model_validate(plain)
    except ValidationError as exc:
        pydantic_errors(exc, doc, root.loc, out, what="the spec", known_keys=SpecModel.model_fields)
        return None
    if not plugins_ok:  # the layers would be unknown ops: the E-PLUGIN errors say it all
        return None
    if any(d < 1 or d > (1 << 16) for d in spec.input) or len(spec.input) == 2:
        out.add(
            loc_of(doc, "input", root.loc),
            "E-RANGE",
            f"`input` must be [C, H, W] or [F] with sizes from 1 to 65536, got {spec.input}",
            None,
        )
        return None
    for op in spec.defaults:
        if op not in OPS:
            out.add(
                loc_of(doc.get("defaults", {}), op, root.loc, key_loc=True),
                "E-UNKNOWN-OP",
                f"`defaults` names unknown op `{op}`",
                did_you_mean(op, OPS),
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
            rootnode.children.append(child)
            state = _after(child)
    except _TooBig as e:
        out.add(
            e.loc,
            "E-TOO-BIG",
            f"the spec expands to more than {MAX_LAYERS:,} layers",
            "lower the `repeat` counts",
        )
        return None
    except _TooDeep as e:
        t = e.templates
        chain = " -> ".join(t if len(t) <= 5 else [*t[:4], "...", t[-1]])
        out.add(
            e.loc,
            "E-TOO-DEEP",
            f"the spec nests more than {MAX_NESTING} layers deep when expanded",
            f"templates inside templates: {chain}" if t else "flatten some of the nesting",
        )
        return None
    _finish(rootnode, state)
    return Network(spec.name, variant, shape, spec.num_classes, rootnode, plain)
