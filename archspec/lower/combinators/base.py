"""What a combinator is: one class that holds everything archspec does with it.

- `lower` parses and validates its keys (errors located at the key or value at fault), lowers
  its parts through the walk (`lw.item`, `lw.seq`) and applies its shape rule; plain Python,
  no torch.
- `forward` is its data flow, written once over an abstract `Flow`: the compiler runs it over
  code (straight-line `forward` source of a generated module) and the memory model over
  tensors (which storages each step allocates and keeps for backward).
- `draw` adds it to the Graphviz picture; `schema` is its JSON Schema fragment.

Built-ins and a user's plugin register the same way, with `register_combinator`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from archspec.ir import AUX, IN, JOIN, LAYER, Node
from archspec.lang.errors import raised_at
from archspec.lang.source import loc_of
from archspec.lower.core import TooBig, TooDeep

if TYPE_CHECKING:
    from archspec.analysis.graph import Writer
    from archspec.lower.core import Scope, Site
    from archspec.lower.walk import Lowerer

X = TypeVar("X")
JOINS = ("concat", "add", "mul")  # what a Flow can do to several tensors


class Flow(Protocol[X]):
    """What a combinator's `forward` runs on: values are code variables (the compiler) or
    tensor records (the memory model)."""

    def child(self, node: Node, x: X) -> X:
        """Run the part `node` on `x`."""
        ...

    def join(self, how: str, xs: list[X], node: Node) -> X:
        """Join several values, `how` one of JOINS: `concat` along channels, `add` or `mul`
        elementwise (mul broadcasts, as torch does); `node` is the combinator doing it."""
        ...

    def split(self, x: X, parts: int, node: Node) -> list[X]:
        """Split `x` along channels into `parts` equal views (`x.chunk(parts, 1)`)."""
        ...


def through(flow: Any, node: Node, x: X, run: Any) -> X:
    """Run `node` on `flow` with references: it reads the join of the outputs it names instead
    of `x` (`from:`; a JOIN node is only that), and an output others read is kept in
    `flow.env` by path. `run(node, x)` runs the node itself."""
    if node.reads:
        xs = [x if p == IN else flow.env[p] for p in node.reads]
        x = flow.join(node.join, xs, node)
    out = x if node.kind == JOIN else run(node, x)
    if node.path and flow.named.get(node.path) is node:
        flow.env[node.path] = out
    return out


def main_path(flow: Any, root: Node, x: X) -> tuple[X, list[tuple[Node, X]]]:
    """The network's stages in order on `flow`: the main output, and each auxiliary head's
    stage with the value it reads (heads run after the main path, and only where the model
    returns them: not with `outputs:`; see backend/compile.py `network_source`)."""
    taps: list[tuple[Node, X]] = []
    for stage in root.children:
        if stage.kind == AUX:
            taps.append((stage, x))
        else:
            x = flow.child(stage, x)
    return x, taps


class Replay:
    """A Flow that runs a network's forward over values of its own kind (the memory model's
    tensor records, the in-place check's versions): a layer goes to `layer`, a composite to
    its combinator's `forward`, each through its references (`through`)."""

    def __init__(self, named: dict[str, Node]):
        self.named = named
        self.env: dict[str, Any] = {}  # outputs read by reference, by path

    def child(self, node: Node, x: Any) -> Any:
        return through(self, node, x, self._run)

    def _run(self, node: Node, x: Any) -> Any:
        if node.kind == LAYER:
            return self.layer(node, x)
        return COMBINATORS[node.kind].forward(node, x, self)

    def layer(self, node: Node, x: Any) -> Any:
        raise NotImplementedError

    def join(self, how: str, xs: list[Any], node: Node) -> Any:
        raise NotImplementedError

    def split(self, x: Any, parts: int, node: Node) -> list[Any]:
        raise NotImplementedError


