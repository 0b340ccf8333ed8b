"""The repeat form: `{repeat: N, use: template | body: layers, with, first, at, prefix, start}`.
Each repetition lowers the template (or the layers) with its own arguments; `first` and `at`
override `with` for some repetitions. A combinator built on it (`dense`) joins each
repetition's output to its input with its own `step`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from archspec.ir import SEQ, Node
from archspec.lang.errors import Loc, did_you_mean
from archspec.lang.expr import is_expression
from archspec.lang.source import LMap, loc_of, to_plain
from archspec.lower.core import (
    MAX_LAYERS,
    UNKNOWN,
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
from archspec.lower.templates import DOLLAR_NAME, UNSET, resolve, resolve_or

if TYPE_CHECKING:
    from archspec.lower.walk import Lowerer

REPEAT_KEYS = {"use", "body", "with", "repeat", "first", "at", "prefix", "start", "name", "inline"}
REPEAT_KEYS |= {"rows", "columns", "nest", "names"}  # a stage table (see `_table`)
REPEAT_KEYS.add("when")  # beside any item (walk.py)
MAX_REPEAT = 1024
READERS = ("use", "with", "first", "at", "repeat", "names")  # keys whose `$names` a row feeds


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
    rows = _table(lw, item, loc, env, state) if "rows" in item else None
    times = item.get("repeat", None) if rows is None else sum(len(r.reps) for r in rows)
    if joined and times is None:
        lw.error(
            head_loc or loc,
            "E-MISSING-KEY",
            f"`{what}` needs `repeat`: the number of layers",
            None,
        )
        return lw.dead(loc, state, scope, name)
    rloc = loc_of(item, "repeat", loc)
    if times is not None and rows is None:
        times = resolve_or(lw, times, rloc, env, state, 1)
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_REPEAT:
            lw.error(
                rloc,
                "E-RANGE",
                f"`repeat` must be a whole number from 1 to {MAX_REPEAT}, got {times!r}",
                None,
            )
            times = 1
    uloc = loc_of(item, "use" if uses is not None else "body", loc)
    # Names the repeat's own keys read: a `with` argument or a table column read by `use`,
    # `first`, `at`, `repeat` or `names` is a value for them, not an argument of the template.
    read = set(DOLLAR_NAME.findall(str(to_plain({k: item.get(k) for k in READERS}))))
    deferred = (
        {str(k) for k in args} & set(DOLLAR_NAME.findall(str(uses)))
        if is_expression(uses)
        else set()
    )

    def template(uses: Any, values: dict) -> str | None:
        """`use:` resolved (`use: $block` reads a spec parameter, a `with` argument or a
        column), or None after saying why it names no template."""
        if is_expression(uses):
            uses = resolve_or(lw, uses, uloc, values, state, UNSET)
            if uses is UNSET:
                return None
        if not isinstance(uses, str) or uses not in lw.templates:
            lw.error(
                uloc,
                "E-UNKNOWN-TEMPLATE",
                f"unknown template `{uses}`",
                did_you_mean(str(uses), lw.templates),
            )
            return None
        return uses

    if uses is not None and rows is None and not deferred:
        uses = template(uses, env)
        if uses is None:
            return lw.dead(loc, state, scope, name)

    def one(i: int | None, st: State, sc: Scope, nm: str | None) -> Node:
        call = dict(args)
        rep = reps[i] if rows is not None and i is not None else None
        local = dict(env, i=i if i is not None else 0)
        if rep is not None:
            local.update(rep.row.values, j=rep.j, row=rep.row.index, total=times)
            passed = (
                rep.row.values
                if uses is None
                else {k: v for k, v in rep.row.values.items() if k not in read}
            )
            call.update(passed)
        for key in ("first", "at"):
            over = item.get(key)
            if over is None or i is None:
                continue
            if key == "first":
                if (rep.j if rep is not None else i) == 0:
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
        if uses is not None:
            used = uses
            if is_expression(uses):
                for k in deferred:
                    call.pop(k, None)
                plain = {k: v for k, v in {**args, **(rep.row.values if rep else {})}.items()}
                try:
                    values = {
                        k: resolve(v, loc_of(item, "with", loc), local, st)
                        for k, v in plain.items()
                        if k in read
                    }
                except (Located, Unknown):
                    values = {}
                used = template(uses, {**local, **values})
                if used is None:
                    return lw.dead(loc, st, sc, nm)
            return lw.instantiate(
                used,
                _relocate(call, args, item),
                uloc,
                loc_of(item, "with", loc),
                st,
                local,
                sc,
                nm,
                splice=inline,
                repeated=True,
            )
        # `with` values see the repetition index `$i`, like a template's arguments do; a
        # value that fails reads as unknown in the body instead of as an unknown name.
        scope_env = dict(local)
        located = _relocate(call, args, item)
        for k, v in call.items():
            vloc = located.val_locs.get(k) or loc_of(item, "with", loc)
            scope_env[k] = resolve_or(lw, v, vloc, local, st, UNSET)
        if i is None:  # not repeated: the layers are written where they are used
            return lw.item(body, uloc, st, scope_env, sc, nm, splice=inline)
        with lw.using(sc, nm, inline, uloc):
            return lw.item(body, uloc, st, scope_env, sc, nm, splice=inline)

    reps = [rep for row in rows for rep in row.reps] if rows is not None else []
    if times is None and not joined:
        return one(None, state, scope, name)
    kind = joined.name if joined else SEQ
    node, inner = lw.container(kind, head_loc or loc, state, scope, name, inline)
    prefix = item.get("prefix")
    start = item.get("start", 0)
    start = start if isinstance(start, int) else 0
    nest = bool(item.get("nest", False)) and rows is not None
    cur = state
    least = None  # fewest items a repetition after the first expanded to
    assert times is not None  # a joined repeat without `repeat` returned above
    holder: Node | None = None  # with `nest`, the current row's module
    for i in range(times):
        index = reps[i].j if nest else i
        auto = None if inline and not nest else str(start + index)
        if nest:
            auto = str(index)
            if reps[i].j == 0:
                rname = f"{prefix}{start + reps[i].row.index}" if prefix is not None else None
                if rname is None and not inline:
                    rname = str(start + reps[i].row.index)
                holder, row_scope = lw.container(SEQ, reps[i].row.loc, cur, inner, rname, False)
                node.children.append(holder)
        nm = f"{prefix}{start + i}" if prefix is not None and not nest else auto
        if "names" in item:
            nm = _name(lw, item, loc, dict(env, i=i), reps[i] if rows is not None else None, nm)
        before = lw.count
        child = one(i, cur, row_scope if nest else inner, nm)
        if i >= 1:  # refuse a nested-repeat bomb after two repetitions, not 100,000 layers
            least = min(least or lw.count - before, lw.count - before)
            if lw.count + least * (times - 1 - i) > MAX_LAYERS:
                raise TooBig(head_loc or loc)
        out = after(child)
        if nest and holder is not None:
            holder.children.append(child)
            finish(holder, out)
        else:
            node.children.append(child)
        cur = joined.step(lw, cur, out, child, i) if joined else out
    return finish(node, cur)


@dataclass
class Row:
    """One row of a stage table: its values (by column) and its repetitions."""

    index: int
    values: dict
    loc: Loc
    reps: list[Rep] = field(default_factory=list)


@dataclass
class Rep:
    """One repetition of a table row."""

    row: Row
    j: int  # the repetition's index within its row


def _table(lw: Lowerer, item: dict, loc: Loc, env: dict, state: State) -> list[Row]:
    """`rows` (with `columns` for rows written as lists): each row gives the template's
    arguments (or, for `body`, `$names`), and is repeated by its `repeat` column, else by the
    repeat's own `repeat` (an expression may read the row: `"ceil($n * $depth)"`), else once."""
    rows, cols = item.get("rows"), item.get("columns")
    rloc = loc_of(item, "rows", loc)
    if is_expression(rows):  # `rows: $blocks`: the table is a spec parameter, per variant
        rows = resolve_or(lw, rows, rloc, env, state, UNSET)
        if rows is UNSET:
            return []  # said, or left unknown by an earlier error
    if not isinstance(rows, list) or not rows:
        lw.error(rloc, "E-ROW", "`rows` must be a non-empty list of rows", _ROW_HINT)
        return []
    if cols is not None and (
        not isinstance(cols, list) or not all(isinstance(c, str) for c in cols)
    ):
        lw.error(loc_of(item, "columns", loc), "E-ROW", "`columns` must be a list of names", None)
        cols = None
    out: list[Row] = []
    total = 0
    for r, raw in enumerate(rows):
        at = loc_of(rows, r, rloc)
        if isinstance(raw, list):
            if cols is None or len(raw) != len(cols):
                want = f"{len(cols)} values, one per column" if cols is not None else "`columns`"
                lw.error(
                    at,
                    "E-ROW",
                    f"row {r} has {len(raw)} values; a row written as a list needs {want}",
                    _ROW_HINT,
                )
                continue
            given: Any = LMap(zip(cols, raw, strict=True))
            given.loc, given.key_locs = at, {}
            given.val_locs = {c: loc_of(raw, k, at) for k, c in enumerate(cols)}
        elif isinstance(raw, dict):
            given = raw
        else:
            lw.error(at, "E-ROW", f"row {r} must be a list or a mapping, got {kind_of(raw)}", None)
            continue
        values: dict = {}
        for k, v in given.items():
            values[str(k)] = resolve_or(lw, v, loc_of(given, k, at), env, state, UNSET)
        count: Any = values.pop("repeat", None)
        cloc = loc_of(given, "repeat", at)
        if count is None and "repeat" in item:
            cloc = loc_of(item, "repeat", loc)
            count = resolve_or(lw, item["repeat"], cloc, {**env, **values}, state, None)
        if count is None:
            count = 1
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPEAT:
            lw.error(
                cloc,
                "E-RANGE",
                f"row {r} repeats {count!r} times; it must be a whole number from 1 to {MAX_REPEAT}",
                None,
            )
            count = 1
        total += count
        if total > MAX_LAYERS:
            raise TooBig(rloc)
        row = Row(r, values, at)
        row.reps = [Rep(row, j) for j in range(count)]
        out.append(row)
    return out


