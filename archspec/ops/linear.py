"""Dense layers: flatten and linear."""

from __future__ import annotations

from typing import Any, ClassVar

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    MAX_CHANNELS,
    Fuzz,
    Inferred,
    Op,
    Params,
    Saved,
    Shape,
    Window,
    fmt,
    register,
)


@register
class Flatten(Op):
    name = "flatten"
    doc = "flatten CxHxW to C*H*W features (torch.nn.Flatten)"
    example = ("16,4,4", "- flatten")
    color = "#eeeeee"

    def infer(self, p: Any, shape: Shape) -> Inferred:
        n = 1
        for d in shape:
            n *= d
        window = Window((shape[1], shape[2]), (shape[1], shape[2])) if len(shape) == 3 else None
        return Inferred((n,), window=window)

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(alias=True)  # a view of a contiguous input: same storage, nothing kept

    def build(self, p: Any, shape: Shape) -> Any:
        from torch import nn

        return nn.Flatten()


class LinearParams(Params):
    out: int = Field(ge=1, le=MAX_CHANNELS, description="output features")
    bias: bool = Field(True, description="learn an additive bias")


@register
class Linear(Op):
    name = "linear"
    aliases = ("fully_connected", "fc")
    doc = "fully connected layer (torch.nn.Linear); on LxD tokens, applied to each token"
    example = ("256", "- linear: {out: 10}")
    Params = LinearParams
    color = "#f9cb9c"
    fuzz: ClassVar[Fuzz] = {"out": [1, 2, 3, 6], "bias": [True, False]}
    autocast = "lower"

    def infer(self, p: LinearParams, shape: Shape) -> Inferred:
        if len(shape) == 3:
            raise Problem(
                "E-SHAPE-RANK",
                f"linear needs flat features or tokens, but gets a {fmt(shape)} image",
                "insert `flatten` (or `gap`, `flatten`) before `linear`, or `to_tokens`",
            )
        d = shape[-1]
        rows = shape[0] if len(shape) == 2 else 1
        return Inferred(
            (*shape[:-1], p.out), d * p.out + (p.out if p.bias else 0), rows * d * p.out
        )

    def saved(self, p: LinearParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # addmm/mm keep the input (for grad_weight) and weight.t() only when the input needs grad
        return Saved(input=True, weight=shape[-1] * p.out if grad else 0)

    def build(self, p: LinearParams, shape: Shape) -> Any:
        from torch import nn

        return nn.Linear(shape[-1], p.out, p.bias)

    def describe(self, p: LinearParams) -> str:
        return f"linear {p.out}"
