"""The op registry's machinery: the base class every op (built-in or plugin) derives from,
`register`, and the small value types the rules return.

One op is one class: its parameters (a pydantic model, built lazily), shape/param/MAC rule (`infer`, pure
Python: `check` never imports torch), receptive-field window, saved-for-backward rule, torch
module (built lazily in `build`), initialisation family, docs text and example, graph colour
and the values the differential fuzzer draws. Docs tables, the JSON Schema, the graph, the
memory model, the training initialisation and the fuzz all read them from `OPS`, so adding an
op — here or in a plugin (docs/plugins.md) — is one definition.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, NamedTuple, Union

from archspec.lang.errors import Problem, did_you_mean, edits, raised_at
from archspec.lang.model import ConfigDict, Field, Model
from archspec.ops.shapes import pair

# Re-exported by archspec.ops: the API built-in ops and plugins use.
__all__ = ["OPS", "Field", "Fuzz", "NoParams", "Op", "Params", "Problem", "he_init", "register"]
__all__ += ["NOTHING", "Extra", "Inferred", "IntOrPair", "PosInt", "Saved", "Shape", "Window"]
__all__ += ["MAX_CHANNELS", "MAX_KERNEL", "check_pair", "collapse", "fmt", "need_image", "numel"]
__all__ += ["GLOBAL", "need_tokens", "rank_name"]

Shape = tuple[int, ...]
MAX_CHANNELS = 1 << 20
MAX_KERNEL = 1 << 14

PosInt = Field(ge=1)
IntOrPair = Union[int, list[int]]  # noqa: UP007  # docs_reference renders typing.Union as "int or [h, w]"


class Window(NamedTuple):
    """How a layer maps spatial positions (for the receptive field)."""

    k: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    up: tuple[int, int] = (1, 1)  # an upsampling factor: the output's pixels are this much finer


# The window of an op that mixes every position (attention): the receptive field after it is
# the whole input, and is not reported (nor is one on tokens, which have no grid).
GLOBAL_RF = 1 << 40
GLOBAL = Window((GLOBAL_RF, GLOBAL_RF), (1, 1))


class Inferred(NamedTuple):
    """What an op's rule infers for one input: the output shape, parameters, MACs and window."""

    out: Shape
    params: int = 0
    macs: int = 0
    window: Window | None = None  # None: pointwise (activation, bn, ...)


class Extra(NamedTuple):
    """A tensor a layer's backward keeps that no other layer shares: indices, a mask, statistics."""

    what: str
    elems: int  # elements per sample, or in all when `per_sample` is False
    # "act": the activation's dtype; "int64"/"float32": fixed; "mask": the activation's dtype on
    # CPU, bool on CUDA (fused dropout); "wide": float32 under autocast, else the activation's
    dtype: str = "act"
    per_sample: bool = True


class Saved(NamedTuple):
    """What a layer's autograd node keeps alive in training mode until its backward runs.

    `input`/`output` name tensors other layers may keep too (counted once, by storage);
    `extra` are new tensors only this layer holds. docs/memory.md gives the reasoning per op.
    """

    input: bool = False
    output: bool = False
    extra: tuple[Extra, ...] = ()
    alias: bool = False  # the output is the input's storage (in-place ops, views)
    weight: int = 0  # under autocast: weight elements kept as a 16-bit copy


