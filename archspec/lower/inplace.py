"""In-place layers against the tensors others still read.

A layer with `inplace: true` overwrites its input. Every other reader of that tensor that runs
after it then sees the overwritten values: a residual's shortcut when the main path starts in
place, a sibling branch of a `parallel` or `scale`, an output read by name (`from:`,
`outputs:`), an auxiliary head's tap. The built module would compute another network than the
spec says, silently (autograd raises only when the overwritten tensor was saved for backward).
This replays the forward — each combinator's own `forward`, as the compiler and the memory
model do — over abstract tensors (a storage and its version) and refuses, as E-INPLACE at the
in-place layer, a read of a tensor that an in-place layer has overwritten since.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from archspec.ir import JOIN, LAYER, Network, Node
from archspec.lang.errors import Collector
from archspec.lower.combinators.base import Replay, main_path
from archspec.ops import OPS


class Value(NamedTuple):
    """A tensor as the in-place check sees it: a storage and which version of it."""

    storage: int
    version: int
    made_by: str  # what the tensor is, in words: "the output of `enc.c1`"


class Versions(Replay):
    """The forward over abstract tensors: a storage and the version of it a value holds."""

    def __init__(self, network: Network, out: Collector):
        super().__init__(network.named)
        self.out = out
        self.current: dict[int, tuple[int, Node | None]] = {}  # storage -> version, overwriter

    def new(self, made_by: str) -> Value:
        storage = len(self.current)
        self.current[storage] = (0, None)
        return Value(storage, 0, made_by)

    def read(self, v: Value, reader: Node | str) -> None:
        version, writer = self.current[v.storage]
        if version == v.version or writer is None:
            return
        who = reader if isinstance(reader, str) else _reader(reader)
        self.out.add(
            writer.loc,
            "E-INPLACE",
            f"`{writer.op}` with `inplace: true` overwrites {v.made_by}, which {who} reads after it",
            "drop `inplace: true` here: the other reader needs the values before this layer",
        )

    def network(self, root: Node, x: Value, outputs: list[tuple[str, str]]) -> None:
        _, taps = main_path(self, root, x)
        for key, path in outputs:
            if path in self.env:
                self.read(self.env[path], f"the output `{key}`")
        if not outputs:  # the built model runs its auxiliary heads only then
            for stage, tap in taps:
                self.child(stage, tap)

    def layer(self, node: Node, x: Value) -> Value:
        self.read(x, node)
        if getattr(node.params, "inplace", False) is True:
            version = self.current[x.storage][0] + 1
            self.current[x.storage] = (version, node)
            return Value(x.storage, version, x.made_by)
        if _is_view(node):
            return x
        return self.new(f"the output of `{node.path}`")

    def join(self, how: str, xs: list[Value], node: Node) -> Value:
        for v in xs:
            self.read(v, node)
        return xs[0] if len(xs) == 1 else self.new(f"the output of `{node.path}`")

    def split(self, x: Value, parts: int, node: Node) -> list[Value]:
        self.read(x, node)
        return [x] * parts  # views of one storage


def _reader(node: Node) -> str:
    if node.kind == JOIN or not (node.path or node.name):
        return f"the merge at line {node.loc.line}"
    what = "" if node.kind == LAYER else f"the {node.kind} "
    return f"{what}`{node.path or node.name}`"


def _is_view(node: Node) -> bool:
    """The layer's output shares its input's storage without writing it (flatten, a permute).
    A layer with parameters computes a new tensor: its rule need not be asked (most layers)."""
    if node.inferred is None or node.in_shape is None or node.inferred.params:
        return False
    rule: Any = OPS[node.op].saved(node.params, node.in_shape, node.inferred.out, True)
    return bool(rule.alias)


def check(network: Network, out: Collector) -> None:
    """Say E-INPLACE wherever an in-place layer overwrites a tensor read after it."""
    replay = Versions(network, out)
    replay.network(network.root, replay.new("the network's input"), network.outputs)
