"""References to earlier outputs: `from: [a, b]` (with `merge: concat | add | mul`) on any item,
an op parameter that names an output (`upsample: {size_of: enc2}`), and top-level `outputs:`.

A name is a module path, looked up from the module the item registers on outward: `up` beside
it, then `dec3.up` in the enclosing module, ..., up to a stage name (`enc2`) or a full path
(`encoder.layer3`). `in` is the item's incoming tensor. Only outputs already computed can be
read: a later layer, or a module that contains the reader, is refused (E-REF-FORWARD), an
unknown name too (E-REF-UNKNOWN, with did-you-mean).

A merge of tensors whose sizes differ is refused at the `from:` key with the sizes each source
gives and the input sizes that would fit: every state carries a trace of size functions from
the network input (`State.trace`), replayed here for other input sizes.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from archspec.ir import IN, JOIN, LAYER, Network, Node
from archspec.lang.errors import Loc, Problem, did_you_mean
from archspec.lang.source import loc_of, without
from archspec.lower.combinators.base import JOINS
from archspec.lower.core import UNKNOWN, Scope, State, common_grid, finish, join, kind_of
from archspec.lower.templates import UNSET, resolve_or
from archspec.ops import Shape, fmt

if TYPE_CHECKING:
    from archspec.lower.walk import Lowerer

ITEM_KEYS = ("from", "merge")  # keys any item mapping may carry beside its op
MAX_FIT = 4096  # input sizes tried when saying which sizes fit


# --------------------------------------------------------------------------- the registry


def register(lw: Lowerer, node: Node) -> None:
    """Make a finished node's output referable by its module path (modules only: an inline
    composite has no path of its own)."""
    if node.name in ("", "?") or (node.kind not in (LAYER, JOIN) and node.inline):
        return
    if node.kind == LAYER and node.op == "?":
        return
    lw.named.setdefault(node.path, node)


def register_tree(lw: Lowerer, node: Node) -> None:
    """Register a lowered subtree (a stage a cache handed back without walking it)."""
    for n in _forward(node):
        register(lw, n)


def lookup(lw: Lowerer, ref: str, scope: Scope) -> Node | None:
    """The output `ref` names, seen from `scope`: the innermost enclosing module first."""
    return _find(lw.named, ref, scope.path)


def _find(table: dict[str, Any], ref: str, at: str) -> Any:
    """`table[path]` for the path `ref` names from module `at` (None: no such path)."""
    prefix = at
    while True:
        found = table.get(join(prefix, ref))
        if found is not None or not prefix:
            return found
        prefix = prefix.rpartition(".")[0]


def reference(
    lw: Lowerer, ref: Any, loc: Loc, scope: Scope, env: dict, state: State
) -> Node | None:
    """Resolve one reference (an expression such as `$skip` is evaluated first); None when it
    does not resolve now — the error is given at the end of the walk, when a forward reference
    can be told from an unknown name."""
    ref = resolve_or(lw, ref, loc, env, state, UNSET)
    if ref is UNSET:
        return None
    if not isinstance(ref, str) or not ref:
        lw.error(loc, "E-TYPE", f"a reference names an earlier output, got {kind_of(ref)}", None)
        return None
    lw.ref_reads += 1
    node = lookup(lw, ref, scope)
    if node is None:
        lw.pending.append((loc, ref, scope.path, len(lw.named), lw.out.context))
    return node


def unresolved(lw: Lowerer) -> None:
    """The references that did not resolve when read: later outputs, or unknown names."""
    for loc, ref, at, seen, use in lw.pending:
        node = lookup(lw, ref, Scope(at))
        if node is not None:
            if at == node.path or at.startswith(node.path + "."):
                msg = f"`{ref}` contains this layer: its output is not computed yet here"
            else:
                msg = f"`{ref}` is computed after this layer (line {node.loc.line})"
            lw.error(
                loc, "E-REF-FORWARD", msg, "a layer can read only outputs computed before it", use
            )
            continue
        gone = _find(lw.left_out, ref, at)  # an item a false `when` left out
        if gone is not None:
            lw.error(
                loc,
                "E-REF-UNKNOWN",
                f"no output named `{ref}` here: its `when` (line {gone.line}) is false",
                "give this item a `when` too (and another item for the other case), or read "
                "another output",
                use,
            )
            continue
        known = visible(lw, at, seen)
        hint = did_you_mean(ref, known)
        if hint is None:
            near = ", ".join(known[:6])
            hint = f"earlier outputs seen from here: {near}" if near else None
        lw.error(loc, "E-REF-UNKNOWN", f"no output named `{ref}`", hint, use)


def visible(lw: Lowerer, at: str, seen: int | None = None) -> list[str]:
    """The outputs a reference from module `at` can read (the first `seen` registered: those
    computed before it), each by the shortest name that reaches it, the nearest first."""
    earlier = dict(list(lw.named.items())[:seen])
    rank: dict[str, tuple[int, int]] = {}
    for order, (path, node) in enumerate(earlier.items()):
        if at == path or at.startswith(path + "."):
            continue  # a module that contains the reader (E-REF-FORWARD)
        prefix = at
        while prefix and not path.startswith(prefix + "."):
            prefix = prefix.rpartition(".")[0]
        name = path[len(prefix) + 1 :] if prefix else path
        # a nearer namesake may hide it; siblings first, then the enclosing modules', the
        # latest first
        if _find(earlier, name, at) is node:
            rank[name] = (-(prefix.count(".") + 1 if prefix else 0), -order)
    return sorted(rank, key=rank.__getitem__)


# --------------------------------------------------------------------------- `from:` on an item


def lower_from(
    lw: Lowerer, item: dict, loc: Loc, state: State, env: dict, scope: Scope, name: str | None
) -> Node:
    """An item with `from:`: it reads the merge of the named outputs instead of its incoming
    tensor. Without an op it is the merge itself (a JOIN node, no module)."""
    floc = loc_of(item, "from", loc, key_loc=True)
    vloc = loc_of(item, "from", loc)
    raw = item["from"]
    if isinstance(raw, str) and raw != IN:  # `from: $skips` may give a list
        raw = resolve_or(lw, raw, vloc, env, state, [])
    refs = raw if isinstance(raw, list) else [raw]
    how = item.get("merge", "concat")
    if how not in JOINS:
        lw.error(
            loc_of(item, "merge", loc),
            "E-TYPE",
            f"merge must be one of {', '.join(JOINS)}, got `{how}`",
            None,
        )
        how = "concat"
    if not refs:
        lw.error(vloc, "E-ITEM", "`from` needs at least one output name", "e.g. `from: [in, enc2]`")
    paths: list[str] = []
    sources: list[tuple[str, State]] = []
    written: dict[str, str] = {}  # a name given by an expression -> the expression (`$skip`)
    for i, ref in enumerate(refs):
        rloc = loc_of(raw, i, vloc) if isinstance(raw, list) else vloc
        text = ref
        ref = resolve_or(lw, ref, rloc, env, state, UNSET)
        if ref == IN:
            paths.append(IN)
            sources.append((IN, state))
            continue
        node = reference(lw, ref, rloc, scope, env, state) if ref is not UNSET else None
        if node is None:
            sources.append((str(ref), UNKNOWN))
            continue
        if isinstance(text, str) and text != ref:
            written[str(ref)] = text
        paths.append(node.path)
        sources.append((str(ref), getattr(node, "_state", UNKNOWN)))
    merged = merge_states(lw, how, sources, floc, written)
    rest = without(item, *ITEM_KEYS)
    rest.loc = getattr(item, "loc", loc)
    if set(rest) - {"name"}:
        node = lw.item(rest, loc, merged, env, scope, name)
    else:
        if "name" in rest:
            name = lw.claim(scope, lw.item_name(rest, loc, env, None), floc, numbered=False)
        node = Node(JOIN, name or "", join(scope.path, name) if name else "", floc, state.shape)
        finish(node, merged)
    node.reads, node.join = paths, how
    return node


def merge_states(
    lw: Lowerer, how: str, sources: list[tuple[str, State]], loc: Loc, written: dict[str, str]
) -> State:
    """The shape rule of a merge: `concat` joins channels of equal height and width, `add`
    needs equal shapes, `mul` broadcasts (a size-1 dimension stretches). Sizes that differ
    only in height and width depend on the input size: the walk goes on as if they agreed and
    `finish_merges` reports them, with the input sizes at which every merge agrees. `written`
    maps a source named by an expression to the expression, for the fix the help suggests."""
    if any(s.shape is None for _, s in sources):
        return UNKNOWN
    if len(sources) == 1:
        return sources[0][1]
    shapes: list[Shape] = [s.shape for _, s in sources]  # type: ignore[misc]
    rf = tuple(max(s.rf[i] for _, s in sources) for i in (0, 1))
    jump = tuple(max(s.jump[i] for _, s in sources) for i in (0, 1))
    first = sources[0][1]
    images = all(len(sh) == 3 for sh in shapes) and how != "mul"
    if images:
        lw.merges += [(first, s) for _, s in sources[1:]]
    try:
        out = merged_shape(how, shapes)
    except ValueError:
        (a, sa), (b, sb) = _disagreeing(how, sources)
        assert sa.shape is not None and sb.shape is not None
        if not images or (how == "add" and sa.shape[0] != sb.shape[0]):
            _refuse(lw, how, (a, sa), (b, sb), loc)
            return UNKNOWN
        lw.mismatches.append((loc, how, (a, sa), (b, sb), written, lw.out.context))
        out = merged_shape(how, [(sh[0], *shapes[0][1:]) for sh in shapes])
    grid = common_grid([s for _, s in sources if s.shape == out])
    return State(out, rf, jump, first.trace, grid)  # type: ignore[arg-type]


def merged_shape(how: str, shapes: list[Shape]) -> Shape:
    """The merged shape; ValueError when the shapes cannot be merged that way."""
    if len({len(s) for s in shapes}) != 1:
        raise ValueError("ranks differ")
    if how == "concat":
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError("sizes differ")
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    if how == "add":
        if len(set(shapes)) != 1:
            raise ValueError("shapes differ")
        return shapes[0]
    out = []
    for dims in zip(*shapes, strict=True):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise ValueError("shapes do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


CODES = {"concat": "E-MERGE-CONCAT", "add": "E-MERGE-ADD", "mul": "E-MERGE-MUL"}
LABEL = {IN: "the incoming tensor"}


def _refuse(lw: Lowerer, how: str, a: tuple[str, State], b: tuple[str, State], loc: Loc) -> None:
    """Shapes no input size can reconcile: rank or channels."""
    (an, sa), (bn, sb) = a, b
    want = {
        "concat": "equal height and width",
        "add": "equal shapes",
        "mul": "shapes that broadcast",
    }
    msg = (
        f"`{how}` needs {want[how]}, but {LABEL.get(an, an)} gives {fmt(sa.shape or ())} "
        f"and {LABEL.get(bn, bn)} gives {fmt(sb.shape or ())}"
    )
    hint = None
    if how != "concat" and len(sa.shape or ()) == len(sb.shape or ()) == 3:
        assert sa.shape is not None and sb.shape is not None
        if sa.shape[1:] == sb.shape[1:]:
            hint = "give both the same channels (a 1x1 conv)"
        else:
            hint = "give both the same shape: " + _projection(an, sa.shape, bn, sb.shape)
    elif how != "concat":
        hint = "give both the same shape"
    lw.error(loc, CODES[how], msg, hint)


def _projection(an: str, a: Shape, bn: str, b: Shape) -> str:
    """How a 1x1 conv makes the larger of two images the other's shape (`a 1x1 conv with
    stride 2 on x`), or that sizes which no stride divides need resizing."""
    big, small, name = (a, b, an) if a[1] >= b[1] else (b, a, bn)
    stride = [big[i] // small[i] if small[i] and big[i] % small[i] == 0 else 0 for i in (1, 2)]
    if 0 in stride:
        return "resize one to the other (`upsample`, `crop`, `pad`) and match the channels"
    s = stride[0] if stride[0] == stride[1] else stride
    where = LABEL.get(name, f"`{name}`")
    return f"a 1x1 conv with {small[0]} channels and stride {s} on {where}"


def finish_merges(lw: Lowerer) -> None:
    """Report merges whose heights and widths differ at this input size. When some input sizes
    make every merge of the network agree, the first mismatch says which (the others are the
    same mistake); otherwise each is reported."""
    if not lw.mismatches:
        return
    c, h, w = lw.spec.input
    fit = fitting(lw.merges, (h, w))
    for loc, how, (a, sa), (b, sb), written, use in lw.mismatches[: 1 if fit else None]:
        msg = (
            f"input {h}x{w}: {LABEL.get(a, a)} gives {fmt(sa.shape[1:])} "
            f"but {LABEL.get(b, b)} gives {fmt(sb.shape[1:])}"
        )
        if fit:
            words, (nh, nw) = fit
            msg += f"; {words}"
            hint = f"use such a size (--input {c},{nh},{nw}), or make the sizes agree"
        else:
            hint = "make the sizes agree"
        lw.error(loc, CODES[how], msg, f"{hint}: {_resize(a, sa, b, sb, written)}", use)


def _resize(a: str, sa: State, b: str, sb: State, written: dict[str, str]) -> str:
    """A fix that makes two merged images the same size: resize the incoming tensor to the
    other source before the merge, or read a resized copy of the second source."""
    if b == IN:  # the incoming tensor is resized to the other source
        a, sa, b, sb = b, sb, a, sa
    have, want = sa.shape, sb.shape
    assert have is not None and want is not None
    to = written.get(b, b)
    here = f" (`{b}` here)" if to != b else ""
    grow = have[1] <= want[1] and have[2] <= want[2]
    ops = (
        [f"`upsample: {{size_of: {to}}}`", f"`pad: {{to: {to}}}`"]
        if grow
        else [f"`crop: {{to: {to}}}`", f"`upsample: {{size_of: {to}}}`"]
    )
    if a == IN:
        return f"put {ops[0]} or {ops[1]}{here} before this item"
    src = written.get(a, a)
    copy = f"{a.rpartition('.')[2]}_resized"
    return (
        f"resize `{a}` to `{b}` before this item, `{{upsample: {{size_of: {to}}}, from: {src}, "
        f"name: {copy}}}`{here}, and read `{copy}` instead"
    )


def _disagreeing(how: str, sources: list[tuple[str, State]]) -> list[tuple[str, State]]:
    first = sources[0]
    for other in sources[1:]:
        try:
            merged_shape(how, [first[1].shape, other[1].shape])  # type: ignore[list-item]
        except ValueError:
            return [first, other]
    return sources[:2]


# --------------------------------------------------------------------------- which sizes fit


def step(fn: Any, state: State) -> Any:
    """Extend `state`'s trace by a size function `fn((h, w), input_hw) -> (h, w)`."""
    return (state.trace, fn)


def size_at(trace: Any, hw0: tuple[int, int], memo: dict | None = None) -> tuple[int, ...] | None:
    """Replay a trace for network input size `hw0`; None when some layer refuses that size.
    `memo` (per input size) shares the replay of common prefixes between traces."""
    memo = {} if memo is None else memo
    steps = []
    while trace is not None and id(trace) not in memo:
        steps.append(trace)
        trace = trace[0]
    hw: tuple[int, ...] | None = hw0 if trace is None else memo[id(trace)]
    for node in reversed(steps):
        if hw is not None:
            try:
                hw = node[1](hw, hw0)
            except (Problem, ValueError, ZeroDivisionError, TypeError, KeyError):
                hw = None
        memo[id(node)] = hw
    return hw


def fitting(
    merges: list[tuple[State, State]], hw0: tuple[int, int]
) -> tuple[str, tuple[int, int]] | None:
    """The input sizes at which every merge's two sides agree, in words, and the nearest such
    size; None when none is found (or a trace does not replay to the shape the walk inferred,
    as a plugin combinator that drops traces would make it)."""
    memo: dict = {}
    for a, b in merges:
        for s in (a, b):
            if s.shape is None or size_at(s.trace, hw0, memo) != tuple(s.shape[1:]):
                return None
    h, w = hw0
    square = h == w
    dims = [("sizes", 0)] if square else [("heights", 0), ("widths", 1)]
    words, best = [], [h, w]
    for what, axis in dims:
        now = hw0[axis]
        ok = []
        for n in range(1, min(MAX_FIT, 2 * max(h, w) + 64) + 1):
            at = (n, n) if square else ((n, w) if axis == 0 else (h, n))
            memo = {}
            sides = [(size_at(a.trace, at, memo), size_at(b.trace, at, memo)) for a, b in merges]
            if all(x is not None and y is not None and x[axis] == y[axis] for x, y in sides):
                ok.append(n)
        if now in ok:
            continue  # this dimension is not at fault
        if not ok:
            return None
        text, nearest = _describe(what, ok, now)
        words.append(text)
        if square:
            best = [nearest, nearest]
        else:
            best[axis] = nearest
    if not words:
        return None
    return "; ".join(words), (best[0], best[1])


def _describe(what: str, ok: list[int], n: int) -> tuple[str, int]:
    """`sizes divisible by 32 fit (e.g. 96 or 128)`, and the fitting size nearest to `n`."""
    near = sorted(sorted(ok, key=lambda v: (abs(v - n), v))[:2])
    eg = " or ".join(str(v) for v in near)
    nearest = min(ok, key=lambda v: (abs(v - n), v))
    fits, lo, hi = set(ok), ok[0], max(ok[-1], n)
    for m in range(2, (hi - lo) // 2 + 1):  # the fitting sizes repeat every m
        if all((v in fits) == (v + m in fits) for v in range(lo, hi - m + 1)):
            r = min(v % m for v in ok)  # the simplest family (0: the multiples of m)
            family = [v for v in ok if v % m == r]
            near = sorted(sorted(family, key=lambda v: (abs(v - n), v))[:2])
            nearest = min(family, key=lambda v: (abs(v - n), v))
            eg = " or ".join(str(v) for v in near)
            if r == 0:
                return f"{what} divisible by {m} fit (e.g. {eg})", nearest
            return f"{what} {r} more than a multiple of {m} fit (e.g. {eg})", nearest
    return f"{what} {eg} fit", nearest


# --------------------------------------------------------------------------- outputs


def outputs(lw: Lowerer, net: Network, spec_outputs: Any, loc: Loc, given: Any) -> None:
    """Resolve `outputs:` (or build's `outputs=`), then cut every layer after the last one."""
    if given is not None:
        raw = given
        where = lambda i: loc
    else:
        raw = spec_outputs
        where = lambda i: loc_of(spec_outputs, i, loc)
    if raw is None:
        return
    pairs = list(raw.items()) if isinstance(raw, dict) else [(r, r) for r in raw]
    if not pairs:
        lw.error(loc, "E-OUTPUTS", "`outputs` names no output", "list layer or stage names")
        return
    keys = set()
    for i, (key, ref) in enumerate(pairs):
        at = where(key if isinstance(raw, dict) else i)
        node = lw.named.get(str(ref)) if isinstance(ref, str) else None
        if node is None:
            hint = did_you_mean(str(ref), lw.named) if isinstance(ref, str) else None
            lw.error(at, "E-OUTPUTS", f"no layer or stage named `{ref}` to output", hint)
            continue
        if str(key) in keys:
            lw.error(at, "E-OUTPUTS", f"output `{key}` is named twice", None)
            continue
        keys.add(str(key))
        net.outputs.append((str(key), node.path))
    if len(net.outputs) == len(pairs):
        cut(net)


def cut(net: Network) -> None:
    """Drop what the outputs do not need: auxiliary heads, and every layer after the last
    output (in each enclosing chain; inside a residual or parallel block nothing is cut)."""
    from archspec.ir import AUX
    from archspec.lower.combinators import COMBINATORS

    wanted = {p for _, p in net.outputs}
    order = {id(n): i for i, n in enumerate(_forward(net.root))}
    last = max((net.named[p] for p in wanted), key=lambda n: order[id(n)])
    net.root.children = [s for s in net.root.children if s.kind != AUX]
    path = _ancestry(net.root, last)
    for parent, child in itertools.pairwise(path):
        if parent is net.root or COMBINATORS[parent.kind].chain:
            i = next(i for i, c in enumerate(parent.children) if c is child)
            parent.children = parent.children[: i + 1]
            if parent is not net.root:
                finish(parent, getattr(child, "_state", UNKNOWN))
    keep = {id(n) for n in _forward(net.root)}
    net.named = {p: n for p, n in net.named.items() if id(n) in keep}
    net.root.out_shape = net.named[net.outputs[-1][1]].out_shape


def _forward(node: Node) -> list[Node]:
    """Every node, each after its parts (the order outputs are computed in)."""
    out: list[Node] = []
    for part in node.parts():
        out += _forward(part)
    out.append(node)
    return out


def _ancestry(root: Node, target: Node) -> list[Node]:
    if root is target:
        return [root]
    for part in root.parts():
        found = _ancestry(part, target)
        if found:
            return [root, *found]
    return []


__all__ = ["ITEM_KEYS", "lower_from", "outputs", "reference", "register", "size_at", "step"]
