"""The item walk: one item of a layer list becomes a node. A string or a one-key mapping names
an op (lowered here), a combinator (looked up in the registry), or a template; a list is a
sequence; a mapping with `use`/`body`/`repeat` is a repeat. Module names are claimed here.

Errors never stop the walk: a layer whose input shape is unknown (because something before it
failed) is still validated structurally, so one run reports every mistake in the file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from archspec.ir import LAYER, SEQ, Node
from archspec.lang.errors import Collector, Loc, Problem, did_you_mean
from archspec.lang.model import Invalid
from archspec.lang.source import LMap, LSeq, Source, loc_of, without
from archspec.lang.spec import SpecModel, pydantic_errors
from archspec.lower import refs, templates
from archspec.lower.combinators import COMBINATORS
from archspec.lower.core import (
    MAX_LAYERS,
    MAX_NESTING,
    NAME_RE,
    UNKNOWN,
    Located,
    Scope,
    Site,
    State,
    TooBig,
    TooDeep,
    Unknown,
    after,
    finish,
    join,
    kind_of,
)
from archspec.lower.repeat import repeat
from archspec.lower.templates import UNSET, resolve, resolve_or
from archspec.ops import OPS, Inferred
from archspec.ops.base import suggest_op

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


class Lowerer:
    """The walk over one spec. Combinators lower their parts through `item` and `seq`."""

    def __init__(self, src: Source, doc: LMap, spec: SpecModel, out: Collector):
        self.src = src
        self.doc = doc
        self.out = out
        self.spec = spec
        self.templates: LMap = doc.get("templates") or LMap()
        self.defaults = spec.defaults
        self.stack: list[str] = []  # the templates being expanded, outermost first
        self.count = 0
        self.depth = 0  # items being lowered, one inside the other
        self.globals: dict[str, Any] = {"num_classes": spec.num_classes, "width": spec.width}
        self.named: dict[str, Node] = {}  # outputs computed so far, by module path (refs.py)
        # references that did not resolve yet: where, the name, the module read from, how
        # many outputs were computed then (the earlier ones are the names it could read), and
        # the template use it is in
        self.pending: list[tuple[Loc, str, str, int, str | None]] = []
        self.left_out: dict[str, Loc] = {}  # items a false `when` left out: path -> the `when`
        self.ref_reads = 0  # references read so far (a cache of lowered stages watches it)
        # the shapes of the outputs the layer being lowered names in its parameters (`rule`
        # reads them; None: one is unknown)
        self.ref_shapes: dict[str, Any] | None = {}
        self.merges: list = []  # both sides of every merge of images (refs.fitting)
        self.mismatches: list = []  # merges whose sizes differ at this input size

    def error(
        self, loc: Loc, code: str, message: str, help: str | None = None, note: str | None = None
    ) -> None:
        self.out.add(loc, code, message, help, note)

    def claim(self, scope: Scope, name: str | None, loc: Loc, numbered: bool = True) -> str:
        """Register a module name on `scope`; `None` means "the next position", like a list.
        A name that is not `numbered` takes no position (the next item's number is unchanged)."""
        if name is None:
            name = self.next_position(scope)
        if not NAME_RE.match(name) or name in RESERVED:
            self.error(
                scope.key_locs.get(name, loc),
                "E-NAME",
                f"`{name}` is not a valid layer name",
                "use letters, digits, _ and -",
            )
        elif name in scope.names:
            where = scope.path or "the model"
            self.error(
                loc,
                "E-NAME-DUP",
                f"`{name}` is already a module in {where}",
                "give one of them another `name`",
            )
        if not numbered and name not in scope.names:
            scope.unnumbered += 1
        scope.names.add(name)
        return name

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
        node = self._item(item, loc, state, env, scope, name, splice)
        refs.register(self, node)
        return node

    def _item(
        self,
        item: Any,
        loc: Loc,
        state: State,
        env: dict,
        scope: Scope,
        name: str | None,
        splice: bool,
    ) -> Node:
        self.count += 1
        if self.count > MAX_LAYERS:
            raise TooBig(loc)
        with self.deeper(loc):
            if isinstance(item, str):
                return self.named_thing(item, None, loc, loc, state, env, scope, name)
            if isinstance(item, list):
                return self.seq(item, loc, state, env, scope, name, inline=splice)
            if not isinstance(item, dict) or not item:
                self.error(
                    loc,
                    "E-ITEM",
                    f"expected a layer, got {kind_of(item)}",
                    "a layer is an op name (`relu`), a mapping `{conv: {out: 64, k: 3}}`, or a list",
                )
                return self.dead(loc, state, scope, name)
            if "when" in item:  # before `from`: an item left out reads nothing
                present = self.when(item, loc, state, env)
                if present is not True:
                    return self.absent(item, loc, state, env, scope, name)
                item = without(item, "when")
            if "from" in item:
                return refs.lower_from(self, item, loc, state, env, scope, name)
            keys = set(item)
            if keys & {"use", "body", "repeat"}:
                return repeat(self, item, loc, state, env, scope, name)
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

    def when(self, item: dict, loc: Loc, state: State, env: dict) -> bool | None:
        """An item's `when:` condition: True or False, None when it cannot be evaluated (the
        error is said, and the item left out)."""
        wloc = loc_of(item, "when", loc)
        value = resolve_or(self, item["when"], wloc, env, state, UNSET)
        if value is UNSET:
            return None
        if not isinstance(value, bool):
            self.error(
                wloc,
                "E-TYPE",
                f"`when` must be true or false, got {kind_of(value)}",
                'a condition such as `when: "$expand != 1"`',
            )
            return None
        return value

    def absent(
        self, item: dict, loc: Loc, state: State, env: dict, scope: Scope, name: str | None
    ) -> Node:
        """An item whose `when` is false: no module, no name, its input handed on unchanged.
        The name it would have had is kept, so that a reference to it says why it is missing."""
        name = self.item_name(item, loc, env, name)
        heads = [k for k in item if k not in ("when", "from", "merge", "name", "inline")]
        if name is None and len(heads) == 1 and isinstance(item[heads[0]], dict):
            name = self.item_name(item[heads[0]], loc, env, None)
        if name is not None:
            self.left_out.setdefault(join(scope.path, name), loc_of(item, "when", loc))
        node = Node(SEQ, "", scope.path, loc, state.shape, inline=True)
        return finish(node, state)

    def instantiate(self, tname: str, *args: Any, **kw: Any) -> Node:
        """A call of template `tname` (templates.instantiate); a method, so a subclass (the
        language server's) can watch every call."""
        return templates.instantiate(self, tname, *args, **kw)

    def item_name(self, item: dict, loc: Loc, env: dict, default: str | None) -> str | None:
        """The `name:` of a mapping (an expression is resolved), else `default`."""
        if "name" not in item:
            return default
        try:
            value = resolve(item["name"], loc_of(item, "name", loc), env, UNKNOWN)
        except (Located, Unknown):
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
        comb = COMBINATORS.get(head)
        if comb is not None:
            if not isinstance(body, dict) and not comb.takes_list:
                self.error(body_loc, "E-ITEM", f"`{head}` takes a mapping of options", None)
                return self.dead(key_loc, state, scope, name)
            return comb.lower(self, body, Site(key_loc, body_loc, state, env, scope, name, inline))
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
            key_loc, "E-UNKNOWN-OP", f"unknown op or template `{head}`", suggest_op(head, known)
        )
        return self.dead(key_loc, state, scope, name)

    @contextlib.contextmanager
    def using(self, scope: Scope, name: str | None, splice: bool, loc: Loc) -> Iterator[None]:
        """Lower a template body (or a repetition's layers) written once and used here: an
        error inside says which use failed (`note: in the use at `l2.0` (line 13)`)."""
        if splice:
            path = scope.path
        else:
            path = join(scope.path, name if name is not None else self.next_position(scope))
        before = self.out.context
        self.out.context = f"`{path or 'the model'}` (line {loc.line})"
        try:
            yield
        finally:
            self.out.context = before

    def next_position(self, scope: Scope) -> str:
        """The name the next item without a `name` takes on `scope`."""
        return str(len(scope.names) - scope.unnumbered)

    @contextlib.contextmanager
    def deeper(self, loc: Loc) -> Iterator[None]:
        """One more level of items inside items; past MAX_NESTING the spec is refused."""
        if self.depth >= MAX_NESTING:
            raise TooDeep(loc, list(self.stack))
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
        """A placeholder for an item that could not be lowered: it hands on an unknown state."""
        name = name or "?"
        return Node(LAYER, name, join(scope.path, name), loc, state.shape, None, op="?")

    def options(
        self,
        body: dict,
        body_loc: Loc,
        allowed: Iterable[str],
        what: str,
        code: str = "E-UNKNOWN-KEY",
        message: str = "unknown key `{key}` in `{what}`",
    ) -> bool:
        """Refuse every key of `body` not in `allowed`, each at its own position; whether none
        was refused."""
        ok = True
        for k in body:
            if k not in allowed:
                self.error(
                    loc_of(body, k, body_loc, key_loc=True),
                    code,
                    message.format(key=k, what=what),
                    did_you_mean(str(k), allowed),
                )
                ok = False
        return ok

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
        """A layer list: a Sequential named `name` on `scope` (with `inline`, its layers
        register on `scope`, named `prefix0, prefix1, ...` when a prefix is given)."""
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
            state = after(child)
        return finish(node, state)

    def layer(self, opname: str, body: Any, at: Site) -> Node:
        key_loc, body_loc, state, env, scope, name, _ = at
        if body is not None and not isinstance(body, dict):
            self.error(
                body_loc,
                "E-TYPE",
                f"`{opname}` takes a mapping of parameters, got {kind_of(body)}",
                _param_hint(opname),
            )
            body = {}
        body = body or {}
        if "name" in body:
            name = self.item_name(body, body_loc, env, name)
        name = self.claim(scope, name, loc_of(body, "name", key_loc) if "name" in body else key_loc)
        node = Node(LAYER, name, join(scope.path, name), key_loc, state.shape, op=opname)
        node.loc = key_loc._replace(width=len(opname))
        op = OPS[opname]
        ref_states: dict[str, State] = {}
        for f in op.refs:  # parameters that name an earlier output
            if body.get(f) is not None:
                target = refs.reference(self, body[f], loc_of(body, f, body_loc), scope, env, state)
                if target is not None:
                    node.refs[f] = target.path
                    ref_states[f] = after(target)
        known = len(ref_states) == len([f for f in op.refs if body.get(f) is not None])
        shapes = {f: s.shape for f, s in ref_states.items()}
        self.ref_shapes = shapes if known and None not in shapes.values() else None
        params, inferred = self.rule(opname, body, body_loc, node.loc, state, env)
        node.params = params
        if inferred is None:
            return node
        node.inferred = inferred
        node.out_shape = inferred.out
        then = state.through(inferred.window, inferred.out)
        if state.shape is not None:  # (known: the rule inferred a shape)
            grid = op.token_grid(params, state.shape, inferred.out, state.grid)
            then = replace(then, grid=grid)
        if state.shape is not None and len(state.shape) == 3 and len(inferred.out) == 3:
            fn = _size_fn(op, params, state.shape[0], ref_states)
            then = replace(then, trace=refs.step(fn, state))
        node.rf = then.shown_rf(tuple(self.spec.input))
        node._state = then  # type: ignore[attr-defined]
        return node

    def rule(
        self, opname: str, body: dict, body_loc: Loc, loc: Loc, state: State, env: dict
    ) -> tuple[Any, Inferred | None]:
        """A layer's parameters (None if they fail) and inferred shape and cost (None if that
        fails or the input shape is unknown): pure, given the arguments, the spec's width and
        defaults, and the errors it reports (the language server keeps it per template use)."""
        op = OPS[opname]
        raw = self.defaults.get(opname, {})
        values: dict = {}
        ok = True
        scaled = None  # the `out` written, where `width` scaled it
        for k, v in raw.items():
            values[k] = v
        for k, v in body.items():
            if k == "name":
                continue
            vloc = loc_of(body, k, body_loc)
            values[k] = resolve_or(self, v, vloc, env, state, UNSET)
            if values[k] is UNSET:
                ok = False
            if (
                k == "out"
                and op.scales_with_width
                and self.spec.width != 1
                and ok
                and not (isinstance(v, str) and "$in" in v)
                and isinstance(values.get(k), int)
            ):
                scaled = values[k]
                values[k] = max(1, math.floor(values[k] * self.spec.width + 1e-9))
        if not ok:
            return None, None
        if op.reads_grid and values.get("h") is None and values.get("w") is None and state.grid:
            values["h"], values["w"] = state.grid  # the grid the tokens came from
        try:
            params = op.Params.model_validate(values)
        except Invalid as exc:
            pydantic_errors(
                exc.errors,
                body,
                body_loc,
                self.out,
                what=f"`{opname}`",
                known_keys=op.Params.model_fields,
            )
            return None, None
        if state.shape is None or self.ref_shapes is None:  # still check what needs no shape
            try:
                if hasattr(op, "geometry"):
                    op.geometry(params)
            except Problem as p:
                self.out.problem(loc_of(body, p.field, loc) if p.field in body else loc, p)
            return params, None
        try:
            inferred = op.infer_with(params, state.shape, self.ref_shapes)  # type: ignore[arg-type]
        except Problem as p:  # a value out of range is shown at the value, a shape rule at the op
            if p.code == "E-GROUPS" and self.spec.width != 1:
                p = _unscaled_groups(p, self.spec.width, scaled)
            self.out.problem(loc_of(body, p.field, loc) if p.field in body else loc, p)
            return params, None
        return params, inferred


