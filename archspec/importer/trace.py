"""Trace a module with torch.fx and recover the spec's structure from the graph.

The graph is flat (one node per leaf module call or functional op); every node carries the stack
of modules it was called in (`nn_module_stack`). Each module is rebuilt from the nodes inside it:
its direct children and its own functional ops form a small graph of *units*, which is read as a
chain of layers where every fork rejoins at an `add` (a residual, or a parallel that adds) or a
`torch.cat` (a parallel that concatenates, or a dense block). Anything else — a tensor used by
two layers that never rejoin, a shared module with weights, an op without an archspec op — is an
`Unsupported` at its module path, never a guess."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from archspec.importer import match
from archspec.importer.match import Unsupported
from archspec.lower.core import NAME_RE
from archspec.lower.walk import RESERVED


class Located(Exception):
    """An Unsupported with the module path where it happened."""

    def __init__(self, path: str, what: str, why: str = ""):
        super().__init__(f"{path or '<model>'} ({what})")
        self.path = path or "<model>"
        self.what = what
        self.why = why


@dataclass
class It:
    """One item of the recovered structure (before names are settled and YAML is written)."""

    kind: str  # op | list | residual | parallel | dense | scale | split | marker
    name: str | None = None  # wanted module name, relative to the enclosing module; None: any
    op: str = ""
    params: dict = field(default_factory=dict)
    items: list[It] = field(default_factory=list)  # list layers, residual main, dense body (1)
    shortcut: Any = "identity"  # identity | auto | It
    projection: dict | None = None
    post: It | None = None
    branches: list[list[It]] = field(default_factory=list)
    keys: list[str] | None = None  # branch names of a parallel of whole modules
    merge: str = "concat"
    inline: bool = False
    repeat: int = 0
    prefix: str | None = None
    start: int = 0
    text: str = ""  # marker: what could not be expressed
    cls: str = ""  # the class of the module it came from (names its template)
    in_c: int | None = None  # residual: channels before and after (to decide `shortcut: auto`)
    out_c: int | None = None
    path: str = ""  # the module's path in the model (a module's item)
    keeps: bool | None = None  # the module's output has its input's shape


@dataclass
class Unit:
    """A module call (or functional op) of the traced graph, with its graph nodes."""

    key: str
    path: str  # module path; "" for a functional op
    nodes: list[fx.Node]
    module: nn.Module | None = None
    ins: list[fx.Node] = field(default_factory=list)
    out: fx.Node | None = None


class _Tracer(fx.Tracer):
    """torch.nn modules are leaves (archspec ops, or unsupported ones such as nn.LSTM); user
    modules and containers are traced through. A failure names the module it happened in."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return type(m).__module__.startswith("torch.nn") or match.is_leaf(m)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Located:
            raise
        except Exception as e:  # noqa: BLE001  # any failure inside user code: located here
            path = self.path_of_module(m)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise Located(path, match.module_name(m), f"cannot trace: {msg}") from None


def trace(model: nn.Module, shape: tuple[int, ...], batch: int = 1) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Located:
        raise
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Located("", type(model).__qualname__, f"cannot trace: {msg}") from None
    gm = fx.GraphModule(tracer.root, graph)
    x = torch.randn(batch, *shape)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(x)
    except Exception as e:  # noqa: BLE001
        cause = e.__cause__ or e
        msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise Located(
            "", type(model).__qualname__, f"does not run on an input of {list(shape)}: {msg}"
        ) from None
    return gm


def is_tensor(n: Any) -> bool:
    """A tensor, or a tuple of them (nn.LSTM's output: read only to say it is unsupported)."""
    if not isinstance(n, fx.Node):
        return False
    meta = n.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):  # a NamedTuple itself
        return True
    if isinstance(meta, (tuple, list)):
        return any(isinstance(m, TensorMetadata) for m in meta)
    return isinstance(meta, TensorMetadata)


def shape_of(n: fx.Node) -> tuple[int, ...]:
    return tuple(n.meta["tensor_meta"].shape)


def stack_of(n: fx.Node) -> list[tuple[str, str]]:
    """(call key, module path) of every module the node runs in, outermost first."""
    return [(k, v[0]) for k, v in (n.meta.get("nn_module_stack") or {}).items()]


def has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters()) or any(True for _ in m.buffers())