class Combinator:
    """Base of every combinator. A subclass sets `name` and `doc` and overrides `lower` and
    `schema`; `forward` and `draw` default to running the node's parts in order."""

    name: ClassVar[str]
    doc: ClassVar[str]  # one line: what it does (schema description, docs)
    takes_list: ClassVar[bool] = False  # its value may be a bare layer list, not only a mapping
    chain: ClassVar[bool] = False  # runs its parts in order: nn.Sequential when none is inline
    class_name: ClassVar[str] = ""  # its generated module class (default: from its `name`)

    def lower(self, lw: Lowerer, body: Any, at: Site) -> Node:
        raise NotImplementedError

    def forward(self, node: Node, x: X, flow: Flow[X]) -> X:
        for part in node.parts():
            x = flow.child(part, x)
        return x

    def caption(self, node: Node) -> str | None:
        """Said beside its module path in the picture (None: the path alone)."""
        return self.name

    def draw(self, g: Writer, node: Node, preds: list[str], key: str) -> list[str]:
        """Draw its parts fed by the node ids `preds`; return the ids its output leaves from."""
        for i, part in enumerate(node.parts()):
            preds = g.walk(part, preds, f"{key}_{i}")
        return preds

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for `lower`

    def opened(
        self, lw: Lowerer, body: dict, at: Site, merge: str = "concat"
    ) -> tuple[Node, Scope]:
        """Open the node (named by `name:`, or by position) and the scope its parts register on
        (the enclosing one with `inline: true`)."""
        name = lw.item_name(body, at.body_loc, at.env, at.name)
        inline = bool(body.get("inline", at.inline))
        return lw.container(self.name, at.key_loc, at.state, at.scope, name, inline, merge)

    def part(self, lw: Lowerer, body: dict, key: str, at: Site, scope: Scope) -> Node:
        """Lower the layers under `body[key]` on the combinator's input, as a module named
        `key` on `scope` (errors inside are located in them)."""
        loc = loc_of(body, key, at.body_loc)
        return lw.item(body[key], loc, at.state, at.env, scope, key)


COMBINATORS: dict[str, Combinator] = {}


def register_combinator(cls: type[Combinator]) -> type[Combinator]:
    """Class decorator: register a combinator under `cls.name` (a name taken by an op, another
    combinator or a repeat key is refused: a spec could not say which one it means)."""
    from archspec.lower.repeat import REPEAT_KEYS
    from archspec.ops import OPS

    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"a combinator needs a lower-case `name`, got {name!r}")
    if name in OPS or name in COMBINATORS or name in REPEAT_KEYS or name in ("name", "inline"):
        raise ValueError(f"`{name}` is already an op, a combinator or a reserved key")
    if not getattr(cls, "doc", None):
        raise ValueError(f"combinator `{name}` needs a `doc` line")
    if "class_name" not in cls.__dict__:
        cls.class_name = "".join(p.title() for p in name.split("_"))
    if not cls.__module__.startswith("archspec."):
        _report_plugin_bugs(cls)
    COMBINATORS[name] = cls()
    return cls


def _report_plugin_bugs(cls: type[Combinator]) -> None:
    """A plugin's `lower` that fails (a bug in the plugin) is reported as E-PLUGIN at its key,
    like any error of the spec, not as a traceback; the walk goes on after it."""
    rule = cls.lower

    def lower(self: Combinator, lw: Lowerer, body: Any, at: Site) -> Node:
        try:
            return rule(self, lw, body, at)
        except (TooBig, TooDeep):  # the walk's own bounds, raised by the parts
            raise
        except Exception as e:  # noqa: BLE001  # a plugin may raise anything
            lw.error(
                at.key_loc,
                "E-PLUGIN",
                f"the combinator `{cls.name}` ({cls.__module__}) raised {type(e).__name__}: {e}",
                f"the error is raised at {raised_at(e)}",
            )
            return lw.dead(at.key_loc, at.state, at.scope, at.name)

    cls.lower = lower  # type: ignore[method-assign]