NOTHING = Saved()


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class Params(Model):
    """An op's parameters: a pydantic model (strict, unknown keys refused, immutable), built
    by pydantic only when needed (archspec/lang/model.py): a valid spec checks without it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(Params):
    pass


def fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def rank_name(shape: Shape) -> str:
    """What a shape is, in words: shapes are [C, H, W] images, [L, D] tokens or [F] features."""
    if len(shape) == 3:
        return f"a {fmt(shape)} image"
    if len(shape) == 2:
        return f"{shape[0]} tokens of {shape[1]}"
    return f"a flat vector of {shape[0]} features"


def need_image(op: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        hint = (
            "turn the tokens back into an image first (`to_image`)"
            if len(shape) == 2
            else "move `flatten` after the last convolution or pool"
        )
        raise Problem(
            "E-SHAPE-RANK", f"{op} needs a CxHxW input, but gets {rank_name(shape)}", hint
        )
    return shape  # type: ignore[return-value]


def need_tokens(op: str, shape: Shape) -> tuple[int, int]:
    if len(shape) != 2:
        hint = (
            "turn the image into tokens first (`to_tokens`)"
            if len(shape) == 3
            else "tokens come from an image (`to_tokens`) or a spec input [L, D]"
        )
        raise Problem("E-SHAPE-RANK", f"{op} needs LxD tokens, but gets {rank_name(shape)}", hint)
    return shape  # type: ignore[return-value]


def check_pair(name: str, v: IntOrPair, low: int, high: int) -> tuple[int, int]:
    if isinstance(v, list) and len(v) != 2:
        raise Problem("E-TYPE", f"`{name}` must be an integer or a list of two", None, field=name)
    a, b = pair(v)
    for x in (a, b):
        if not low <= x <= high:
            raise Problem(
                "E-RANGE", f"`{name}` = {x} is out of range [{low}, {high}]", None, field=name
            )
    return a, b


def collapse(op: str, what: str, shape: Shape, hw: tuple[int, ...], hint: str) -> Problem:
    return Problem(
        "E-SHAPE-COLLAPSE",
        f"{op} {what} turns {shape[1]}x{shape[2]} into {hw[0]}x{hw[1]}",
        f"the input is only {shape[1]}x{shape[2]} here; {hint}",
    )


Fuzz = dict[str, list[Any]]  # parameter -> values the differential fuzzer may write


class Op:
    """Base of every op. Subclasses set `name`, `doc` and `example`, and override what differs.

    Register a subclass with `@register` (built-ins and plugins alike); `OPS[name]` then holds
    one instance, which is stateless: every method receives the validated parameters `p` (an
    instance of `Params`) and the input shape without the batch.
    """

    name: ClassVar[str]  # the key in a spec: `- name` or `- name: {params}`
    doc: ClassVar[str]  # one line, lower-case start: "2-D convolution (torch.nn.Conv2d)"
    # The docs example: the input it is shown on ("C,H,W" or "F") and a YAML list of layers
    # (checked by the docs generator, which prints the shapes it gives; its first parameter
    # mapping is also the editor's completion example in the JSON Schema).
    example: ClassVar[tuple[str, str]]
    Params: ClassVar[type[Params]] = NoParams
    color: ClassVar[str | None] = None  # graph fill colour; None: white, small type
    # "relu": a ReLU-family nonlinearity — a network with one gets He initialisation for
    # training, otherwise Glorot (backend/init.py).
    init_family: ClassVar[str] = ""
    # What the differential fuzzer may write for each parameter (tests/test_fuzz_differential.py):
    # a required parameter is always drawn from its list, an optional one half the time. An op
    # whose required parameters have no list here is not drawn.
    fuzz: ClassVar[Fuzz] = {}
    scales_with_width: ClassVar[bool] = False  # `width:` multiplies its `out`
    # Output dtype under autocast: "keep" the input's, "lower" (runs in the 16-bit dtype, like
    # conv and linear) or "float32" (an op autocast widens).
    autocast: ClassVar[str] = "keep"
    # A learnable tensor op (class token, position embedding, layer scale): `build` returns an
    # `nn.Parameter` that the compiler registers on the enclosing module under the layer's name
    # (torchvision's `class_token`, `encoder.pos_embedding`, `features.1.0.layer_scale`), and
    # `code` is the forward expression using it. Its report path names that parameter.
    tensor: ClassVar[bool] = False
    # Parameters whose value names an earlier output (`upsample: {size_of: enc2}`): `infer` then
    # takes a third argument, {parameter: that output's shape}, and the module's forward gets
    # the output as one more input after `x`, in this order.
    refs: ClassVar[tuple[str, ...]] = ()
    # Other names a user may write for it: torch's class names and common spellings
    # (`BatchNorm2d`, `batchnorm`). The `torch.nn.X` / `torchvision.ops.X` names in `doc` count
    # too. E-UNKNOWN-OP suggests the op for any of them, in any case and with or without `_`,
    # and for a typo of one (`suggest_op`).
    aliases: ClassVar[tuple[str, ...]] = ()
    # An op on tokens laid out on a grid, whose Params have `h` and `w` (None: a square): where
    # the spec gives neither, the walk fills them in from the grid the tokens are known to lie
    # on (see `token_grid`), so a non-square image's tokens need no sizes written out.
    reads_grid: ClassVar[bool] = False

    def infer(self, p: Any, shape: Shape) -> Inferred:
        """Output shape, parameters, MACs and window; raise `Problem` for a bad combination."""
        return Inferred(shape)

    def infer_with(self, p: Any, shape: Shape, refs: dict[str, Shape]) -> Inferred:
        """`infer`, given the shapes of the outputs the `refs` parameters name."""
        if self.refs:
            return self.infer(p, shape, refs)  # type: ignore[call-arg]
        return self.infer(p, shape)

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        """Tensors kept for backward; `grad`: the input requires grad (a layer without
        parameters whose input does not records nothing at all — the walker applies that)."""
        return NOTHING

    def build(self, p: Any, shape: Shape) -> Any:
        """The torch module (import torch inside: `check` never calls this)."""
        raise NotImplementedError

    def token_grid(
        self, p: Any, shape: Shape, out: Shape, grid: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        """The h x w grid the output tokens lie on (None: not known), given the input's `grid`.
        By default an op that keeps the token count keeps the grid (linear, layernorm,
        attention, ...); `to_tokens` starts one, patch merging halves it."""
        if len(out) == 2 and len(shape) == 2 and out[0] == shape[0]:
            return grid
        return None

    def describe(self, p: Any) -> str:
        """Short label for tables and graphs: `conv 3x3/2`."""
        return self.name

    def code(self, p: Any, shape: Shape, param: str, x: str) -> str:
        """A tensor op's forward as a Python expression over its parameter and its input."""
        raise NotImplementedError


