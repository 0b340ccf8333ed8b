"""What the lowering walk passes around: the state that flows between layers, where an item is
written (`Site`), the module children register on (`Scope`), and the walk's own exceptions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from archspec.ir import Node
from archspec.lang.errors import Loc, Problem
from archspec.ops import Shape, Window
from archspec.ops.base import GLOBAL_RF

MAX_LAYERS = 100_000
# Items inside items once templates are expanded. A fixed bound, not Python's recursion limit,
# which torch.compile and others raise at will: the same spec must fail the same way everywhere.
MAX_NESTING = 100
# Letters, digits, _ and - (RegNet's `block1-0`): anything nn.Module accepts that a module path
# (dots) and the generated forward (getattr for a name that is not an identifier) can carry.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class State:
    """What flows between layers: the shape (None once unknown) and receptive-field geometry."""

    shape: Shape | None
    rf: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)
    # How the spatial size got here from the network input: a linked list (earlier, step) of
    # size functions, replayed for other input sizes to say which sizes fit at a merge
    # (lower/refs.py). Not part of equality: two states with the same shape hand on the same.
    trace: Any = field(default=None, compare=False, repr=False)
    # Tokens: the h x w grid they lie on, where it is known (from the image `to_tokens` read,
    # through the ops that keep it: Op.token_grid); ops that read a grid (Op.reads_grid) take it
    # when the spec gives no `h`/`w`. None for images, features and tokens of unknown layout.
    grid: tuple[int, int] | None = None

    def through(self, window: Window | None, out: Shape) -> State:
        if window is None:
            return State(out, self.rf, self.jump, self.trace)
        rf = tuple(
            self.rf[i] + window.dilation[i] * (window.k[i] - 1) * self.jump[i] for i in (0, 1)
        )
        jump = tuple(max(1, self.jump[i] * window.stride[i] // window.up[i]) for i in (0, 1))
        return State(out, rf, jump, self.trace)  # type: ignore[arg-type]

    def shown_rf(self, whole: Shape) -> tuple[int, int] | None:
        """The receptive field tables show here, for a network whose input is `whole`: none on
        tokens (no grid) or an unknown shape; after an op that mixes every position (window
        GLOBAL: attention, mean_tokens) the whole input, as after `gap`."""
        if self.shape is None or len(self.shape) == 2:
            return None
        if self.rf[0] >= GLOBAL_RF:
            return (whole[1], whole[2]) if len(whole) == 3 else None
        return self.rf


UNKNOWN = State(None)


class Scope:
    """The module that children register on: one set of names, duplicates refused."""

    def __init__(self, path: str):
        self.path = path
        self.names: set[str] = set()
        self.unnumbered = 0  # names that take no position (a merge named to be read later)
        self.key_locs: dict[str, Loc] = {}  # the model's scope: where each stage's name is written


class Site(NamedTuple):
    """Where an op or combinator is written and what it receives: the key's and the body's
    positions, the incoming state, the expression environment, the module it registers on and
    its name (None: the next position), and whether it splices into that module."""

    key_loc: Loc
    body_loc: Loc
    state: State
    env: dict
    scope: Scope
    name: str | None
    inline: bool = False


class Located(Exception):
    """An expression failed; the walk reports it at `loc` and goes on."""

    def __init__(self, loc: Loc, problem: Problem):
        self.loc, self.problem = loc, problem


class Unknown(Exception):
    """An expression reads `$in` (or a parameter an earlier error left unset) while the value
    is unknown: the walk goes on without a second error."""


class TooBig(Exception):
    def __init__(self, loc: Loc):
        self.loc = loc


class TooDeep(Exception):
    def __init__(self, loc: Loc, templates: list[str]):
        self.loc, self.templates = loc, templates


def join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def after(node: Node) -> State:
    """The state a lowered node hands on (UNKNOWN when its shape could not be inferred)."""
    return getattr(node, "_state", UNKNOWN)


def common_grid(states: list[State]) -> tuple[int, int] | None:
    """The token grid every merged state lies on (None where they differ or none is known)."""
    grids = {s.grid for s in states}
    return grids.pop() if len(grids) == 1 else None


def finish(node: Node, state: State) -> Node:
    """Record what `node` hands on."""
    node.out_shape = state.shape
    node._state = state  # type: ignore[attr-defined]
    return node


def kind_of(v: Any) -> str:
    """A value's kind in words, for messages."""
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {v}"
    if isinstance(v, str):
        return f"string `{v[:40]}`"
    if isinstance(v, list):
        return "a list"
    return "a mapping"