_ROW_HINT = "e.g. `columns: [c, repeat, stride]` and `rows: [[16, 1, 1], [24, 2, 2]]`"


def _name(lw: Lowerer, item: dict, loc: Loc, env: dict, rep: Rep | None, default: Any) -> Any:
    """A repetition's module name from `names:` (an expression over `$i`, `$j`, `$row` and the
    row's values, e.g. `"'block' + str($row + 1) + '-' + str($j)"`)."""
    if rep is not None:
        env = {**env, **rep.row.values, "j": rep.j, "row": rep.row.index}
    nloc = loc_of(item, "names", loc)
    value = resolve_or(lw, item["names"], nloc, env, UNKNOWN, UNSET)
    if value is UNSET:
        return default
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        lw.error(nloc, "E-TYPE", f"`names` must give text, got {kind_of(value)}", None)
        return default
    return str(value)


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
        "rows": described(
            "a stage table: one row per group of repetitions, each a mapping or a list (named "
            "by `columns`) of template arguments; a `repeat` column repeats its row",
            {"anyOf": [{"type": "array", "minItems": 1}, EXPR]},
            examples=[[[1, 16, 1, 1], [6, 24, 2, 2]]],
        ),
        "columns": described(
            "names of the values of rows written as lists",
            {"type": "array", "items": {"type": "string"}},
            examples=[["t", "c", "repeat", "s"]],
        ),
        "nest": described(
            "make each row a module of its own, holding its repetitions (EfficientNet's "
            "features.2.0, features.2.1)",
            {"type": "boolean", "default": False},
        ),
        "names": described(
            "an expression naming each repetition (over `$i`, `$j`, `$row` and the columns)",
            {"type": "string"},
            examples=["'block' + str($row + 1) + '-' + str($j)"],
        ),
        "name": NAME,
        "inline": INLINE,
        "when": {"$ref": "#/$defs/when"},
    }
