"""Expressions in specs: `$c * 4`, `$in.c // 2`, `max($c // 8, 1)`.

Parsed with Python's `ast` in "eval" mode and walked by a tiny interpreter that knows only a
whitelisted grammar — arithmetic, comparisons, a conditional, a few pure functions, and
`$name` / `$in.c` lookups. Nothing is ever handed to `eval`, and every result is bounded.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from archspec.lang.errors import Problem, did_you_mean

MAX_LEN = 300
MAX_MAGNITUDE = 10**15

_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def make_divisible(v: float, divisor: float, min_value: float | None = None) -> int:
    """torchvision's `_make_divisible` (MobileNet, EfficientNet, MnasNet, RegNet): `v` rounded
    to the nearest multiple of `divisor`, at least `min_value` (default: `divisor`), and never
    more than 10% below `v`."""
    if isinstance(divisor, float) and divisor.is_integer():
        divisor = int(divisor)
    if not isinstance(divisor, int) or divisor < 1:
        raise ValueError("the divisor must be a positive integer")
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


_FUNCS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "int": int,
    "round": round,
    "abs": abs,
    "ceil": math.ceil,
    "floor": math.floor,
    "make_divisible": make_divisible,
    "str": str,
}


class Shape:
    """`$in` inside expressions: `.c`, `.h`, `.w` for images, `.l`, `.d` for tokens, `.f` for
    flat features."""

    def __init__(self, dims: tuple[int, ...]):
        self.dims = dims

    def attr(self, name: str) -> int:
        table = _DIMS[len(self.dims)]
        if name not in table:
            raise Problem(
                "E-EXPR-NAME",
                f"`$in.{name}` does not exist for an input of shape {list(self.dims)}",
                _dim_hint(name, table),
            )
        return self.dims[table[name]]


_DIMS = {3: {"c": 0, "h": 1, "w": 2}, 2: {"l": 0, "d": 1}, 1: {"f": 0, "c": 0}}
_IN_ATTR = re.compile(r"\$in\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def _dim_hint(name: str, table: Iterable[str]) -> str | None:
    """`ch`, `channels`, `height`, `width`: the dimension a word starts with, else the nearest."""
    first = [d for d in table if d == name[:1].lower()]
    return f"did you mean `{first[0]}`?" if first else did_you_mean(name, table)


def check_dims(text: str) -> None:
    """Refuse a syntax error or a `$in.x` that no input has, while the input's shape is unknown
    (an earlier error left it so): they are wrong whatever the shape turns out to be."""
    _parse(text)  # a syntax error first, as evaluating would say it
    every = {d for table in _DIMS.values() for d in table}
    for name in _IN_ATTR.findall(text):
        if name not in every:
            raise Problem(
                "E-EXPR-NAME",
                f"`$in.{name}` does not exist: `$in` has `.c`, `.h`, `.w` (an image), `.l`, `.d` "
                "(tokens) or `.f` (features)",
                _dim_hint(name, sorted(every)),
            )


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


_MEMO: dict[tuple, Any] = {}  # (text, the values it reads) -> a number or string it gave
_SCALARS = (int, float, bool, str, type(None))


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    """Evaluate one expression string. Raises Problem with an E-EXPR-* code.

    Pure: the same text over the same values gives the same result, so a scalar result is kept
    (a template's expressions are evaluated again at each use, mostly with the same values)."""
    key: tuple | None = (text,)
    for name in _VAR.findall(text):
        v = env.get(name, _MEMO)
        if isinstance(v, _SCALARS):
            key += (name, type(v), v)  # type: ignore[operator]  # 1, 1.0 and True differ
        elif isinstance(v, Shape):
            key += (name, Shape, v.dims)  # type: ignore[operator]
        else:  # a list, or unknown: not kept
            key = None
            break
    if key is not None:
        hit = _MEMO.get(key, _MEMO)
        if hit is not _MEMO:
            return hit
    value = _evaluate(text, env)
    if key is not None and isinstance(value, _SCALARS):
        if len(_MEMO) > 10_000:
            _MEMO.clear()
        _MEMO[key] = value
    return value


def _evaluate(text: str, env: Mapping[str, Any]) -> Any:
    tree = _parse(text)
    if isinstance(tree, str):  # `$c` alone may name any value, lists included
        return _lookup(tree, env)
    return _Eval(env, text).run(tree.body)


def _parse(text: str) -> ast.Expression | str:
    """The syntax tree of an expression, or the name of a lone `$name`."""
    if len(text) > MAX_LEN:
        raise Problem("E-EXPR-SYNTAX", f"expression longer than {MAX_LEN} characters", None)
    stripped = text.strip()
    whole = _VAR.fullmatch(stripped)
    if whole:
        return whole.group(1)
    py = _VAR.sub(lambda m: "__v_" + m.group(1), stripped)
    if "$" in py:
        raise Problem(
            "E-EXPR-SYNTAX", f"`$` must be followed by a name in `{text}`", "write `$name`"
        )
    try:
        return ast.parse(py, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise Problem("E-EXPR-SYNTAX", f"cannot parse expression `{text}`", None) from None


def _lookup(name: str, env: Mapping[str, Any]) -> Any:
    if name not in env:
        raise Problem(
            "E-EXPR-NAME",
            f"unknown name `${name}`",
            did_you_mean(name, [str(k) for k in env if not str(k).startswith("_")]),
        )
    return env[name]


class _Eval:
    def __init__(self, env: Mapping[str, Any], text: str):
        self.env = env
        self.text = text
        self.steps = 0

    def fail(self, message: str, help: str | None = None) -> Problem:
        return Problem("E-EXPR-SYNTAX", f"{message} in `{self.text}`", help)

    def run(self, node: ast.AST) -> Any:
        self.steps += 1
        if self.steps > 500:
            raise self.fail("expression too complex")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, int, float)) and not isinstance(node.value, complex):
                return self.bounded(node.value)
            if isinstance(node.value, str):
                return node.value
            raise self.fail(f"constant `{node.value!r}` is not allowed")
        if isinstance(node, ast.Name):
            if node.id.startswith("__v_"):
                return _lookup(node.id[4:], self.env)
            raise self.fail(
                f"bare name `{node.id}` is not allowed",
                f"parameters are written with a dollar sign: `${node.id}`",
            )
        if isinstance(node, ast.Attribute):
            base = self.run(node.value)
            if isinstance(base, Shape):
                return base.attr(node.attr)
            raise self.fail(f"attribute `.{node.attr}` is not allowed", "only `$in.c/h/w/f`")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self.run(node.left)
            if isinstance(left, str):  # joining text: a module name such as `block1-0`
                right = self.run(node.right)
                if not isinstance(right, str):
                    raise Problem(
                        "E-EXPR-TYPE",
                        f"cannot add {type(right).__name__} to text in `{self.text}`",
                        "turn a number into text with `str(...)`",
                    )
                if len(left) + len(right) > MAX_LEN:
                    raise self.fail("text too long")
                return left + right
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            left, right = self.number(node.left), self.number(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
                raise self.fail("exponent too large")
            try:
                return self.bounded(_BIN[type(node.op)](left, right))
            except ZeroDivisionError:
                raise Problem("E-EXPR-DIV0", f"division by zero in `{self.text}`", None) from None
            except (OverflowError, ValueError) as e:
                raise self.fail(f"arithmetic error ({e})") from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            v = self.run(node.operand)
            if isinstance(node.op, ast.Not):
                return not v
            v = self.number(node.operand) if not isinstance(v, (int, float)) else v
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP:
            left, right = self.run(node.left), self.run(node.comparators[0])
            try:
                return _CMP[type(node.ops[0])](left, right)
            except TypeError:  # `'a' < 1`, `$in < 1`: was an uncaught TypeError (internal error)
                raise Problem(
                    "E-EXPR-TYPE",
                    f"cannot compare {type(left).__name__} with {type(right).__name__} in `{self.text}`",
                    None,
                ) from None
        if isinstance(node, ast.BoolOp):
            vals = [self.run(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.IfExp):
            return self.run(node.body) if self.run(node.test) else self.run(node.orelse)
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > 16:
                raise self.fail("list too long")
            return [self.run(e) for e in node.elts]
        if isinstance(node, ast.Subscript):
            seq = self.run(node.value)
            idx = self.run(node.slice)
            if isinstance(seq, list) and isinstance(idx, int) and -len(seq) <= idx < len(seq):
                return seq[idx]
            raise self.fail("bad index")
        if isinstance(node, ast.Call):
            if (
                isinstance(node.func, ast.Name)
                and node.func.id in _FUNCS
                and not node.keywords
                and 1 <= len(node.args) <= 8
            ):
                args = [self.number(a) for a in node.args]
                try:
                    return self.bounded(_FUNCS[node.func.id](*args))
                except (TypeError, ValueError, OverflowError) as e:
                    raise self.fail(f"bad call ({e})") from None
            name = ast.unparse(node.func).replace("__v_", "$")[:60]  # not "this": say what
            raise self.fail(
                f"call to `{name}` is not allowed", "functions: " + ", ".join(sorted(_FUNCS))
            )
        raise self.fail(f"`{type(node).__name__}` is not allowed")

    def number(self, node: ast.AST) -> int | float:
        v = self.run(node)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Problem(
                "E-EXPR-TYPE", f"expected a number in `{self.text}`, got {type(v).__name__}", None
            )
        return v

    def bounded(self, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                raise self.fail("result is not finite")
            if abs(v) > MAX_MAGNITUDE:
                raise self.fail(f"result exceeds {MAX_MAGNITUDE:.0e}")
        return v
