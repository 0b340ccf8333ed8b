"""IR -> ordinary `nn.Module`s. With train.py, the only place that imports torch.

Plain chains become `nn.Sequential`. Branching blocks (parallel, residual, dense, and any
module that lends its children flat names) become small generated classes whose `forward` is
straight-line code, emitted once per distinct block shape — so the forward pass costs what a
hand-written module costs, and TorchScript, FX, ONNX and `torch.compile` see plain Python.
"""

from __future__ import annotations

import hashlib
import keyword
import linecache
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archspec.analysis.report import Report, check
from archspec.ir import AUX, IN, JOIN, LAYER, Network, Node
from archspec.lang.errors import Diagnostic, Loc, SpecError
from archspec.lower import COMBINATORS
from archspec.lower.combinators.base import main_path, through
from archspec.ops import OPS

DEFAULT_MAX_PARAMS = 2_000_000_000  # ARCHSPEC_MAX_PARAMS overrides it (read at each build)


class ArchNet(nn.Sequential):
    """The built network: its stages in order, plus what the spec says about it.

    A spec with `aux` stages (auxiliary heads) gets a generated subclass whose forward returns
    the main output in eval mode and under TorchScript, and `(main, *aux_outputs)` in training
    mode, the heads in stage order (see `_Emitter.network_source`, docs/language-aux.md)."""

    def __init__(
        self,
        stages: OrderedDict[str, nn.Module],
        name: str,
        input_shape: tuple[int, ...],
        num_classes: int | None,
    ):
        super().__init__()
        for key, part in stages.items():
            _register(self, key, part)
        self.spec_name = name
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.aux_heads: tuple[str, ...] = ()  # names of the auxiliary-head stages, in order
        self.op_names: tuple[str, ...] = ()  # the ops it is made of


class Block(nn.Module):
    """Base of the generated branching blocks: children registered in forward order."""

    def __init__(self, children: list[tuple[str, nn.Module]]):
        super().__init__()
        for name, module in children:
            _register(self, name, module)


class ChainBlock(Block):
    """Base of the generated chains (a `seq` or repeat whose layers read references): indexed,
    sized and iterated over its child modules like an `nn.Sequential` (`model.layer1[0]`)."""

    def _key(self, index: int) -> str:
        keys = list(self._modules)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"{type(self).__name__} indices must be integers, got {index!r:.40}")
        if not -len(keys) <= index < len(keys):
            raise IndexError(f"index {index} is out of range for {len(keys)} modules")
        return keys[index]

    def __getitem__(self, index: int) -> nn.Module:
        return getattr(self, self._key(index))

    def __setitem__(self, index: int, module: nn.Module) -> None:
        setattr(self, self._key(index), module)  # the forward calls it by name

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())  # type: ignore[arg-type]


def _register(owner: nn.Module, name: str, part: nn.Module | nn.Parameter) -> None:
    """A child module, or the parameter of a tensor op (Op.tensor) registered by its name."""
    if isinstance(part, nn.Parameter):
        owner.register_parameter(name, part)
    else:
        owner.add_module(name, part)


def build(
    path: str | Path,
    variant: str | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
    outputs: list[str] | dict[str, str] | None = None,
    **options: Any,
) -> nn.Module:
    """Check the spec, refuse it with every error if it is invalid or too large, then build
    (options: see `build_from_report`). `outputs` (layer or stage names, or {key: name}) makes
    the module return a dict of those outputs and leaves out every layer after the last one."""
    report = check(path, variant, input_shape, num_classes, outputs=outputs)
    return build_from_report(report, **options)


