"""Pointwise nonlinearities (and `identity`): one row each, on one shared class."""

from __future__ import annotations

from typing import Any, ClassVar

from archspec.lang.model import Field
from archspec.ops.base import Extra, NoParams, Op, Params, Saved, Shape, numel, register


class InplaceParams(Params):
    inplace: bool = Field(False, description="overwrite the input (saves memory)")


class LeakyParams(Params):
    slope: float = Field(0.01, description="negative slope")
    inplace: bool = Field(False, description="overwrite the input")


class _Activation(Op):
    module: ClassVar[str]
    keeps: ClassVar[str]  # what backward reads: "input", "output" or "nothing"
    # In place, an op whose backward reads its input must first copy it (relu6, silu, hardswish);
    # one that reads its output, or leaky_relu (whose sign survives), keeps the shared storage.
    inplace_keeps: ClassVar[str]

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        inplace = bool(getattr(p, "inplace", False))
        if self.keeps == "nothing":
            return Saved(alias=True)
        if not inplace:
            return Saved(input=self.keeps == "input", output=self.keeps == "output")
        if self.inplace_keeps == "copy":
            return Saved(extra=(Extra("input copy", numel(shape)),), alias=True)
        return Saved(output=True, alias=True)

    def build(self, p: Any, shape: Shape) -> Any:
        from torch import nn

        cls = getattr(nn, self.module)
        if isinstance(p, LeakyParams):
            return cls(p.slope, p.inplace)
        return cls(inplace=p.inplace) if isinstance(p, InplaceParams) else cls()


def _activation(
    name: str,
    module: str,
    params: type[Params] = NoParams,
    keeps: str = "input",
    inplace_keeps: str = "output",
    family: str = "",
    example: str = "",
    **extra: Any,
) -> None:
    cls = type(
        module,
        (_Activation,),
        {
            "__module__": __name__,
            "name": name,
            "module": module,
            "Params": params,
            "doc": f"torch.nn.{module}",
            "example": ("16,8,8", example or f"- {name}"),
            "keeps": keeps,
            "inplace_keeps": inplace_keeps,
            "init_family": family,
            **extra,
        },
    )
    register(cls)


RELU = "relu"  # the family that makes a network train from He initialisation
_activation(
    "relu",
    "ReLU",
    InplaceParams,
    keeps="output",
    family=RELU,
    example="- relu\n- relu: {inplace: true}",
)
_activation("relu6", "ReLU6", InplaceParams, inplace_keeps="copy", family=RELU)
_activation(
    "leaky_relu",
    "LeakyReLU",
    LeakyParams,
    family=RELU,
    example="- leaky_relu: {slope: 0.2}",
    fuzz={"slope": [0.2]},
)
_activation("silu", "SiLU", InplaceParams, inplace_keeps="copy", family=RELU, aliases=("swish",))
_activation("hardswish", "Hardswish", InplaceParams, inplace_keeps="copy", family=RELU)
_activation("hardsigmoid", "Hardsigmoid", InplaceParams, inplace_keeps="copy")
_activation("sigmoid", "Sigmoid", keeps="output")
_activation("tanh", "Tanh", keeps="output")
_activation("gelu", "GELU", family=RELU)
_activation("identity", "Identity", keeps="nothing")
