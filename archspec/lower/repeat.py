"""The repeat form: `{repeat: N, use: template | body: layers, with, first, at, prefix, start}`.
Each repetition lowers the template (or the layers) with its own arguments; `first` and `at`
override `with` for some repetitions. A combinator built on it (`dense`) joins each
repetition's output to its input with its own `step`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from archspec.ir import SEQ, Node
from archspec.lang.errors import Loc, did_you_mean
from archspec.lang.expr import is_expression
from archspec.lang.source import LMap, loc_of
from archspec.lower.core import (
    MAX_LAYERS,
    Located,
    Scope,
    State,
    TooBig,
    Unknown,
    after,
    finish,
    kind_of,
)
from archspec.lower.fragments import EXPR, INLINE, NAME, REF_ITEM, described
from archspec.lower.templates import UNSET, resolve

if TYPE_CHECKING:
    from archspec.lower.walk import Lowerer

REPEAT_KEYS = {"use", "body", "with", "repeat", "first", "at", "prefix", "start", "name", "inline"}
MAX_REPEAT = 1024


class Joined(Protocol):
    """A combinator built on repeat (`dense`): `step` is the state after repetition `i`, from
    the state before it and the repetition's own output."""

    @property
    def name(self) -> str: ...

    def step(self, lw: Lowerer, before: State, out: State, child: Node, i: int) -> State: ...


def repeat(
    lw: Lowerer,
    item: dict,
    loc: Loc,
    state: State,
    env: dict,
    scope: Scope,
    name: str | None,
    joined: Joined | None = None,
    head_loc: Loc | None = None,
) -> Node:
    """Lower a repeat mapping. With `joined`, a combinator of that name: `repeat` is required,
    and `joined.step` makes the state each repetition hands the next."""
    what = joined.name if joined else "repeat"
    lw.options(item, loc, tuple(sorted(REPEAT_KEYS)), what)
    name = lw.item_name(item, loc, env, name)
    inline = bool(item.get("inline", False))
    uses, body = item.get("use"), item.get("body")
    if (uses is None) == (body is None):
        lw.error(
            head_loc or loc,
            "E-MISSING-KEY",
            f"`{what}` needs exactly one of `use` (a template) or `body` (layers)",
            None,
        )
        return lw.dead(loc, state, scope, name)
    args = item.get("with") or LMap()
    for key in ("with", "first", "at"):  # mappings, or the repetitions would read garbage
        if item.get(key) is not None and not isinstance(item[key], dict):
            lw.error(
                loc_of(item, key, loc),
                "E-TYPE",
                f"`{key}` must be a mapping, got {kind_of(item[key])}",
                "e.g. `with: {c: 64}`, `first: {stride: 2}`, `at: {-1: {stride: 1}}`",
            )
    if not isinstance(args, dict):  # said above; the body would only add "missing argument"
        return lw.dead(loc, state, scope, name)
    times = item.get("repeat", None)
    if joined and times is None:
        lw.error(
            head_loc or loc,
            "E-MISSING-KEY",
            f"`{what}` needs `repeat`: the number of layers",
            None,
        )
        return lw.dead(loc, state, scope, name)
    rloc = loc_of(item, "repeat", loc)
    if times is not None:
        try:
            times = resolve(times, rloc, env, state)
        except Located as e:
            lw.out.problem(e.loc, e.problem)
            times = 1
        except Unknown:
            times = 1
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_REPEAT:
            lw.error(
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
            uses = resolve(uses, uloc, env, state)
        except Located as e:
            lw.out.problem(e.loc, e.problem)
            return lw.dead(loc, state, scope, name)
        except Unknown:
            return lw.dead(loc, state, scope, name)
    if uses is not None and (not isinstance(uses, str) or uses not in lw.templates):
        lw.error(
            uloc,
            "E-UNKNOWN-TEMPLATE",
            f"unknown template `{uses}`",
            did_you_mean(str(uses), lw.templates),
        )
        return lw.dead(loc, state, scope, name)

    def one(i: int | None, st: State, sc: Scope, nm: str | None) -> Node:
        call = dict(args)
        for key in ("first", "at"):
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
                        lw.error(
                            loc_of(over, k, loc, key_loc=True),
                            "E-RANGE",
                            f"`at` key `{k}` is not a repetition index (0..{(times or 1) - 1})",
                            None,
                        )
                    elif idx == i and isinstance(v, dict):
                        call.update(v)
        local = dict(env, i=i if i is not None else 0)
        if uses is not None:
            return lw.instantiate(
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
                scope_env[k] = resolve(
                    v, located.val_locs.get(k) or loc_of(item, "with", loc), local, st
                )
            except Located as e:
                lw.out.problem(e.loc, e.problem)
                scope_env[k] = UNSET
            except Unknown:
                scope_env[k] = UNSET
        return lw.item(body, uloc, st, scope_env, sc, nm, splice=inline)

    if times is None and not joined:
        return one(None, state, scope, name)
    kind = joined.name if joined else SEQ
    node, inner = lw.container(kind, head_loc or loc, state, scope, name, inline)
    prefix = item.get("prefix")
    start = item.get("start", 0)
    start = start if isinstance(start, int) else 0
    cur = state
    least = None  # fewest items a repetition after the first expanded to
    assert times is not None  # a joined repeat without `repeat` returned above
    for i in range(times):
        auto = None if inline else str(start + i)
        before = lw.count
        child = one(i, cur, inner, f"{prefix}{start + i}" if prefix is not None else auto)
        if i >= 1:  # refuse a nested-repeat bomb after two repetitions, not 100,000 layers
            least = min(least or lw.count - before, lw.count - before)
            if lw.count + least * (times - 1 - i) > MAX_LAYERS:
                raise TooBig(head_loc or loc)
        node.children.append(child)
        out = after(child)
        cur = joined.step(lw, cur, out, child, i) if joined else out
    return finish(node, cur)


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


def schema_props() -> dict[str, Any]:
    """The JSON Schema of each repeat key (the repeat form's and `dense`'s properties)."""
    return {
        "repeat": described(
            "how many times: a whole number or an expression",
            {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_REPEAT}, EXPR]},
            examples=[2, "$n"],
        ),
        "use": described(
            "the template each repetition instantiates (a name, or an expression such as `$block`)",
            {"type": "string"},
            examples=["basic", "$block"],
        ),
        "body": described("the layers each repetition runs (instead of `use`)", REF_ITEM),
        "with": described(
            "template arguments (or `$names` for `body`) for every repetition",
            {"$ref": "#/$defs/args"},
            examples=[{"c": 64}],
        ),
        "first": described(
            "arguments overriding `with` in the first repetition",
            {"$ref": "#/$defs/args"},
            examples=[{"stride": 2}],
        ),
        "at": described(
            "arguments overriding `with` in the repetitions with these indices "
            "(negative ones count from the end)",
            {
                "type": "object",
                "propertyNames": {"pattern": "^-?[0-9]+$"},
                "additionalProperties": {"$ref": "#/$defs/args"},
            },
            examples=[{"1": {"stride": 2}}],
        ),
        "prefix": described(
            "module-name prefix of the repetitions (`block` gives block0, block1, ...)",
            {"type": "string"},
            examples=["denselayer"],
        ),
        "start": described(
            "index of the first repetition in module names",
            {"type": "integer", "minimum": 0},
            examples=[1],
        ),
        "name": NAME,
        "inline": INLINE,
    }