def build_from_report(
    report: Report,
    *,
    max_params: int | None = None,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build the network a `check` report lowered: commands check a spec once and build from
    that report, never reading or lowering the file again. Raises SpecError if the report has
    errors, if the model is over ``max_params`` (default ARCHSPEC_MAX_PARAMS), or if
    ``weights`` (`backend.weights.load_weights`) do not fit."""
    if max_params is not None and (not isinstance(max_params, int) or isinstance(max_params, bool)):
        raise TypeError(f"max_params must be an int or None, got {max_params!r:.60}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a path or None, got {weights!r:.60}")
    if not report.ok:
        raise SpecError(report.errors, report.source_lines)
    assert report.network is not None and report.params is not None
    limit = _max_params(report) if max_params is None else max_params
    if report.params > limit:
        raise SpecError(
            [
                Diagnostic(
                    Loc(report.spec),
                    "E-TOO-BIG",
                    f"the model has {report.params:,} parameters, over the limit of {limit:,}",
                    "raise the limit with max_params= or ARCHSPEC_MAX_PARAMS if you mean it",
                )
            ],
            report.source_lines,
        )
    with torch.device(device) if device is not None else _nullcontext():
        model = compile_network(report.network)
    if weights is not None:
        from archspec.backend.weights import load_weights

        load_weights(model, weights)
    return model


def _max_params(report: Report) -> int:
    text = os.environ.get("ARCHSPEC_MAX_PARAMS")
    if text is None:
        return DEFAULT_MAX_PARAMS
    try:
        return int(text)
    except ValueError:
        raise SpecError(
            [
                Diagnostic(
                    Loc(report.spec),
                    "E-TOO-BIG",
                    f"ARCHSPEC_MAX_PARAMS must be a whole number of parameters, got {text!r:.40}",
                    "unset it (the limit is then 2,000,000,000) or set it to a number",
                )
            ]
        ) from None


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def compile_network(net: Network) -> ArchNet:
    dag = Dag(net)
    stages = OrderedDict((c.name, module_for(c, dag)) for c in net.root.children if c.kind != JOIN)
    heads = tuple(child.name for child in net.root.children if child.kind == AUX)
    plain = not heads and not net.outputs and dag.plain(net.root)
    plain = plain and not any(map(_is_tensor, net.root.children))
    cls = ArchNet if plain else _net_class(net.root, dag, net)
    model = cls(stages, net.name, net.input, net.num_classes)
    model.aux_heads = heads
    model.op_names = tuple(sorted({n.op for n in net.layers}))  # for the training init
    return model


def module_for(node: Node, dag: Dag | None = None) -> nn.Module:
    if node.kind == LAYER:
        assert node.in_shape is not None  # build runs only on a spec that checked clean
        return OPS[node.op].build(node.params, node.in_shape)
    dag = dag or Dag(None)
    owned = list(_owned(node))
    children = [(c.name, module_for(c, dag)) for c in owned]
    if (
        COMBINATORS[node.kind].chain
        and all(c.kind == LAYER or not c.inline for c in node.parts())
        and not any(map(_is_tensor, owned))
        and dag.plain(node)
        and not dag.args(node)
        and not dag.exports(node)
    ):
        return nn.Sequential(OrderedDict(children))
    cls = _block_class(node, dag)
    return cls(children)


def _is_tensor(node: Node) -> bool:
    """A layer of a tensor op: a parameter on the enclosing module, used by generated code."""
    return node.kind == LAYER and OPS[node.op].tensor


def _owned(node: Node):
    """The module-owning descendants registered directly on `node`'s module."""
    for child in node.parts():
        if child.kind == JOIN:
            continue
        if child.kind != LAYER and child.inline:
            yield from _owned(child)
        else:
            yield child


class Dag:
    """What references make each module's forward take and return beyond `x -> y`: `args`, the
    outputs computed outside it that its layers read (extra forward arguments), and `exports`,
    the outputs computed inside it that are read outside (or are network outputs), returned
    after its own output."""

    def __init__(self, net: Network | None):
        self.named = net.named if net is not None else {}
        self.order: list[Node] = []
        self.index: dict[int, int] = {}
        self.start: dict[int, int] = {}
        self.users: dict[str, list[int]] = {}
        if net is None:
            return
        self._number(net.root)
        for n in self.order:
            for p in _uses(n):
                self.users.setdefault(p, []).append(self.index[id(n)])
        for _, p in net.outputs:
            self.users.setdefault(p, []).append(len(self.order))

    def _number(self, node: Node) -> int:
        first = len(self.order)
        for part in node.parts():
            self._number(part)
        self.start[id(node)] = first
        self.index[id(node)] = len(self.order)
        self.order.append(node)
        return first

    def _inside(self, node: Node) -> list[Node]:
        if id(node) not in self.index:
            return []
        return self.order[self.start[id(node)] : self.index[id(node)]]

    def plain(self, node: Node) -> bool:
        """No part of `node` reads a reference or is read by one."""
        return not any(
            _uses(n) or n.kind == JOIN or n.path in self.users for n in self._inside(node)
        )

    def args(self, node: Node) -> list[str]:
        made = {n.path for n in self._inside(node) if self.named.get(n.path) is n}
        out: list[str] = []
        for n in self._inside(node):
            out += [p for p in _uses(n) if p not in made and p not in out]
        if node.kind == LAYER:
            out += [p for p in node.refs.values() if p not in out]
        return out

    def exports(self, node: Node) -> list[str]:
        lo, hi = self.start.get(id(node), 0), self.index.get(id(node), 0)
        return [
            n.path
            for n in self._inside(node)
            if self.named.get(n.path) is n
            and any(not lo <= u < hi for u in self.users.get(n.path, ()))
        ]


def _uses(node: Node) -> list[str]:
    """The outputs a node reads by name: its `from:` and its op's reference parameters."""
    return [p for p in node.reads if p != IN] + list(node.refs.values())


# --------------------------------------------------------------------------- code generation

_CLASSES: dict[str, type] = {}


def _block_class(node: Node, dag: Dag) -> type:
    source = _Emitter(dag).forward_source(node)
    comb = COMBINATORS[node.kind]
    return _generated(node.kind, source, comb.class_name, ChainBlock if comb.chain else Block)


def _net_class(root: Node, dag: Dag, net: Network) -> type:
    return _generated("net", _Emitter(dag).network_source(root, net.outputs), "ArchNet", ArchNet)


def _generated(kind: str, source: str, cls_name: str, base: type) -> type:
    key = f"{kind}:{source}"
    if key not in _CLASSES:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        filename = f"<archspec-generated-{digest}>"
        # Register the source so inspect.getsource (TorchScript) and tracebacks can read it.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace: dict[str, Any] = {"torch": torch}
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102  # our generated code, never spec text
        cls = type(cls_name, (base,), {"forward": namespace["forward"]})
        cls.__module__ = "archspec.backend.compile"
        _CLASSES[key] = cls
    return _CLASSES[key]


class _Emitter:
    def __init__(self, dag: Dag) -> None:
        self.lines: list[str] = []
        self.n = 0
        self.dag = dag
        self.named = dag.named
        self.env: dict[str, str] = {}  # outputs read by reference -> the variable holding them

    def var(self) -> str:
        self.n += 1
        return f"x{self.n}"

    def forward_source(self, node: Node) -> str:
        args = self.dag.args(node)
        params = ["self", "x"]
        for i, p in enumerate(args):
            self.env[p] = f"r{i}"
            params.append(f"r{i}")
        out = self.body(node, "x")
        ret = ", ".join([out, *(self.env[p] for p in self.dag.exports(node))])
        lines = [
            f"def forward({', '.join(params)}):",
            *(f"    {ln}" for ln in self.lines),
            f"    return {ret}",
            "",
        ]
        return "\n".join(lines)

    def network_source(self, root: Node, outputs: list[tuple[str, str]]) -> str:
        """The top-level forward of a network with auxiliary heads, references between stages
        or several outputs (a dict, in the order of `outputs:`). Heads run after the main
        path, on the tensors their stages saw (every intermediate is still a local), and only in
        eager training: eval mode and TorchScript return the main output alone, so a scripted or
        exported model is the inference model and one return type serves each mode."""
        main, taps = main_path(self, root, "x")
        if outputs:
            items = ", ".join(f"{k!r}: {self.env[p]}" for k, p in outputs)
            self.lines.append(f"return {{{items}}}")
        elif not taps:
            self.lines.append(f"return {main}")
        else:
            self.lines += [
                "if torch.jit.is_scripting() or not self.training:",
                f"    return {main}",
            ]
            outs = [self.call(stage, tap) for stage, tap in taps]
            self.lines.append(f"return ({', '.join([main, *outs])})")
        return "\n".join(["def forward(self, x):", *(f"    {ln}" for ln in self.lines), ""])

    def call(self, node: Node, inp: str) -> str:
        """A child that owns a module: one call (with the outputs it reads from outside, and
        taking back the outputs it computes for others)."""
        v = self.var()
        ref = (
            f"self.{node.name}"
            if node.name.isidentifier() and not keyword.iskeyword(node.name)
            else f"getattr(self, {node.name!r})"
        )
        if _is_tensor(node):
            assert node.in_shape is not None  # built only from a clean check
            code = OPS[node.op].code(node.params, node.in_shape, ref, inp)
            self.lines.append(f"{v} = {code}")
            return v
        args = ", ".join([inp, *(self.env[p] for p in self.dag.args(node))])
        exports = self.dag.exports(node)
        names = [v]
        for p in exports:
            self.env[p] = self.var()
            names.append(self.env[p])
        self.lines.append(f"{', '.join(names)} = {ref}({args})")
        return v

    def child(self, node: Node, inp: str) -> str:
        """A part of a combinator: a call of its module, or an inline composite's own code."""
        return through(self, node, inp, self._run)

    def _run(self, node: Node, inp: str) -> str:
        if node.kind == LAYER or not node.inline:
            return self.call(node, inp)
        return self.body(node, inp)

    def body(self, node: Node, inp: str) -> str:
        return COMBINATORS[node.kind].forward(node, inp, self)

    def split(self, x: str, parts: int, node: Node) -> list[str]:
        vs = [self.var() for _ in range(parts)]
        self.lines.append(f"{', '.join(vs)}, = {x}.chunk({parts}, 1)")
        return vs

    def join(self, how: str, outs: list[str], node: Node) -> str:
        if len(outs) == 1:
            return outs[0]
        v = self.var()
        if how == "concat":
            expr = f"torch.cat([{', '.join(outs)}], 1)"
        else:
            expr = {"add": " + ", "mul": " * "}[how].join(outs)
        self.lines.append(f"{v} = {expr}")
        return v
