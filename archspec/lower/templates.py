"""Templates, spec parameters and `$` expressions: a template call binds its typed parameters
(checked against their declarations, defaults filled in) and lowers the template's body with
them; `resolve` evaluates the expressions inside a value against those bindings and `$in`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from archspec.ir import Node
from archspec.lang.errors import Loc, Problem, did_you_mean
from archspec.lang.expr import Shape as ExprShape
from archspec.lang.expr import check_dims, evaluate, is_expression
from archspec.lang.source import LMap, loc_of, to_plain
from archspec.lower.core import UNKNOWN, Located, Scope, State, Unknown, kind_of

if TYPE_CHECKING:
    from archspec.lower.walk import Lowerer

TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "list": list, "any": object}
DOLLAR_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
UNSET = object()  # a template parameter an earlier error left without a value: reading it is silent
_REQUIRED = object()


def resolve(value: Any, loc: Loc, env: dict, state: State) -> Any:
    """Evaluate expressions inside a value. Raises Located on the first failure, Unknown when
    it reads what an earlier error left unknown."""
    if isinstance(value, dict):
        return {k: resolve(v, loc_of(value, k, loc), env, state) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, loc_of(value, i, loc), env, state) for i, v in enumerate(value)]
    if is_expression(value):
        scope = dict(env)
        if state.shape is not None:
            scope["in"] = ExprShape(state.shape)
        elif "$in" in value:  # still said: a syntax error or a name no shape would give
            try:
                check_dims(value)
                for name in DOLLAR_NAME.findall(value):
                    if name != "in":
                        evaluate(f"${name}", scope)
            except Problem as p:
                raise Located(loc, p) from None
            raise Unknown()
        if any(scope.get(n) is UNSET for n in DOLLAR_NAME.findall(value)):
            raise Unknown()  # an earlier error left this parameter without a value
        try:
            return evaluate(value, scope)
        except Problem as p:
            raise Located(loc, p) from None
    return value


def resolve_or(lw: Lowerer, value: Any, loc: Loc, env: dict, state: State, default: Any) -> Any:
    """`resolve`, saying its error where it fails; `default` when it fails or reads what an
    earlier error left unknown (that error was said already)."""
    try:
        return resolve(value, loc, env, state)
    except Located as e:
        lw.out.problem(e.loc, e.problem)
    except Unknown:
        pass
    return default


def instantiate(
    lw: Lowerer,
    tname: str,
    args: Any,
    key_loc: Loc,
    args_loc: Loc,
    state: State,
    env: dict,
    scope: Scope,
    name: str | None,
    splice: bool = False,
    repeated: bool = False,
) -> Node:
    """A call of template `tname` with `args` (a repeat's `with`, when `repeated`, else the
    mapping of an op-style call)."""
    template = lw.templates[tname]
    tloc = loc_of(lw.templates, tname, key_loc)
    if tname in lw.stack:
        chain = " -> ".join([*lw.stack[lw.stack.index(tname) :], tname])
        lw.error(
            key_loc,
            "E-TEMPLATE-RECURSION",
            f"template `{tname}` uses itself ({chain})",
            "a template may not contain itself, directly or through another template",
        )
        return lw.dead(key_loc, state, scope, name)
    if not isinstance(template, dict):
        lw.error(
            tloc,
            "E-TEMPLATE",
            f"template `{tname}` must be a mapping with `params` and `body`",
            None,
        )
        return lw.dead(key_loc, state, scope, name)
    declared = template.get("params") or {}
    local = dict(lw.globals)
    local["i"] = env.get("i", 0)
    for rep in ("j", "row", "total"):  # a table repeat's indices (repeat.py)
        if rep in env:
            local[rep] = env[rep]
    message = "template `{what}` has no parameter `{key}`"
    ok = lw.options(args, args_loc, declared, tname, "E-TEMPLATE-ARG", message)
    for p, decl in declared.items():
        ploc = loc_of(declared, p, tloc)
        tdecl, spec = _declaration(decl)
        if tdecl is not None and tdecl not in TYPES:
            lw.error(
                ploc,
                "E-TEMPLATE",
                f"parameter `{p}` of `{tname}` has unknown type `{tdecl}`",
                did_you_mean(str(tdecl), TYPES) or "types: " + ", ".join(TYPES),
            )
            tdecl = "any"
        required = spec is _REQUIRED
        if p in args:
            aloc = loc_of(args, p, args_loc)
            value = resolve_or(lw, args[p], aloc, env, state, UNSET)
            if value is UNSET:
                ok, local[p] = False, UNSET
                continue
            want = (
                TYPES[tdecl]
                if tdecl
                else (TYPES["float"] if isinstance(spec, float) else type(spec))
            )
            if not _isinstance(value, want):
                tn = tdecl or type(spec).__name__
                lw.error(
                    aloc,
                    "E-TYPE",
                    f"parameter `{p}` of `{tname}` must be {tn}, got {kind_of(value)}",
                    f"declared at line {ploc.line}",
                )
                ok, value = False, UNSET  # said once here, not again wherever it is read
            local[p] = value
        elif required:
            lw.error(
                key_loc,
                "E-TEMPLATE-ARG-MISSING",
                f"template `{tname}` needs parameter `{p}` ({tdecl})",
                f"pass it with `with: {{{p}: ...}}`"
                if repeated
                else f"pass it in the call: `{tname}: {{{p}: ...}}`",
            )
            ok, local[p] = False, UNSET
        else:
            # an error is said (once swallowed: `$d` then read as the text "$c + 1")
            local[p] = resolve_or(lw, spec, ploc, local, state, UNSET)
    body_key = "body" if "body" in template else next((k for k in template if k != "params"), None)
    extra = [k for k in template if k not in ("params", body_key)]
    for k in extra:
        lw.error(
            loc_of(template, k, tloc, key_loc=True),
            "E-TEMPLATE",
            f"template `{tname}` has more than one body (`{body_key}` and `{k}`)",
            None,
        )
    if body_key is None:
        lw.error(tloc, "E-TEMPLATE", f"template `{tname}` has no body", "add `body: [...]`")
        return lw.dead(key_loc, state, scope, name)
    body = template[body_key] if body_key == "body" else LMap({body_key: template[body_key]})
    if body_key != "body":
        body.loc = loc_of(template, body_key, tloc, key_loc=True)
        body.key_locs = {body_key: body.loc}
        body.val_locs = {body_key: loc_of(template, body_key, tloc)}
    bloc = loc_of(template, body_key, tloc)
    if not ok:
        state = UNKNOWN
    lw.stack.append(tname)
    try:
        with lw.using(scope, name, splice, key_loc):
            return lw.item(body, bloc, state, local, scope, name, splice=splice)
    finally:
        lw.stack.pop()


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
            lw.globals[str(pname)] = resolve(
                to_plain(value), loc_of(given, pname, fallback), lw.globals, UNKNOWN
            )
        except Located as e:
            lw.out.problem(e.loc, e.problem)
        except Unknown:
            lw.error(
                loc_of(given, pname, fallback),
                "E-EXPR-NAME",
                f"spec parameter `{pname}` cannot read `$in`",
                "`$in` exists inside layers only",
            )
