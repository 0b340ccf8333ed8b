"""The lowered network: a tree of nodes with every template, repeat, variant and expression
resolved and every shape inferred. `check` reports it; `compile` turns it into modules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from archspec.lang.errors import Loc
from archspec.ops import Inferred, Shape

# Node kinds: LAYER, or the name of the combinator that made a composite (the built-ins are in
# archspec/lower/combinators/; a plugin may add more). A composite either owns a module
# (`inline=False`) or lends its children to the module of its nearest owning ancestor
# (`inline=True`), which is how a spec reproduces flat layouts such as torchvision's
# `layer1.0.conv1` or Inception's `Mixed_5b.branch5x5_1`.
SEQ, PARALLEL, RESIDUAL, DENSE, LAYER = "seq", "parallel", "residual", "dense", "layer"
# An auxiliary head: a stage that reads the tensor but does not pass its output on (training only).
AUX = "aux"
# A merge of earlier outputs (`from: [a, b]` with no op): no module, only data flow.
JOIN = "join"
IN = "in"  # in `from:`, the item's incoming tensor


@dataclass
class Node:
    """One node of the lowered network: a layer, a composite (seq, parallel, residual, ...) or a
    join of earlier outputs, with its shapes, parameters, MACs and where the spec wrote it."""

    kind: str
    name: str
    path: str  # module path in the built model ("" for the root)
    loc: Loc
    in_shape: Shape | None
    out_shape: Shape | None = None
    inline: bool = False
    # layers
    op: str = ""
    params: Any = None
    inferred: Inferred | None = None
    rf: tuple[int, int] | None = None  # receptive field (h, w) at this layer's output
    # composites
    children: list[Node] = field(default_factory=list)  # seq items / branches / dense layers / main
    merge: str = "concat"  # parallel
    shortcut: Node | None = None  # residual (None: identity)
    post: Node | None = None  # residual
    # references to earlier outputs (module paths; IN: the incoming tensor): the node reads
    # them, joined by `join`, instead of its incoming tensor; `refs` are an op's parameters
    # that name an output (`upsample: {size_of: enc2}`), passed to its module as more inputs
    reads: list[str] = field(default_factory=list)
    join: str = "concat"
    refs: dict[str, str] = field(default_factory=dict)

    def parts(self) -> list[Node]:
        """Every child node in forward order."""
        extra = [n for n in (self.shortcut, self.post) if n is not None]
        return [*self.children, *extra]

    def leaves(self) -> Iterator[Node]:
        if self.kind == LAYER:
            yield self
            return
        for child in self.parts():
            yield from child.leaves()


@dataclass
class Network:
    """A lowered spec: its root node and what the report, the compiler and the memory model need."""

    name: str
    variant: str | None
    input: Shape
    num_classes: int | None
    root: Node
    resolved: Any  # the variant-resolved spec as plain data
    # `outputs:` (or build(outputs=...)): (key in the returned dict, module path), in order
    outputs: list[tuple[str, str]] = field(default_factory=list)
    named: dict[str, Node] = field(default_factory=dict)  # every referable output by path

    @property
    def layers(self) -> list[Node]:
        return list(self.root.leaves())

    @property
    def aux_layers(self) -> list[Node]:
        """Layers of auxiliary heads: they run in training only, so inference cost leaves them out."""
        return [
            leaf for stage in self.root.children if stage.kind == AUX for leaf in stage.leaves()
        ]