def _unscaled_groups(p: Problem, width: float, out: int | None) -> Problem:
    """E-GROUPS under a width multiplier: `out` (and the channels before) were scaled, `groups`
    was not."""
    message = p.message + (f" (`out: {out}` scaled by `width: {width}`)" if out else "")
    help = "`width` does not scale `groups`: `groups: $in.c` follows the scaled channels"
    return Problem(p.code, message, f"{help} (a depthwise conv); {p.help}", p.field)


def _size_fn(op: Any, params: Any, c: int, ref_states: dict[str, State]) -> Any:
    """A layer's spatial size function for other input sizes (refs.size_at replays it)."""

    def fn(hw: tuple[int, int], hw0: tuple[int, int]) -> tuple[int, ...]:
        shapes = {}
        for f, s in ref_states.items():
            at = refs.size_at(s.trace, hw0)
            if at is None or s.shape is None:
                raise ValueError(f)
            shapes[f] = (s.shape[0], *at)
        return op.infer_with(params, (c, *hw), shapes).out[1:]

    return fn


def _param_hint(op: str) -> str | None:
    fields = list(OPS[op].Params.model_fields)
    if not fields:
        return f"`{op}` has no parameters: write it as `- {op}`"
    return f"`{op}` takes {{" + ", ".join(fields) + "}"
