"""Templates and repeats: what a person writes instead of the same block n times.

Works on the spec's YAML form. Three passes:

1. blocks: a flat layer list cut at its pools into blocks of one repeated unit and the pool
   (VGG's `features`) becomes one inline `repeat` over a block template; a module list of that
   shape ([conv, relu] x n, pool) is written the same way, so sibling blocks agree;
2. templates: module-like items (layer lists, combinators) that are equal up to their numbers
   become one template whose parameters are the numbers that differ, smallest first (so a
   block's template calls the templates of its parts);
3. repeats: a module list of calls to one template becomes `repeat` (with `first:` when only
   the first call differs, `"[...][$i]"` lists when more do).

Every rewrite keeps module names and values exactly: the spec builds the same network."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from archspec.importer.emit import Marker
from archspec.importer.match import DEFAULTS, FAMILIES

COMBS = ("seq", "residual", "parallel", "dense", "aux", "scale", "split")
REPEAT_KEYS = ("repeat", "use", "body", "with", "first", "at", "prefix", "start", "name", "inline")
OPS = set(DEFAULTS) | {
    "adaptive_avgpool", "adaptive_maxpool", "gap", "gmp", "flatten", "sigmoid", "tanh", "gelu",
    "identity", "conv", "linear", "lrn",
}  # fmt: skip
POOLS = ("maxpool", "avgpool")
BASE = {"out": "c", "repeat": "n"}
RESERVED = set(OPS) | set(COMBS) | {"repeat", "body", "use", "with", "params", "name"}


class Table:
    """Template parameters: one per distinct vector of values over the instances."""

    def __init__(self, n: int, skeleton: bool = False):
        self.n = n
        self.skeleton = skeleton
        self.values: dict[str, list[Any]] = {}
        self.care: dict[str, set[int]] = {}  # the instances whose value a parameter holds
        self.mask: list[int] | None = None  # the instances walked now (an optional item's)

    def slot(self, key: str, vals: list[Any]) -> str:
        if self.skeleton:
            return "?"
        at = list(range(self.n)) if self.mask is None else self.mask
        got = dict(zip(at, vals, strict=True))  # the others lack the item: any value will do
        for name, have in self.values.items():
            care = self.care[name]
            if all(_same(have[i], v) for i, v in got.items() if i in care) and (
                self.mask is None
                or care & set(got)
                or len(care) == self.n
                or name.rstrip("0123456789") == BASE.get(key, key)  # parts of one role
            ):
                for i, v in got.items():
                    have[i] = v
                care |= set(got)
                return "$" + name
        base = BASE.get(key, key)
        name, k = base, 1
        while name in self.values:
            k += 1
            name = f"{base}{k}"
        self.values[name] = [got.get(i, vals[0]) for i in range(self.n)]
        self.care[name] = set(got)
        return "$" + name

    def value(self, key: str, vals: list[Any]) -> Any:
        if not self.skeleton and all(v == vals[0] for v in vals):
            return vals[0]
        return self.slot(key, vals)


def item_name(x: Any) -> str | None:
    """The module name an item gives itself (`name:`), if any."""
    if not isinstance(x, dict):
        return None
    if is_repeat(x):
        return x.get("name")
    keys = [k for k in x if k != "when"]
    v = x[keys[0]] if len(keys) == 1 else None
    return v.get("name") if isinstance(v, dict) else None


def _same(a: Any, b: Any) -> bool:
    """Equal values of one type (True is not 1, 1.0 is not 1)."""
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def head(x: Any) -> str | None:
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and len(x) == 1:
        return str(next(iter(x)))
    return None


def is_repeat(x: Any) -> bool:
    return isinstance(x, dict) and any(k in x for k in ("repeat", "use", "body"))


def op_params(x: Any) -> dict:
    if isinstance(x, str):
        return {}
    v = next(iter(x.values()))
    return dict(v) if isinstance(v, dict) else {}


def default(op: str, key: str, params: dict) -> Any:
    if op in POOLS and key == "stride":
        return params.get("k")
    return DEFAULTS.get(op, {}).get(key)


class Walker:
    """Walks instances of one skeleton in step: `item` returns the common body, with the values
    that differ replaced by `$param` (or, for a skeleton, every value replaced by `?`)."""

    def __init__(self, templates: dict, table: Table, optional: bool = False):
        self.templates = templates
        self.t = table
        self.optional = optional  # layer lists may differ by items some instances lack

    def item(self, xs: list[Any]) -> Any:
        x0 = xs[0]
        if isinstance(x0, Marker):
            return f"marker{id(x0)}"
        if isinstance(x0, list):
            if any(not isinstance(x, list) for x in xs):
                raise _Differ
            if (
                self.optional
                and any(len(x) != len(x0) for x in xs)
                or self.optional
                and any(skeleton(x, self.templates) != skeleton(x0, self.templates) for x in xs)
            ):
                return self.aligned(xs)
            if any(len(x) != len(x0) for x in xs):
                raise _Differ
            return [self.item([x[i] for x in xs]) for i in range(len(x0))]
        if is_repeat(x0):
            return self.options("repeat", xs)
        h = head(x0)
        if h is None or any(head(x) != h or is_repeat(x) for x in xs):
            raise _Differ
        if h in COMBS:
            vals = [x[h] if isinstance(x, dict) else None for x in xs]
            if h == "aux" and all(isinstance(v, list) for v in vals):
                return {h: self.item(vals)}
            return {h: self.options(h, vals)}
        params = [op_params(x) for x in xs]
        names = [p.pop("name", None) for p in params]
        if any(n != names[0] for n in names):
            raise _Differ
        out: dict[str, Any] = {}
        if h in self.templates and not self.t.skeleton:
            given = template_defaults(self.templates[h])
            params = [given | p for p in params]
            order = list((self.templates[h] or {}).get("params") or {})
            keys = sorted(
                dict.fromkeys(k for p in params for k in p),
                key=lambda k: order.index(k) if k in order else len(order),
            )
            if any(set(p) != set(keys) for p in params):
                raise _Differ
            for k in keys:
                v = self.t.value(k, [p[k] for p in params])
                if k not in given or v != given[k]:
                    out[k] = v
        elif not self.t.skeleton:
            keys = list(dict.fromkeys(k for p in params for k in p))
            for k in keys:
                vals = [p.get(k, default(h, k, p)) for p in params]
                v = self.t.value(k, vals)
                if v != default(h, k, params[0]) or isinstance(v, str) and v.startswith("$"):
                    out[k] = v
        if names[0] is not None:
            out["name"] = names[0]
        return {h: out} if out else h

    def aligned(self, xs: list[list[Any]]) -> list[Any]:
        """Layer lists that differ by items some of them lack (an expansion only where the
        ratio is not 1, a squeeze-and-excitation only in some blocks): the items of all, in
        order, each one the others lack written with `when: $has_...` (a bool parameter)."""
        keys = [[skeleton(y, self.templates) or f"?{id(y)}" for y in x] for x in xs]
        slots, where = supersequence(keys)
        first = {k: xs[i][where[i].index(k)] for i in range(len(xs)) for k in where[i]}
        names = [n for n in (item_name(first[k]) for k in range(len(slots))) if n is not None]
        if len(names) != len(set(names)):
            raise _Differ  # one module that differs inside, not items some lack
        common = sum(all(k in w for w in where) for k in range(len(slots)))
        if not common or len(slots) - common > common + 1:
            raise _Differ  # lists that share little: different modules, not optional items
        out: list[Any] = []
        for k in range(len(slots)):
            have = [i for i, w in enumerate(where) if k in w]
            items = [xs[i][where[i].index(k)] for i in have]
            if len(have) == len(xs):
                out.append(self.item(items))
                continue
            outer = self.t.mask
            self.t.mask = [outer[i] for i in have] if outer is not None else have
            try:
                body = self.item(items)
            finally:
                self.t.mask = outer
            flags = [i in have for i in range(len(xs))]
            label = head(items[0]) or "item"
            definition = self.templates.get(label)
            if isinstance(definition, dict) and "body" not in definition:  # its combinator
                label = next((k for k in definition if k != "params"), label)
            flag = self.t.slot(f"has_{label}", flags)
            if isinstance(body, str):
                body = {body: {}}
            if not isinstance(body, dict) or "when" in body:
                raise _Differ
            out.append({"when": flag} | body)
        return out

    def options(self, h: str, vs: list[Any]) -> Any:
        if any(not isinstance(v, dict) for v in vs):
            if all(v == vs[0] for v in vs) and not isinstance(vs[0], (dict, list)):
                return vs[0]
            if all(isinstance(v, list) for v in vs):
                return self.item(vs)
            raise _Differ
        keys = list(dict.fromkeys(k for v in vs for k in v))
        out: dict[str, Any] = {}
        for k in keys:
            if k == "projection":  # only used where auto projects: any instance's options
                if not self.t.skeleton:
                    out[k] = next(v[k] for v in vs if k in v)
                continue
            if any(k not in v for v in vs):
                raise _Differ
            vals = [v[k] for v in vs]
            if k in ("main", "layers", "post", "body", "aux", "by"):
                out[k] = (
                    self.item(vals)
                    if not isinstance(vals[0], str) or vals[0] in OPS or (vals[0] in self.templates)
                    else self.literal(vals)
                )
            elif k == "shortcut":
                out[k] = self.literal(vals) if isinstance(vals[0], str) else self.item(vals)
            elif k == "branches":
                if isinstance(vals[0], dict):
                    if any(not isinstance(v, dict) or list(v) != list(vals[0]) for v in vals):
                        raise _Differ
                    out[k] = {b: self.item([v[b] for v in vals]) for b in vals[0]}
                else:
                    out[k] = self.item(vals)
            elif k == "repeat":
                out[k] = self.t.value("repeat", vals)
            elif k in ("with", "first"):
                if any(set(v) != set(vals[0]) for v in vals):
                    raise _Differ
                out[k] = {a: self.t.value(a, [v[a] for v in vals]) for a in vals[0]}
            else:
                out[k] = self.literal(vals)
        return out

    def literal(self, vals: list[Any]) -> Any:
        if any(json.dumps(v, default=str) != json.dumps(vals[0], default=str) for v in vals):
            raise _Differ
        return vals[0]


class _Differ(Exception):
    pass


def supersequence(seqs: list[list[str]]) -> tuple[list[str], list[list[int]]]:
    """The shortest common supersequence, built one sequence at a time (longest common
    subsequence, matched from the end: an item some lack is taken to be the earlier one, as an
    expansion layer at a block's start), and where each sequence's items sit in it."""
    merged = list(seqs[0])
    where = [list(range(len(merged)))]
    for seq in seqs[1:]:
        n, m = len(merged), len(seq)
        dp = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(n):
            for j in range(m):
                dp[i + 1][j + 1] = (
                    dp[i][j] + 1 if merged[i] == seq[j] else max(dp[i][j + 1], dp[i + 1][j])
                )
        steps: list[tuple[int | None, int | None]] = []  # (merged index, seq index), from the end
        i, j = n, m
        while i or j:
            if i and j and merged[i - 1] == seq[j - 1] and dp[i][j] == dp[i - 1][j - 1] + 1:
                steps.append((i - 1, j - 1))
                i, j = i - 1, j - 1
            elif i and (not j or dp[i - 1][j] >= dp[i][j - 1]):
                steps.append((i - 1, None))
                i -= 1
            else:
                steps.append((None, j - 1))
                j -= 1
        steps.reverse()
        new_of = {a: k for k, (a, _) in enumerate(steps) if a is not None}
        merged = [merged[a] if a is not None else seq[b] for a, b in steps]  # type: ignore[index]
        where = [[new_of[a] for a in w] for w in where]
        where.append([k for k, (_, b) in enumerate(steps) if b is not None])
    return merged, where


def skeleton(x: Any, templates: dict) -> str | None:
    try:
        return json.dumps(Walker(templates, Table(1, skeleton=True)).item([x]), default=str)
    except _Differ:
        return None


def leaves(x: Any, templates: dict) -> int:
    """Ops and template calls inside an item."""
    if isinstance(x, str):
        return 1 if x in OPS or x in templates else 0
    if isinstance(x, list):
        return sum(leaves(y, templates) for y in x)
    if isinstance(x, dict):
        if len(x) == 1 and (head(x) in OPS or head(x) in templates):
            return 1
        return sum(leaves(v, templates) for v in x.values())
    return 0


# ------------------------------------------------------------------------------ positions


def module_slots(doc: dict) -> list[tuple[Any, Any]]:
    """(container, key) of every item that is a module of its own (a template candidate)."""
    out: list[tuple[Any, Any]] = []

    def visit_item(container: Any, key: Any, in_list: bool = True) -> None:
        x = container[key]
        if isinstance(x, list):
            out.append((container, key))
            for i in range(len(x)):
                visit_item(x, i)
        elif isinstance(x, dict):
            h = head(x)
            if is_repeat(x):
                body = x.get("body")
                if x.get("inline") and isinstance(body, list):  # spliced: not a module
                    for i in range(len(body)):
                        visit_item(body, i)
                elif isinstance(body, (list, dict)):
                    visit_item(x, "body")
                return
            if h in COMBS:
                out.append((container, key))
                visit_opts(x[h], h)

    def visit_opts(v: Any, h: str) -> None:
        if h == "aux" and isinstance(v, list):
            for i in range(len(v)):
                visit_item(v, i)
            return
        if not isinstance(v, dict):
            return
        for k in ("main", "layers", "by"):
            if isinstance(v.get(k), list):
                for i in range(len(v[k])):
                    visit_item(v[k], i)
        for k in ("post", "body"):
            if isinstance(v.get(k), (dict, list)):
                visit_item(v, k)
        if isinstance(v.get("shortcut"), (dict, list)):
            visit_item(v, "shortcut")
        br = v.get("branches")
        if isinstance(br, dict):
            for b in br:
                visit_item(br, b)
        elif isinstance(br, list):
            for b in br:  # flat branches: layer lists, not modules
                if isinstance(b, list):
                    for i in range(len(b)):
                        visit_item(b, i)

    stages = doc["stages"]
    for k in list(stages):
        visit_item(stages, k)
    return out


def candidate(x: Any, templates: dict) -> bool:
    if isinstance(x, list):
        if len(x) < 2 or not any(
            head(y) in OPS or isinstance(y, dict) and head(y) in COMBS for y in x
        ):
            return False  # a list of template calls is a repeat, not a template
    elif not (isinstance(x, dict) and head(x) in COMBS):
        return False
    elif isinstance(x[head(x)], dict) and x[head(x)].get("inline"):
        return False  # part of a module's layers, not a module
    elif head(x) != "seq":  # a residual around one block is a block (MobileNetV3's)
        return leaves(x, templates) >= 1
    return leaves(x, templates) >= 2


def own_name(x: Any) -> tuple[Any, str | None]:
    """An instance without its own module name, and that name."""
    if isinstance(x, dict) and head(x) in COMBS:
        h = head(x)
        v = x[h]
        if isinstance(v, dict) and "name" in v:
            v = {k: y for k, y in v.items() if k != "name"}
            name = x[h]["name"]
            if h == "seq":
                return v["layers"], name
            return {h: v}, name
        if h == "seq":
            return v["layers"], None
    return x, None


# ------------------------------------------------------------------------------ passes


def templatize(doc: dict, classes: dict[int, str] | None = None) -> None:
    classes = classes or {}
    templates: dict[str, Any] = doc.setdefault("templates", {})
    blocks(doc, templates)
    numbered: set[str] = set()  # names given a number because the class's name was taken
    while make_template(doc, templates, classes, numbered):
        pass
    repeats(doc, templates)
    inline_single_use(doc, templates)
    renumber(doc, templates, numbered)
    if not templates:
        del doc["templates"]
    else:  # templates before stages
        stages = doc.pop("stages")
        doc.pop("templates")
        doc["templates"] = templates
        doc["stages"] = stages


def make_template(
    doc: dict, templates: dict, classes: dict[int, str], numbered: set[str] | None = None
) -> bool:
    """Turn the smallest group of equal-but-for-numbers modules into a template."""
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for container, key in module_slots(doc):
        x = container[key]
        if not candidate(x, templates):
            continue
        bare, _ = own_name(x)
        sk = skeleton(bare, templates)
        if sk is not None:
            groups.setdefault(sk, []).append((container, key))

    def size(g: list[tuple[Any, Any]]) -> tuple[int, int, int]:
        xs = [c[k] for c, k in g]
        return max(leaves(x, templates) for x in xs), max(nodes(x) for x in xs), -len(g)

    kin = [(size(g), 0, g) for g in kindred(groups, classes)]
    order = []
    for g in groups.values():
        if len(g) < 2:
            continue
        key = (size(g), 0)
        for kkey, _, k in kin:  # a kindred group goes before the groups of its members
            if all(any(c is c2 and x == x2 for c2, x2 in k) for c, x in g):
                key = max(key, (kkey, 1))
        order.append((key, False, g))
    best = sorted(order + [((k, o), True, g) for k, o, g in kin], key=lambda t: t[0])
    return any(apply_template(group, templates, classes, opt, numbered) for _, opt, group in best)


def nodes(x: Any) -> int:
    """Items, lists and mappings inside an item: which of two groups holds the other."""
    if isinstance(x, list):
        return 1 + sum(nodes(y) for y in x)
    if isinstance(x, dict):
        return 1 + sum(nodes(y) for y in x.values())
    return 1


def kindred(groups: dict[str, list[tuple[Any, Any]]], classes: dict[int, str]) -> list[list]:
    """Instances of one module class (and name) whose layer lists differ by optional items
    (torchvision's Conv2dNormActivation with and without its activation, MBConv's block with
    and without its expansion): one group each, for a template with `when:` items."""
    by: dict[tuple[str, Any], list[tuple[str, tuple[Any, Any]]]] = {}
    for sk, g in groups.items():
        for c, k in g:
            x = c[k]
            cls = classes.get(id(x), "")
            cls = FAMILIES.get(cls, cls)
            _, name = own_name(x)
            if cls in ("Sequential", "ModuleList"):  # a container: the same one in each block
                if name is not None:
                    by.setdefault((cls, name), []).append((sk, (c, k)))
            elif cls:
                by.setdefault((cls, None), []).append((sk, (c, k)))
    return [[s for _, s in g] for g in by.values() if len({sk for sk, _ in g}) > 1]


def apply_template(
    group: list[tuple[Any, Any]],
    templates: dict,
    classes: dict[int, str],
    optional: bool = False,
    numbered: set[str] | None = None,
) -> bool:
    items = [c[k] for c, k in group]
    bares = [own_name(x) for x in items]
    table = Table(len(items))
    try:
        body = Walker(templates, table, optional).item([b for b, _ in bares])
    except _Differ:
        return False
    cls = Counter(classes.get(id(x), "") for x in items).most_common(1)[0][0]
    names = {name for _, name in bares}
    if cls in ("", "Sequential", "ModuleList") and len(names) == 1 and names != {"layers"}:
        cls = next(iter(names)) or cls  # containers named alike: ConvNeXt's `block`, `mlp_layer`
    tname = template_name(cls, templates, numbered)
    params: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for p, vals in table.values.items():
        params[p] = _type(vals)
        common, count = Counter(json.dumps(v) for v in vals).most_common(1)[0]
        value = json.loads(common)
        channels = p == "c" or p.startswith("c") and p[1:].isdigit()
        if (
            count >= 2
            and 2 * count > len(vals)
            and not isinstance(value, (list, dict))
            and not channels
        ):
            defaults[p] = value
            kind = params[p]
            ok = kind == _type([value]) or kind == "float" and isinstance(value, float)
            params[p] = value if ok else {"type": kind, "default": value}
    definition: dict[str, Any] = {}
    if params:
        definition["params"] = params
    if isinstance(body, dict) and head(body) in COMBS:
        definition.update(body)
    else:
        definition["body"] = body
    templates[tname] = definition
    for i, ((container, key), (_, name)) in enumerate(zip(group, bares)):
        args = {
            p: vals[i]
            for p, vals in table.values.items()
            if p not in defaults or vals[i] != defaults[p]
        }
        if name is not None:
            args["name"] = name
        container[key] = {tname: args} if args else tname
    return True


def _type(vals: list[Any]) -> str:
    if all(isinstance(v, bool) for v in vals):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "int"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "float"
    return "any"


def template_name(cls: str, templates: dict, numbered: set[str] | None = None) -> str:
    base = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls).lower().strip("_")
    base = re.sub(r"\W", "_", base)
    if not base or base in ("sequential", "module_list") or not base[0].isalpha():
        base = "block"
    name, k = base, 1
    while name in templates or name in RESERVED:
        k += 1
        name = f"{base}{k}"
    if k > 1 and numbered is not None:
        numbered.add(name)
    return name


# ------------------------------------------------------------------------------ VGG blocks


def unit_form(lst: list[Any]) -> tuple[list[Any], int] | None:
    """lst = P * k + [pool], P repeated exactly: (P, k)."""
    if len(lst) < 2 or head(lst[-1]) not in POOLS or any(not plain(x) for x in lst):
        return None
    body = lst[:-1]
    for p in range(1, len(body) + 1):
        if len(body) % p:
            continue
        unit = body[:p]
        if any(head(x) in POOLS for x in unit):
            continue
        if all(body[i : i + p] == unit for i in range(0, len(body), p)):
            return unit, len(body) // p
    return None


def plain(x: Any) -> bool:
    """An op written without a name (its module takes its position)."""
    return head(x) in OPS and not (isinstance(x, dict) and "name" in op_params(x))


def blocks(doc: dict, templates: dict) -> None:
    """VGG's layout: flat lists of blocks (conv, relu) * n + pool, or one module per block."""
    lists = [c[k] for c, k in module_slots(doc) if isinstance(c[k], list)]
    # module lists that are one block each: written as an inline repeat of the unit + the pool
    forms = [(lst, unit_form(lst)) for lst in lists]
    shapes = {skeleton(f[0], templates) for _, f in forms if f is not None and f[1] >= 2}
    for lst, f in forms:
        if f is not None and skeleton(f[0], templates) in shapes:
            unit, n = f
            pool = lst[-1]
            lst[:] = [{"repeat": n, "inline": True, "body": unit}, pool]
    for lst in lists:
        split_blocks(lst, templates)


def split_blocks(lst: list[Any], templates: dict) -> None:
    cuts = [i for i, x in enumerate(lst) if plain(x) and head(x) in POOLS]
    if len(cuts) < 2 or any(not plain(x) for x in lst[: cuts[-1] + 1]):
        return
    segments, start = [], 0
    for c in cuts:
        segments.append(lst[start : c + 1])
        start = c + 1
    forms = [unit_form(s) for s in segments]
    # the longest run of segments from the start that share a shape, with a real repetition
    run = 0
    while run < len(forms) and forms[run] is not None:
        run += 1
    if run < 2:
        return
    found = [f for f in forms[:run] if f is not None]
    sk = [
        f"{skeleton(f[0], templates)}{skeleton(s[-1], templates)}" for f, s in zip(found, segments)
    ]
    while run >= 2 and len(set(sk[:run])) != 1:
        run -= 1
    if run < 2 or max(f[1] for f in found[:run]) < 2:
        return
    bodies = [
        [{"repeat": f[1], "inline": True, "body": f[0]}, s[-1]]
        for f, s in zip(found[:run], segments)
    ]
    table = Table(run)
    try:
        body = Walker(templates, table).item(bodies)
    except _Differ:
        return
    tname = template_name("block", templates)
    templates[tname] = {"params": {p: _type(v) for p, v in table.values.items()}, "body": body}
    if not table.values:
        del templates[tname]["params"]
    call: dict[str, Any] = {"repeat": run, "inline": True, "use": tname}
    if table.values:
        call["with"] = {p: per_index(v) for p, v in table.values.items()}
    end = cuts[run - 1] + 1
    lst[:end] = [call]


def per_index(vals: list[Any]) -> Any:
    """The value of repetition $i: one value, a cycle (`"[0, 3][$i % 2]"`, Swin's shifts), a
    ramp (`"0.1 * ($i + 3) / 17"`, stochastic depth growing with the block's index over the
    network, computed as torchvision computes it), else a list."""
    if all(v == vals[0] for v in vals):
        return vals[0]
    for period in range(2, len(vals) // 2 + 1):
        if all(v == vals[i % period] for i, v in enumerate(vals)):
            return f"{json.dumps(vals[:period])}[$i % {period}]"
    return ramp(vals) or f"{json.dumps(vals)}[$i]"


def ramp(vals: list[Any]) -> str | None:
    """`P * ($i + b) / D` giving exactly these floats (P a short decimal), or None."""
    if len(vals) < 2 or not all(isinstance(v, float) for v in vals) or vals[1] <= vals[0]:
        return None
    step = vals[1] - vals[0]
    b = round(vals[0] / step)
    found = []
    for d in range(1, 4096):
        p = float(f"{step * d:.6g}")
        if all(p * (b + i) / d == v for i, v in enumerate(vals)):
            found.append((len(repr(p)), d, p))
    if not found:
        return None
    _, d, p = min(found)  # the shortest P: 0.1 * $i / 5 rather than 0.02 * $i / 1
    return f"{p!r} * {f'($i + {b})' if b else '$i'}{f' / {d}' if d > 1 else ''}"


def expressible(v: Any) -> bool:
    """Within the expression language's limits (300 characters, lists of 16)."""
    return not isinstance(v, str) or len(v) <= 300 and not (v.startswith("[") and v.count(",") > 15)


# ------------------------------------------------------------------------------ repeats


def repeats(doc: dict, templates: dict) -> None:
    for container, key in module_slots(doc):
        x = container[key]
        named = None
        if isinstance(x, dict) and head(x) == "seq" and isinstance(x["seq"], dict):
            named = x["seq"].get("name")
            if set(x["seq"]) - {"name", "layers"}:
                continue
            x = x["seq"]["layers"]
        if not isinstance(x, list) or not x:
            continue
        maybe = [call_of(y, templates) for y in x]
        calls = [c for c in maybe if c is not None]
        if len(calls) != len(maybe) or len({c[0] for c in calls}) != 1:
            continue
        numbered = numbering([c[1].pop("name", None) for c in calls])
        if numbered is None:
            continue
        rep = as_repeat(calls, template_defaults(templates[calls[0][0]]))
        if rep is None:
            continue
        rep |= numbered
        if named is not None:
            rep["name"] = named
        container[key] = rep


def call_of(x: Any, templates: dict) -> tuple[str, dict] | None:
    h = head(x)
    if h is None or h not in templates:
        return None
    return h, op_params(x)


def numbering(names: list[str | None]) -> dict[str, Any] | None:
    """Module names of a repeat's calls -> its `prefix` and `start` (`{}`: positions; None:
    names a repeat cannot give, e.g. RegNet's `block2-0, block2-1` are prefix `block2-`)."""
    if all(n is None for n in names):
        return {}
    found = re.match(r"^(.*?)(\d+)$", names[0] or "")
    if found is None:
        return None
    prefix, start = found.group(1), int(found.group(2))
    if names != [f"{prefix}{start + i}" for i in range(len(names))]:
        return None
    return {"prefix": prefix} | ({"start": start} if start else {})


def template_defaults(definition: Any) -> dict[str, Any]:
    out = {}
    for p, decl in ((definition or {}).get("params") or {}).items():
        if isinstance(decl, dict) and "default" in decl:
            out[p] = decl["default"]
        elif not isinstance(decl, str):
            out[p] = decl
    return out


def as_repeat(calls: list[tuple[str, dict]], defaults: dict[str, Any]) -> dict | None:
    """Calls of one template -> a repeat: `with` the arguments they share, `first` where only
    the first call differs (a stride, a projection), per-repetition lists (`"[...][$i]"`)
    where more do."""
    tname = calls[0][0]
    keys = list(dict.fromkeys(k for _, a in calls for k in a))
    if any(k not in defaults and k not in a for _, a in calls for k in keys):
        return None
    args = [{k: a.get(k, defaults.get(k)) for k in keys} for _, a in calls]
    rep: dict[str, Any] = {"repeat": len(calls), "use": tname}
    ramps = len(calls) == 2 and any(ramp([a[k] for a in args]) for k in keys)
    with_: dict[str, Any] = {}
    first: dict[str, Any] = {}
    for k in keys:
        vals = [a[k] for a in args]
        rest = vals[1:] or vals
        if all(v == rest[0] for v in rest) and not (ramps and vals[0] != rest[0]):
            if k not in defaults or rest[0] != defaults[k]:
                with_[k] = rest[0]
            if vals[0] != rest[0]:
                first[k] = vals[0]
        elif (len(calls) < 3 and not ramps) or any(
            isinstance(v, (bool, str, list, dict)) for v in vals
        ):
            return None  # two calls that differ in several ways read better as they are
        else:  # (two whose values ramp make a repeat per stage, like their siblings)
            with_[k] = per_index(vals)
            if not expressible(with_[k]):
                return None
    if len(calls) == 2 and len(first) > 1:
        return None
    if with_:
        rep["with"] = with_
    if first:
        rep["first"] = first
    return rep


# ------------------------------------------------------------------------------ single use


def inline_single_use(doc: dict, templates: dict) -> None:
    """A template called once, from another template's body, with its parameters handed on
    (`block: {c: $c, k: $k, name: block}`) is written in place (`seq: {name: block, layers:
    ...}`), as a person writes MBConv's `block` inside `mbconv`."""
    while True:
        uses: Counter[str] = Counter()
        for definition in [*templates.values(), doc["stages"]]:
            _count_uses(definition, templates, uses)
        for t, definition in templates.items():
            if uses[t] != 1:
                continue
            for other in templates.values():
                if other is not definition and _inline_in(other, t, definition):
                    del templates[t]
                    break
            else:
                continue
            break
        else:
            return


def _count_uses(x: Any, templates: dict, uses: Counter) -> None:
    if isinstance(x, list):
        for y in x:
            if isinstance(y, str) and y in templates:  # a call by name alone
                uses[y] += 1
            _count_uses(y, templates, uses)
    elif isinstance(x, dict):
        for k, v in x.items():
            if k in templates:
                uses[k] += 1
            if k in ("use", "post", "body") and isinstance(v, str) and v in templates:
                uses[v] += 1
            _count_uses(v, templates, uses)


def _inline_in(x: Any, t: str, definition: dict) -> bool:
    """Replace the call of `t` inside `x` (a template's definition) by its body."""
    if isinstance(x, list):
        for i, y in enumerate(x):
            if isinstance(y, dict) and [k for k in y if k != "when"] == [t]:
                body = _expanded(definition, y[t] if isinstance(y[t], dict) else {})
                if body is None or "when" in y and not isinstance(body, dict):
                    return False
                x[i] = {"when": y["when"]} | body if "when" in y else body
                return True
            if _inline_in(y, t, definition):
                return True
    elif isinstance(x, dict):
        return any(_inline_in(v, t, definition) for v in x.values())
    return False


def _expanded(definition: dict, args: dict) -> Any:
    args = dict(args)
    name = args.pop("name", None)
    values = template_defaults(definition) | args
    declared = (definition.get("params") or {}).keys()
    if set(values) != set(declared):
        return None

    def sub(v: Any) -> Any:
        if isinstance(v, str) and "$" in v:
            if v[1:] not in values or not v.startswith("$"):
                raise _Differ
            return values[v[1:]]
        if isinstance(v, list):
            return [sub(y) for y in v]
        if isinstance(v, dict):
            return {k: sub(y) for k, y in v.items()}
        return v

    try:
        if "body" in definition:
            body = sub(definition["body"])
            if not isinstance(body, list) or any(
                isinstance(y, dict) and "when" in y and not isinstance(y["when"], str) for y in body
            ):
                return None
            return {"seq": {"name": name, "layers": body}} if name is not None else body
        ((comb, opts),) = ((k, v) for k, v in definition.items() if k != "params")
        opts = sub(opts)
    except (_Differ, ValueError):
        return None
    return {comb: ({"name": name} if name is not None else {}) | opts}


def renumber(doc: dict, templates: dict, numbered: set[str]) -> None:
    """`conv2d_norm_activation2` -> `conv2d_norm_activation` where the template without the
    number is gone (inlined): the names the reader sees are the modules' classes."""
    names: dict[str, str] = {}
    for t in [t for t in templates if t in numbered]:
        base = t.rstrip("0123456789")
        if base != t and base not in templates and base not in RESERVED | set(names.values()):
            names[t] = base
    if not names:
        return

    def rename(x: Any) -> Any:
        if isinstance(x, list):
            return [names.get(y, y) if isinstance(y, str) else rename(y) for y in x]
        if isinstance(x, dict):
            return {
                names.get(k, k): (
                    names.get(v, v)
                    if k in ("use", "post", "body") and isinstance(v, str)
                    else rename(v)
                )
                for k, v in x.items()
            }
        return x

    renamed = {names.get(t, t): rename(d) for t, d in templates.items()}
    templates.clear()
    templates.update(renamed)
    doc["stages"] = rename(doc["stages"])