OPS: dict[str, Op] = {}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register(cls: type[Op]) -> type[Op]:
    """Add an op to `OPS` (a class decorator). Refuses a name that is taken or malformed, and an
    op without its docs text or example."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"op name {name!r} must be lower-case letters, digits and _")
    taken = OPS.get(name)
    if taken is not None:
        where = f"{type(taken).__module__}.{type(taken).__qualname__}"
        raise ValueError(f"op `{name}` is already registered (by {where})")
    for attr in ("doc", "example"):
        if not getattr(cls, attr, None):
            raise ValueError(f"op `{name}` needs `{attr}`")
    if not cls.__module__.startswith("archspec."):
        _report_plugin_bugs(cls)
    OPS[name] = cls()
    return cls


def _report_plugin_bugs(cls: type[Op]) -> None:
    """A plugin's shape rule that fails with anything but a Problem (a bug in the plugin) is
    reported as E-PLUGIN at the layer, like any error of the spec, not as a traceback."""
    rule = cls.infer

    def infer(self: Op, p: Any, shape: Shape) -> Inferred:
        try:
            return rule(self, p, shape)
        except Problem:
            raise
        except Exception as e:  # noqa: BLE001  # a plugin may raise anything
            raise Problem(
                "E-PLUGIN",
                f"the shape rule of `{cls.name}` ({cls.__module__}) raised {type(e).__name__}: {e}",
                f"the error is raised at {raised_at(e)}",
            ) from None

    cls.infer = infer  # type: ignore[method-assign]


TORCH_NAME = re.compile(r"\b(?:torch\.nn|torchvision\.ops)\.([A-Z]\w*)")


def _squash(word: str) -> str:
    return re.sub(r"[^a-z0-9]", "", word.lower())


def names_for_ops() -> dict[str, list[str]]:
    """Every name a user may write for an op (its own, its `aliases`, the torch classes its
    `doc` names), squashed (lower case, letters and digits only) -> the ops it stands for."""
    table: dict[str, list[str]] = {}
    for name, op in OPS.items():
        for alias in (name, *op.aliases, *TORCH_NAME.findall(op.doc)):
            ops = table.setdefault(_squash(alias), [])
            if name not in ops:
                ops.append(name)
    return table


def suggest_op(word: str, known: Any) -> str | None:
    """The help line for an unknown op `word`: the op a torch class name or a common spelling
    stands for (`BatchNorm2d`, `batchnorm` -> `bn`), else the closest of the `known` names
    (ops, combinators, templates), else the op whose other name is closest (`batchnrom`)."""
    table = names_for_ops()
    squashed = _squash(word)
    ops = table.get(squashed)
    if ops is None:
        hint = did_you_mean(word, known)
        if hint is not None and hint.startswith("did you mean"):
            return hint
        import difflib  # only an unknown op gets here

        most = max(2, len(squashed) // 3)
        close = difflib.get_close_matches(squashed, table, n=3, cutoff=0.6)
        ops = next((table[c] for c in close if edits(squashed, c) <= most), None)
        if ops is None:
            return hint
    return "did you mean " + " or ".join(f"`{o}`" for o in ops) + "?"


def he_init(ops: Any) -> bool:
    """Whether a network made of these op names trains from He initialisation (see Op)."""
    return any(OPS[o].init_family == "relu" for o in ops if o in OPS)