class Recover:
    """Rebuild the It tree of a traced model."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, partial: bool):
        self.gm = gm
        self.model = model
        self.partial = partial
        self.problems: list[Located] = []
        self.users: dict[fx.Node, int] = {}
        self.called: set[str] = set()

    # ---------------------------------------------------------------- scopes and units

    def units(self, nodes: list[fx.Node], depth: int) -> list[Unit]:
        units: dict[str, Unit] = {}
        for n in nodes:
            st = stack_of(n)
            if len(st) <= depth:
                units[n.name] = Unit(n.name, "", [n])
            else:
                key, path = st[depth]
                if key not in units:
                    units[key] = Unit(key, path, [], self.model.get_submodule(path))
                units[key].nodes.append(n)
        for u in units.values():
            inside = set(u.nodes)
            for n in u.nodes:
                for a in n.all_input_nodes:
                    if a not in inside and is_tensor(a) and a not in u.ins and not _owns(u, a):
                        u.ins.append(a)
            outs = [n for n in u.nodes if any(x not in inside for x in n.users)]
            if u.path:
                self.called.add(u.path)
            if len(outs) > 1:
                raise Located(u.path, self.what(u), "returns more than one tensor")
            u.out = outs[0] if outs else None
        return list(units.values())

    def what(self, u: Unit) -> str:
        if u.module is not None:
            return match.module_name(u.module)
        n = u.nodes[0]
        return match.describe(n.target)

    def located(self, scope: str, u: Unit, e: Unsupported) -> Located:
        path = u.path or scope
        return Located(path, e.what if not u.path else self.what(u), e.why)

    def fail(self, err: Located) -> It:
        if not self.partial:
            raise err
        self.problems.append(err)
        return It("marker", text=f"cannot express {err.path} ({err.what})")

    # ---------------------------------------------------------------- the walk

    def root(self) -> list[It]:
        nodes = [
            n
            for n in self.gm.graph.nodes
            if n.op in ("call_module", "call_function", "call_method")
        ]
        x = next(n for n in self.gm.graph.nodes if n.op == "placeholder")
        out = next(n for n in self.gm.graph.nodes if n.op == "output").args[0]
        if not is_tensor(out):
            raise Located("", type(self.model).__qualname__, "returns more than one tensor")
        return group_dotted(dense_steps(self.scope("", nodes, 0, x, out)))

    def scope(
        self, path: str, nodes: list[fx.Node], depth: int, entry: fx.Node, exit_: fx.Node
    ) -> list[It]:
        units = self.units(nodes, depth)
        producer = {u.out: u for u in units if u.out is not None}
        users: dict[fx.Node, int] = {}
        for u in units:
            if u.out is not None and not is_tensor(u.out):
                continue  # x.size(0) and the like: read by a flatten, not a layer
            for a in u.ins:
                users[a] = users.get(a, 0) + 1
        # tensors the module holds (get_attr), maybe expanded: read by the learnable tensor ops
        attrs = {a for u in units for a in u.ins if a.op == "get_attr"}
        for u in units:
            if not u.path and u.ins and u.out is not None and all(a in attrs for a in u.ins):
                attrs.add(u.out)
        # immediate dominators of values (unit outputs), from the scope's entry
        idom: dict[fx.Node, fx.Node] = {entry: entry}
        depth_of: dict[fx.Node, int] = {entry: 0}
        for u in units:
            if u.out is None or not is_tensor(u.out) or u.out in attrs:
                continue
            ins = [a for a in u.ins if a not in attrs]
            parents = [a for a in ins if a in idom]
            if not parents or len(parents) != len(ins):
                continue
            d = parents[0]
            for p in parents[1:]:
                d = self._lca(d, p, idom, depth_of)
            idom[u.out] = d if len(parents) > 1 else parents[0]
            depth_of[u.out] = depth_of[idom[u.out]] + 1
        ctx = _Ctx(path, depth, units, producer, users, idom, depth_of, set(), attrs)
        items = self.chain(ctx, entry, exit_, top=True)
        for u in units if not ctx.failed else ():  # what a failure left out is no 2nd problem
            if (
                u.key not in ctx.seen
                and u.out is not None
                and is_tensor(u.out)
                and u.out is not entry
            ):
                raise Located(
                    u.path or path, self.what(u), "its output never reaches the model's output"
                )
        return items

    @staticmethod
    def _lca(a, b, idom, depth_of):
        while a is not b:
            if depth_of[a] >= depth_of[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a

    def chain(self, ctx: _Ctx, entry: fx.Node, v: fx.Node, top: bool = False) -> list[It]:
        items: list[It] = []
        first = True
        while v is not entry:
            u = ctx.producer.get(v)
            if u is None:
                ctx.failed = True
                why = "reads a tensor it was not given"
                items.insert(0, self.fail(Located(ctx.path, "an outside tensor", why)))
                break
            if not first and ctx.users.get(v, 0) != 1:
                ctx.failed = True
                why = "its output is read by layers that do not rejoin at an add or a cat"
                items.insert(0, self.fail(Located(u.path or ctx.path, self.what(u), why)))
            first = False
            ctx.seen.add(u.key)
            if any(a in ctx.attrs for a in u.ins):
                tensor, v = self.learnable(ctx, u)
                items.insert(0, tensor)
                continue
            merge = self.merge_kind(u)
            if merge:
                item, v = self.merged(ctx, u, merge)
                if item is not None:
                    item.inline = item.kind != "marker"  # registers on the enclosing module
                    items.insert(0, item)
                first = True  # the fork: read by every branch of this merge
                continue
            if len(u.ins) != 1:
                why = "combines several tensors" if u.ins else "reads no tensor"
                items.insert(0, self.fail(Located(u.path or ctx.path, self.what(u), why)))
                ctx.failed = True
                if not u.ins:
                    break
                v = u.ins[0]  # --partial: go on along the first input
                first = True
                continue
            src = ctx.producer.get(u.ins[0])
            tokens = self.flat_tokens(ctx, u, src)
            if tokens is not None and src is not None:
                items.insert(0, tokens)
                v = src.ins[0]
                continue
            if _indexes(u) and src is not None and src.path and len(src.nodes) == 1:
                # out, state = self.lstm(x): the layer is what cannot be said, not the indexing
                ctx.seen.add(src.key)
                if u.nodes[0].args[1] != 0:
                    why = f"its output [{u.nodes[0].args[1]}] is read"
                    item = self.fail(Located(src.path, self.what(src), why))
                else:
                    item = self.module(ctx, src, src.ins[0] if src.ins else u.ins[0])
                items.insert(0, item)
                v = src.ins[0] if src.ins else entry
                continue
            shuffle = self.shuffle(ctx, u)
            if shuffle is not None:
                items.insert(0, shuffle[0])
                v = shuffle[1]
                continue
            got = self.unit(ctx, u, u.ins[0])
            items[0:0] = got if isinstance(got, list) else [got]
            v = u.ins[0]
        return items

    def shuffle(self, ctx: _Ctx, u: Unit) -> tuple[It, fx.Node] | None:
        """x.view(n, g, c // g, h, w), transpose(1, 2) (or permute), [contiguous()],
        view(n, c, h, w) (ShuffleNet's channel_shuffle) -> `channel_shuffle: {groups: g}`."""
        last = u.nodes[0]
        if u.path or not match.reshapes(last):
            return None
        steps = [last]
        n = last.args[0]
        if isinstance(n, fx.Node) and n.op == "call_method" and n.target == "contiguous":
            steps.append(n)
            n = n.args[0]
        if not isinstance(n, fx.Node) or not match.swaps_1_2(n):
            return None
        steps.append(n)
        first = n.args[0]
        if not isinstance(first, fx.Node) or not match.reshapes(first):
            return None
        steps.append(first)
        x = first.args[0]
        if not isinstance(x, fx.Node) or not is_tensor(x) or x not in ctx.idom:
            return None
        sx, s5 = shape_of(x), shape_of(first)
        if len(sx) != 4 or shape_of(last) != sx or len(s5) != 5:
            return None
        if s5[0] != sx[0] or s5[1] * s5[2] != sx[1] or s5[3:] != sx[2:]:
            return None
        for m in steps[1:]:
            if len(m.users) != 1 or m not in ctx.producer:
                return None
        for m in steps:
            ctx.seen.add(ctx.producer[m].key)
        return It("op", op="channel_shuffle", params={"groups": s5[1]}), x

    def learnable(self, ctx: _Ctx, u: Unit) -> tuple[It, fx.Node]:
        """A parameter of the module used directly, as one of the language's learnable tensors:
        cat([p.expand(n, -1, -1), x], 1) a class_token, x + p a pos_embedding, p * x a
        layer_scale. Each is registered on the module that uses it, under its own name."""
        n = u.nodes[0]
        xs = [a for a in u.ins if a not in ctx.attrs]
        ps = [a for a in u.ins if a in ctx.attrs]
        attr = ps[0] if len(ps) == 1 else None
        expand = None
        if attr is not None and attr.op != "get_attr":
            expand = ctx.producer.get(attr)
            m = expand.nodes[0] if expand and len(expand.nodes) == 1 else None
            ok = m is not None and m.target == "expand" and m.args[0].op == "get_attr"
            attr = m.args[0] if ok and m is not None else None
        target = str(attr.target) if attr is not None else str(ps[0].target)
        owner, _, pname = target.rpartition(".")
        place, what = (owner if owner else "<model>"), "a parameter used directly"
        if attr is None or u.path or len(u.nodes) != 1 or len(xs) != 1:
            return self.fail(Located(place, what, f"{self.what(u)} of `{target}`")), u.ins[0]
        if owner != ctx.path:
            why = f"`{target}` is used by another module than its own"
            return self.fail(Located(place, what, why)), xs[0]
        try:
            t = self.model.get_parameter(target)
        except AttributeError:
            return self.fail(Located(place, "a buffer used directly", f"`{target}`")), xs[0]
        x = xs[0]
        sx, st = shape_of(x), tuple(t.shape)
        kind = ""
        if n.op == "call_function" and n.target in match.CATS and expand is not None:
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            pair = n.args[0] if isinstance(n.args[0], (list, tuple)) else ()
            if list(pair) == [ps[0], x] and dim in (1, -2) and st == (1, 1, sx[-1]):
                kind = "class_token"
        elif expand is None and self.merge_kind(u) == "add" and st == (1, *sx[1:]):
            kind = "pos_embedding"
        elif (
            expand is None
            and self.merge_kind(u) == "mul"
            and shape_of(n) == sx
            and st in ((sx[-1],), (sx[1], 1, 1) if len(sx) == 4 else ())
        ):
            kind = "layer_scale"
        if not kind:
            return self.fail(Located(place, what, f"{self.what(u)} of `{target}`")), x
        if expand is not None:
            ctx.seen.add(expand.key)
        values = t.detach().flatten()
        same = bool((values == values[0]).all()) if values.numel() else True
        init = {"layer_scale": {"init": 1e-6}, "pos_embedding": {"std": 0.02}}.get(kind, {})
        if same:  # as built (torchvision: class_token 0, layer_scale 1e-6); else the usual init
            init = {"init": _shortest(values[0])} if values.numel() else {}
        _, params = match.op(kind, **init)
        return It("op", name=pname, op=kind, params=params), x

    def flat_tokens(self, ctx: _Ctx, u: Unit, src: Unit | None) -> It | None:
        """x.flatten(2).transpose(1, 2), x.reshape(n, c, h * w).permute(0, 2, 1): to_tokens."""
        if u.path or len(u.nodes) != 1 or len(u.ins) != 1 or src is None or src.path:
            return None
        if len(src.nodes) != 1 or len(src.ins) != 1 or ctx.users.get(u.ins[0]) != 1:
            return None
        n, m = u.nodes[0], src.nodes[0]
        if len(shape_of(u.ins[0])) != 3 or _permutation(n, 3) != (0, 2, 1):
            return None
        si, so = shape_of(src.ins[0]), shape_of(m)
        flat = m.target in ("flatten", "reshape", "view", torch.flatten, torch.reshape)
        if not flat or len(si) != 4 or so != (si[0], si[1], si[2] * si[3]):
            return None
        ctx.seen.add(src.key)
        return It("op", op="to_tokens")

    def merge_kind(self, u: Unit) -> str | None:
        if u.path or len(u.nodes) != 1:
            return None
        n = u.nodes[0]
        if n.op == "call_function" and n.target in match.CATS:
            return "cat"
        if n.op == "call_function" and n.target in match.ADDS and len(u.ins) == 2:
            return "add"
        if n.op == "call_method" and n.target in ("add", "add_") and len(u.ins) == 2:
            return "add"
        if n.op == "call_function" and n.target in match.MULS and len(u.ins) == 2:
            return "mul"
        if n.op == "call_method" and n.target in ("mul", "mul_") and len(u.ins) == 2:
            return "mul"
        return None

    def merged(self, ctx: _Ctx, u: Unit, kind: str) -> tuple[It | None, fx.Node]:
        n = u.nodes[0]
        scope = ctx.path
        if kind == "cat":
            tensors = n.args[0] if n.args else n.kwargs.get("tensors")
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            rank = len(shape_of(n))
            if dim not in (1, 1 - rank) or not isinstance(tensors, (list, tuple)):
                return self.fail(Located(scope, "torch.cat", f"along dim {dim}")), u.ins[0]
            ins = [a for a in tensors if isinstance(a, fx.Node)]
            if len(ins) == 1:
                return None, ins[0]
        else:
            sign = "+" if kind == "add" else "*"
            if (
                n.kwargs.get("alpha", 1) != 1
                or len(n.args) != 2
                or not all(is_tensor(a) for a in n.args)
            ):
                return self.fail(
                    Located(scope, match.describe(n.target), f"only tensor {sign} tensor")
                ), u.ins[0]
            ins = [a for a in n.args if isinstance(a, fx.Node)]
            if kind == "add" and shape_of(ins[0]) != shape_of(ins[1]):
                return self.fail(
                    Located(scope, match.describe(n.target), "broadcasting add")
                ), u.ins[0]
        if any(a not in ctx.idom for a in ins):
            raise Located(scope, match.describe(n.target), "reads a tensor from outside the module")
        fork = ins[0]
        for a in ins[1:]:
            fork = self._lca(fork, a, ctx.idom, ctx.depth_of)
        if kind == "cat":
            dense = self.torchvision_dense(ctx, ins, fork)
            if dense is not None:
                return dense, fork
            split = self.split(ctx, ins, fork)
            if split is not None:
                return split
        branches: list[list[It]] = []
        for a in ins:
            if a is fork:
                branches.append([])
            else:
                if ctx.users.get(a, 0) != 1:
                    raise Located(scope, match.describe(n.target), "a branch output is used twice")
                branches.append(self.chain(ctx, fork, a))
        if kind == "add":
            return self.residual(branches, fork, n), fork
        if kind == "mul":
            return self.product(branches, fork, n), fork
        item = It("parallel", merge="concat", branches=branches)
        return item, fork

    def product(self, branches: list[list[It]], fork: fx.Node, n: fx.Node) -> It:
        """x * gate(x) (squeeze-and-excitation) -> `scale`; other products -> `merge: mul`."""
        a, b = branches
        if (not a or not b) and (a or b) and shape_of(n) == shape_of(fork):
            return It("scale", items=a or b)
        return It("parallel", merge="mul", branches=[a, b])

    def split(self, ctx: _Ctx, ins: list[fx.Node], fork: fx.Node) -> tuple[It, fx.Node] | None:
        """cat([f0(x0), f1(x1), ...]) of the parts of `x0, x1, ... = x.chunk(n, 1)` (ShuffleNet
        v2's unit) -> `split`, when every part is read once, in order, by its own branch."""
        u = ctx.producer.get(fork)
        if u is None or u.path or len(u.ins) != 1 or not match.chunks(u.nodes[0], len(ins)):
            return None
        at: dict[Any, fx.Node] = {}
        for n in fork.users:
            if n.op != "call_function" or n.target is not operator.getitem:
                return None
            at[n.args[1]] = n
        if set(at) != set(range(len(ins))) or len(at) != len(fork.users):
            return None
        parts = [at[i] for i in range(len(ins))]
        branches: list[list[It]] = []
        for part, a in zip(parts, ins):
            if ctx.users.get(part, 0) != 1 or a is not part and ctx.users.get(a, 0) != 1:
                return None  # a part read twice: not a split
            if a is not part and not self._dominated(ctx, a, part):
                return None
        for part, a in zip(parts, ins):
            ctx.seen.add(ctx.producer[part].key)
            branches.append(self.chain(ctx, part, a))
        ctx.seen.add(u.key)
        if any(b and (len(b) != 1 or not b[0].name) for b in branches):
            why = "a part goes through layers that are not one module of their own"
            return self.fail(Located(ctx.path, match.describe(u.nodes[0].target), why)), u.ins[0]
        keys = self.empty_children(ctx, sum(1 for b in branches if not b))
        return It("split", branches=branches, keys=keys), u.ins[0]

    def _dominated(self, ctx: _Ctx, a: fx.Node, by: fx.Node) -> bool:
        while a in ctx.idom and ctx.idom[a] is not a:
            if a is by:
                return True
            a = ctx.idom[a]
        return a is by

    def empty_children(self, ctx: _Ctx, n: int) -> list[str] | None:
        """Names of the scope module's children that are never called and hold nothing (as
        torchvision's `branch1 = nn.Sequential()`): the names of `n` empty split branches."""
        if not n:
            return []
        mod = self.model.get_submodule(ctx.path) if ctx.path else self.model
        empty = [
            name
            for name, c in mod.named_children()
            if isinstance(c, nn.Sequential) and not len(c) and NAME_RE.match(name)
        ]
        return empty if len(empty) == n else None

    def residual(self, branches: list[list[It]], fork: fx.Node, n: fx.Node) -> It:
        a, b = branches
        in_c, out_c = shape_of(fork)[0 if len(shape_of(fork)) == 1 else 1], shape_of(n)[1]
        if not b or not a:
            main = a or b
            return It("residual", items=main, shortcut="identity", in_c=in_c, out_c=out_c)
        if len(b) == 1 and b[0].name is not None and len(a) > 1:
            return It("residual", items=a, shortcut=b[0], in_c=in_c, out_c=out_c)
        if len(a) == 1 and a[0].name is not None and len(b) > 1:
            return It("residual", items=b, shortcut=a[0], in_c=in_c, out_c=out_c)
        if len(a) == len(b) == 1 and a[0].name is not None and b[0].name is not None:
            # proj(x) + f(x) (RegNet): the shortcut is the smaller module
            small, big = sorted((a, b), key=lambda x: (_size(x[0]), x is b))
            return It("residual", items=big, shortcut=small[0], in_c=in_c, out_c=out_c)
        return It("parallel", merge="add", branches=[a, b])

    def torchvision_dense(self, ctx: _Ctx, ins: list[fx.Node], fork: fx.Node) -> It | None:
        """torchvision's _DenseBlock: layer i takes the list [x, y1, ..., y(i-1)] and concatenates
        it itself; the block returns cat([x, y1, ..., yn])."""
        if ins[0] is not fork or len(ins) < 2:
            return None
        layers = []
        for i, a in enumerate(ins[1:], start=1):
            u = ctx.producer.get(a)
            if u is None or not u.path or u.ins != ins[:i]:
                return None
            inner = [x for x in u.nodes if x.op == "call_function" and x.target in match.CATS]
            if not inner or list(inner[0].args[0]) != ins[:i]:
                return None
            layers.append((u, inner[0]))
        body = []
        for u, cat in layers:
            ctx.seen.add(u.key)
            item = self.module(ctx, u, cat)
            body.append(item)
        return It("dense", items=body)

    def unit(self, ctx: _Ctx, u: Unit, entry: fx.Node) -> It | list[It]:
        if not u.path:
            return self.function(ctx, u)
        return self.module(ctx, u, entry)

    def rel(self, ctx: _Ctx, path: str) -> str:
        return path[len(ctx.path) + 1 :] if ctx.path else path

    def module(self, ctx: _Ctx, u: Unit, entry: fx.Node) -> It:
        m = u.module
        assert m is not None and u.out is not None
        bad = [p for p in u.path.split(".") if not NAME_RE.match(p) or p in RESERVED]
        if bad:
            why = f"`{bad[0]}` is not a name a spec can give a module"
            return self.fail(Located(u.path, match.module_name(m), why))
        name = self.rel(ctx, u.path)
        calls = [n for n in u.nodes if n.op == "call_module" and n.target == u.path]
        if calls and len(u.nodes) == 1:
            if "@" in u.key and has_state(m):
                return self.fail(
                    Located(u.path, match.module_name(m), "called more than once (shared weights)")
                )
            if match.torchvision_class(m) in match.SUBGRAPHS:
                return self.partition_layer(m, u.path, name, shape_of(entry))
            if isinstance(m, nn.MultiheadAttention) and not _self_attention(calls[0]):
                why = "not self-attention: called as attn(x, x, x) without masks it is the op"
                return self.fail(Located(u.path, match.module_name(m), why))
            try:
                opname, params = match.match_module(m)
            except Unsupported as e:
                return self.fail(Located(u.path, e.what, e.why))
            src = calls[0].args[0] if calls[0].args else None
            shape_in = shape_of(src) if isinstance(src, fx.Node) and is_tensor(src) else ()
            out = shape_of(calls[0]) if opname == "to_image" else ()
            params |= match.grid(opname, shape_in, out)
            return It("op", name=name, op=opname, params=params)
        if "@" in u.key and has_state(m):
            return self.fail(
                Located(u.path, match.module_name(m), "called more than once (shared weights)")
            )
        inner = self.scope(u.path, u.nodes, ctx.depth + 1, entry, u.out)
        it = shape_scope(inner, name)
        it.cls = type(m).__name__
        match.family(type(m))
        it.path = u.path
        if is_tensor(entry) and is_tensor(u.out):
            it.keeps = shape_of(entry) == shape_of(u.out)
        return it

    def partition_layer(self, m: Any, path: str, name: str, shape: tuple[int, ...]) -> It:
        """MaxViT's PartitionAttentionLayer: x + attention(x), then x + mlp(x), on the tokens of
        its windows (or grid); LayerNorm and the MLP act on each token, so this is the layers
        on the image's tokens with the partition inside `partition_attention`."""
        attn = list(m.attn_layer)
        kind = "grid" if type(m.partition_swap).__name__ == "SwapAxes" else "window"
        grid = tuple(m.grid_size)
        if (
            len(shape) != 4
            or grid != shape[2:]
            or type(attn[1]).__name__ != ("RelativePositionalMultiHeadAttention")
        ):
            why = f"an input of {list(shape[1:])} for its grid {list(grid)}"
            return self.fail(Located(path, match.module_name(m), why))
        size = {"h": grid[0]} if grid[0] != grid[1] else {}
        _, params = match.op("partition_attention", heads=attn[1].n_heads, window=attn[1].size,
                             partition=kind)  # fmt: skip
        items = []
        for seq, layers, sd in (("attn_layer", attn, "stochastic_dropout"),
                                ("mlp_layer", list(m.mlp_layer), "stochastic_dropout_mlp")):  # fmt: skip
            inner = []
            for i, layer in enumerate(layers):
                if seq == "attn_layer" and i == 1:
                    inner.append(It("op", name="1", op="partition_attention", params=params | size))
                    continue
                try:
                    opname, ps = match.match_module(layer)
                except Unsupported as e:
                    return self.fail(Located(f"{path}.{seq}.{i}", e.what, e.why))
                inner.append(It("op", name=str(i), op=opname, params=ps))
            _, p = match.match_module(m.stochastic_dropout)  # the forward's, for both
            main = [It("list", name=seq, items=inner), It("op", name=sd, op="stochastic_depth",
                                                            params=p)]  # fmt: skip
            items.append(It("residual", items=main, shortcut="identity", inline=True))
        tokens = [It("op", op="to_tokens")] + items + [It("op", op="to_image", params=size)]
        return It("list", name=name, items=tokens, cls=type(m).__name__)

    def function(self, ctx: _Ctx, u: Unit) -> It | list[It]:
        n = u.nodes[0]
        try:
            if n.target in ("mean", torch.mean) and self.spatial_mean(n) is not None:
                keep = self.spatial_mean(n)  # x.mean([2, 3]): a global average pool
                return [It("op", op="gap")] + ([] if keep else [It("op", op="flatten")])
            src = n.args[0] if n.args else None
            rank = 0  # (of one tensor: not of x.split(...)'s tuple)
            if isinstance(src, fx.Node) and isinstance(src.meta.get("tensor_meta"), TensorMetadata):
                rank = len(shape_of(src))
            dims = _permutation(n, rank) if rank == 4 else None
            if dims is not None and match.permute_op(dims) is not None:
                opname, params = match.permute_op(dims)  # type: ignore[misc]
                return It("op", op=opname, params=params | match.grid(opname, (), shape_of(n)))
            if n.target is operator.getitem and rank == 3 and self.token(n) is not None:
                return It("op", op="token", params=match.op("token", index=self.token(n))[1])
            if rank == 3 and _permutation(n, 3) == (0, 2, 1):
                return It("op", op="transpose_tokens")  # MLP-Mixer's token mixing
            if rank == 3 and n.target in ("mean", torch.mean) and self.token_mean(n):
                return It("op", op="mean_tokens")
            if n.op == "call_method" and n.target in ("view", "reshape"):
                return (
                    It("op", op="flatten")
                    if self.flattens(n)
                    else _raise(
                        Unsupported(f"Tensor.{n.target}", "only x.view(x.size(0), -1) (a flatten)")
                    )
                )
            if n.op == "call_method":
                opname, params = match.match_method(str(n.target), n.args, n.kwargs)
            else:
                opname, params = match.match_function(n.target, n.args, n.kwargs)
        except Unsupported as e:
            return self.fail(Located(ctx.path, e.what, e.why))
        return It("op", op=opname, params=params)

    @staticmethod
    def token_mean(n: fx.Node) -> bool:
        """x.mean(1) of tokens (not keeping the dim)."""
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
        return dims in ([1], [-2]) and not keep and n.kwargs.get("dtype") is None

    @staticmethod
    def token(n: fx.Node) -> int | None:
        """x[:, i] of tokens: the index i."""
        idx = n.args[1]
        if isinstance(idx, tuple) and len(idx) == 2 and idx[0] == slice(None):
            return idx[1] if isinstance(idx[1], int) and not isinstance(idx[1], bool) else None
        return None

    def spatial_mean(self, n: fx.Node) -> bool | None:
        """keepdim of a mean over the height and width of an image, or None."""
        src = n.args[0] if n.args else None
        if not isinstance(src, fx.Node) or not is_tensor(src) or len(shape_of(src)) != 4:
            return None
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        if not isinstance(dims, (list, tuple)) or {d % 4 for d in dims} != {2, 3} or len(dims) != 2:
            return None
        if n.kwargs.get("dtype") is not None:
            return None
        return bool(keep)

    def flattens(self, n: fx.Node) -> bool:
        src = n.args[0]
        if not isinstance(src, fx.Node) or not is_tensor(src) or not is_tensor(n):
            return False
        si, so = shape_of(src), shape_of(n)
        return len(so) == 2 and so[0] == si[0] and so[1] == math.prod(si[1:]) and len(si) > 2


def conditional_residuals(items: list[It], model: nn.Module, called: set[str]) -> None:
    """Modules of one class that return `x + f(x)` where the shape is kept and `f(x)` where it
    is not (MobileNet's and EfficientNet's `use_res_connect`): every one of them becomes a
    residual with `shortcut: identity_if_same`, which builds exactly that, so one template
    covers them. A layer only the summing ones call (EfficientNet's `stochastic_depth` before
    the sum) is written in the others too with `p: 0.0`: the identity, in training as well."""
    by_class: dict[str, list[It]] = {}

    def visit(it: It) -> None:
        if it.cls and it.path:
            by_class.setdefault(it.cls, []).append(it)
        inner = it.items + [x for b in it.branches for x in b]
        for x in inner + [x for x in (it.shortcut, it.post) if isinstance(x, It)]:
            visit(x)

    for it in items:
        visit(it)
    for group in by_class.values():
        summed = [
            x for x in group if x.kind == "residual" and x.shortcut == "identity" and not x.post
        ]
        plain = [x for x in group if x.kind == "list" and x.keeps is False]
        if not summed or not plain or len(summed) + len(plain) != len(group):
            continue
        last = {(x.items[-1].op, x.items[-1].name) if x.items else None for x in summed}
        tail = next(iter(last)) if len(last) == 1 else None
        for x in plain:
            x.kind, x.shortcut = "residual", "if_same"
            if tail is None or tail[0] != "stochastic_depth" or not tail[1]:
                continue
            path = f"{x.path}.{tail[1]}"
            try:
                child = model.get_submodule(path)
            except AttributeError:
                continue
            if match.is_stochastic_depth(child) and path not in called:
                opname, params = match.match_module(child)
                params["p"] = 0.0
                x.items.append(It("op", name=tail[1], op=opname, params=params))
        for x in summed:
            x.shortcut = "if_same"


def _size(it: It) -> int:
    """Ops inside an item."""
    inner = it.items + [x for b in it.branches for x in b]
    inner += [x for x in (it.shortcut, it.post) if isinstance(x, It)]
    return (it.kind == "op") + sum(_size(x) for x in inner)


def _shortest(v: torch.Tensor) -> float:
    """The shortest decimal that gives the same value in v's dtype (1e-06, not 9.99999997e-07)."""
    for digits in range(1, 18):
        x = float(f"{v.item():.{digits}g}")
        if torch.tensor(x, dtype=v.dtype) == v:
            return x
    return v.item()


def _owns(u: Unit, a: fx.Node) -> bool:
    """A tensor of the unit's module read inside it (self.layer_scale): not an input."""
    return bool(u.path) and a.op == "get_attr" and str(a.target).startswith(u.path + ".")


def _permutation(n: fx.Node, rank: int) -> tuple[int, ...] | None:
    """The dims of x.permute(...), torch.permute or a transpose of two dims, as a tuple."""
    args: list[Any] = list(n.args[1:])
    if n.target in ("permute", torch.permute):
        dims: Any = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        dims = dims or n.kwargs.get("dims", [])
        if all(isinstance(d, int) for d in dims) and len(dims) == rank:
            return tuple(d % rank for d in dims)
        return None
    if n.target in ("transpose", torch.transpose) and len(args) == 2:
        if not all(isinstance(d, int) for d in args):
            return None
        a, b = (d % rank for d in args)
        out = list(range(rank))
        out[a], out[b] = out[b], out[a]
        return tuple(out)
    return None


def _indexes(u: Unit) -> bool:
    n = u.nodes[0]
    return not u.path and n.op == "call_function" and n.target is operator.getitem


def _self_attention(n: fx.Node) -> bool:
    """nn.MultiheadAttention called as attn(x, x, x) (need_weights as it likes): the op."""
    qkv = list(n.args[:3]) + [n.kwargs.get(k) for k in ("query", "key", "value")][len(n.args) :]
    masks = [n.args[i] if len(n.args) > i else n.kwargs.get(k) for i, k in
             ((3, "key_padding_mask"), (5, "attn_mask"))]  # fmt: skip
    causal = n.args[7] if len(n.args) > 7 else n.kwargs.get("is_causal", False)
    return len(qkv) == 3 and qkv[0] is qkv[1] is qkv[2] and masks == [None, None] and not causal


def _raise(e: Exception):
    raise e


@dataclass
class _Ctx:
    """The traced graph's facts, shared while one module's body is grouped."""

    path: str
    depth: int
    units: list[Unit]
    producer: dict
    users: dict
    idom: dict
    depth_of: dict
    seen: set
    attrs: set
    failed: bool = False


def shape_scope(items: list[It], name: str | None) -> It:
    """A module's items -> the module: a combinator when that is all it holds (its layers then
    register on it, as torchvision's blocks do), else a list; residual + one layer -> `post`."""
    items = group_dotted(dense_steps(items))
    if len(items) == 2 and items[0].kind == "residual" and items[1].kind == "op":
        items[0].post = items[1]
        items = items[:1]
    if (
        len(items) == 1
        and items[0].kind in ("residual", "parallel", "dense", "scale", "split")
        and items[0].name is None
    ):
        items[0].name = name
        items[0].inline = False
        return items[0]
    if not items:
        items = [It("op", op="identity")]
    return It("list", name=name, items=items)


def dense_steps(items: list[It]) -> list[It]:
    """x = cat(x, f(x)) repeated (d2l's DenseBlock) -> one dense block, when every f is the same
    layer list registered under one parent (net.0, net.1, ...)."""
    out: list[It] = []
    run: list[It] = []

    def flush():
        if len(run) >= 2:
            d = as_dense([r.branches[1][0] for r in run])
            if d is not None:
                out.append(d)
                run.clear()
                return
        out.extend(run)
        run.clear()

    for it in items:
        if (
            it.kind == "parallel"
            and it.merge == "concat"
            and len(it.branches) == 2
            and not it.branches[0]
            and len(it.branches[1]) == 1
            and it.branches[1][0].name
        ):
            run.append(it)
        else:
            flush()
            out.append(it)
    flush()
    return out


def as_dense(layers: list[It]) -> It | None:
    names = [x.name or "" for x in layers]
    parent = names[0].rsplit(".", 1)[0] if "." in names[0] else None
    if parent is None or any(not n.startswith(parent + ".") for n in names):
        return None
    tails = [n[len(parent) + 1 :] for n in names]
    if tails != [str(i) for i in range(len(tails))]:
        return None
    body = []
    for x in layers:
        y = copy.copy(x)
        y.name = None
        body.append(y)
    return It("dense", name=parent, items=body)


def group_dotted(items: list[It]) -> list[It]:
    """Layers of a child module that is never called itself (a ModuleList, or a Sequential used
    by index): `net.0`, `net.1` -> a list `net` holding `0`, `1`."""
    out: list[It] = []
    for it in items:
        if it.name and "." in it.name:
            head, tail = it.name.split(".", 1)
            it.name = tail
            if (
                out
                and out[-1].kind == "list"
                and out[-1].name == head
                and getattr(out[-1], "_virtual", False)
            ):
                out[-1].items.append(it)
            else:
                grp = It("list", name=head, items=[it])
                grp._virtual = True  # type: ignore[attr-defined]
                out.append(grp)
        else:
            out.append(it)
    for it in out:
        if getattr(it, "_virtual", False):
            it.items = group_dotted(it.items)
    return out
