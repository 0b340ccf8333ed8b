"""Normalisation and regularisation: batch norm, local response norm, dropout, stochastic depth."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    MAX_CHANNELS,
    NOTHING,
    Extra,
    Fuzz,
    Inferred,
    Op,
    Params,
    Saved,
    Shape,
    need_image,
    numel,
    rank_name,
    register,
)


class BatchNormParams(Params):
    eps: float = Field(1e-5, gt=0, lt=1, description="added to the variance")
    momentum: float = Field(0.1, ge=0, le=1, description="running-statistics momentum")
    affine: bool = Field(True, description="learn a scale and shift")


@register
class BatchNorm(Op):
    name = "bn"
    aliases = ("batchnorm", "batch_norm", "BatchNorm2d", "BatchNorm1d")
    doc = "batch normalisation over channels (BatchNorm2d on images, BatchNorm1d on features)"
    example = ("16,8,8", "- bn\n- bn: {eps: 0.001, momentum: 0.01}")
    Params = BatchNormParams
    color = "#fff2cc"
    fuzz: ClassVar[Fuzz] = {"affine": [False], "eps": [0.001]}

    def infer(self, p: BatchNormParams, shape: Shape) -> Inferred:
        if len(shape) == 2:
            raise Problem(
                "E-SHAPE-RANK",
                f"bn normalises the channels of an image or features, but gets {rank_name(shape)}",
                "normalise tokens with `layernorm`",
            )
        return Inferred(shape, 2 * shape[0] if p.affine else 0)

    def saved(self, p: BatchNormParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # native/cudnn batch_norm keep the input and the batch mean and inverse std (float32)
        return Saved(input=True, extra=(Extra("stats", 2 * shape[0], "float32", per_sample=False),))

    def build(self, p: BatchNormParams, shape: Shape) -> Any:
        from torch import nn

        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return cls(shape[0], eps=p.eps, momentum=p.momentum, affine=p.affine)


class LrnParams(Params):
    size: int = Field(ge=1, le=MAX_CHANNELS, description="channels in the normalisation window")
    alpha: float = Field(1e-4, description="scale")
    beta: float = Field(0.75, description="exponent")
    k: float = Field(1.0, description="additive constant")


@register
class LocalResponseNorm(Op):
    name = "lrn"
    doc = "local response normalisation across channels (torch.nn.LocalResponseNorm)"
    example = ("96,27,27", "- lrn: {size: 5, alpha: 0.0001, beta: 0.75, k: 2.0}")
    Params = LrnParams
    color = "#fff2cc"
    fuzz: ClassVar[Fuzz] = {"size": [1, 2, 3, 4]}
    autocast = "float32"  # its pow runs in float32 under autocast, and so does what follows

    def infer(self, p: LrnParams, shape: Shape) -> Inferred:
        need_image("lrn", shape)
        return Inferred(shape)

    def saved(self, p: LrnParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # F.local_response_norm is composite: x*x keeps x; avg_pool3d keeps the channel-padded
        # square (C + size - 1 channels); pow keeps its base and result; x / div keeps x and div.
        c, h, w = shape
        return Saved(
            input=True,
            extra=(
                Extra("padded square", (c + p.size - 1) * h * w, "wide"),
                Extra("pow base", c * h * w, "wide"),
                Extra("pow result", c * h * w, "wide"),
            ),
        )

    def build(self, p: LrnParams, shape: Shape) -> Any:
        from torch import nn

        return nn.LocalResponseNorm(p.size, p.alpha, p.beta, p.k)


class DropoutParams(Params):
    p: float = Field(0.5, ge=0, le=1, description="probability of zeroing an element")
    inplace: bool = Field(False, description="overwrite the input")


@register
class Dropout(Op):
    name = "dropout"
    doc = "dropout (torch.nn.Dropout)"
    example = ("256", "- dropout: {p: 0.3}")
    Params = DropoutParams
    color = "#eeeeee"

    def saved(self, p: DropoutParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        if p.p == 0:
            return Saved(alias=True)  # returns its input untouched
        if p.p == 1:
            return Saved(extra=(Extra("zero", 1, per_sample=False),), alias=p.inplace)  # x * 0
        # CPU: x * (bernoulli mask / (1 - p)) keeps the scaled mask; CUDA's fused kernel a bool mask
        return Saved(extra=(Extra("mask", numel(shape), "mask"),), alias=p.inplace)

    def build(self, p: DropoutParams, shape: Shape) -> Any:
        from torch import nn

        return nn.Dropout(p.p, p.inplace)


class StochasticDepthParams(Params):
    p: float = Field(ge=0, le=1, description="probability of dropping a sample's whole tensor")
    mode: Literal["row", "batch"] = Field(
        "row", description="`row`: each sample on its own; `batch`: the whole batch at once"
    )


@register
class StochasticDepth(Op):
    name = "stochastic_depth"
    doc = (
        "stochastic depth (torchvision.ops.StochasticDepth): in training, zeroes a sample's "
        "tensor with probability `p` and scales the others by 1 / (1 - p); identity in eval"
    )
    example = ("16,8,8", "- stochastic_depth: {p: 0.2}")
    Params = StochasticDepthParams
    color = "#eeeeee"
    fuzz: ClassVar[Fuzz] = {"p": [0.0, 0.2], "mode": ["row", "batch"]}

    def saved(self, p: StochasticDepthParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        if p.p == 0:
            return Saved(alias=True)  # returns its input untouched
        # input * noise keeps the noise: one value per sample (`row`), or one in all (`batch`)
        return Saved(extra=(Extra("noise", 1, per_sample=p.mode == "row"),))

    def build(self, p: StochasticDepthParams, shape: Shape) -> Any:
        from torchvision.ops import StochasticDepth as TorchStochasticDepth  # type: ignore[import-untyped]

        return TorchStochasticDepth(p.p, p.mode)

    def describe(self, p: StochasticDepthParams) -> str:
        return f"stochastic_depth {p.p:g}"


class LayerNormParams(Params):
    eps: float = Field(1e-5, gt=0, lt=1, description="added to the variance")
    affine: bool = Field(True, description="learn a scale (`weight`)")
    bias: bool = Field(True, description="learn a shift (`bias`; only with `affine`)")


@register
class LayerNorm(Op):
    name = "layernorm"
    aliases = ("layer_norm", "LayerNorm", "LayerNorm2d")
    doc = (
        "layer normalisation over the last dimension of tokens or features (torch.nn.LayerNorm), "
        "over the channels of each position of an image (ConvNeXt's LayerNorm2d)"
    )
    example = ("16,8,8", "- layernorm\n- to_tokens\n- layernorm: {eps: 0.000001}")
    Params = LayerNormParams
    color = "#fff2cc"
    fuzz: ClassVar[Fuzz] = {"affine": [False], "bias": [False], "eps": [1e-6]}
    autocast = "float32"  # layer_norm is on autocast's float32 list

    def infer(self, p: LayerNormParams, shape: Shape) -> Inferred:
        d = shape[0] if len(shape) == 3 else shape[-1]
        return Inferred(shape, d * (int(p.affine) + int(p.affine and p.bias)))

    def saved(self, p: LayerNormParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # native_layer_norm keeps its input and a float32 mean and 1/std per normalised row
        rows = numel(shape) // (shape[0] if len(shape) == 3 else shape[-1])
        return Saved(input=True, extra=(Extra("stats", 2 * rows, "float32"),))

    def build(self, p: LayerNormParams, shape: Shape) -> Any:
        from torch import nn

        from archspec.backend.layers import LayerNorm2d

        if len(shape) == 3:
            return LayerNorm2d(shape[0], p.eps, p.affine, p.affine and p.bias)
        return nn.LayerNorm(shape[-1], p.eps, p.affine, p.affine and p.bias)

    def describe(self, p: LayerNormParams) -> str:
        return "layernorm"


class FrozenBatchNormParams(Params):
    eps: float = Field(1e-5, gt=0, lt=1, description="added to the variance")


@register
class FrozenBatchNorm(Op):
    name = "frozen_bn"
    doc = (
        "batch norm with fixed statistics and affine, all buffers "
        "(torchvision.ops.FrozenBatchNorm2d: detection backbones)"
    )
    example = ("16,8,8", "- frozen_bn")
    Params = FrozenBatchNormParams
    color = "#fff2cc"
    fuzz: ClassVar[Fuzz] = {"eps": [0.001]}
    autocast = "float32"  # x * scale promotes to the float32 buffers' dtype

    def infer(self, p: FrozenBatchNormParams, shape: Shape) -> Inferred:
        need_image("frozen_bn", shape)
        return Inferred(shape)  # no parameters: four buffers

    def saved(self, p: FrozenBatchNormParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # x * scale keeps the per-channel scale (computed from the buffers each forward)
        if not grad:
            return NOTHING
        return Saved(extra=(Extra("scale", shape[0], "float32", per_sample=False),))

    def build(self, p: FrozenBatchNormParams, shape: Shape) -> Any:
        from archspec.backend.layers import FrozenBatchNorm2d

        return FrozenBatchNorm2d(shape[0], p.eps)
