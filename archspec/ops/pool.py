"""Pooling: windowed (max, average), adaptive and global."""

from __future__ import annotations

from typing import Any, ClassVar

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    MAX_KERNEL,
    NOTHING,
    Extra,
    Fuzz,
    Inferred,
    IntOrPair,
    NoParams,
    Op,
    Params,
    Saved,
    Shape,
    Window,
    check_pair,
    collapse,
    fmt,
    need_image,
    numel,
    register,
)
from archspec.ops.shapes import adaptive_window, pair, pool_out

POOL_COLOR = "#d9ead3"


class MaxPoolParams(Params):
    k: IntOrPair = Field(description="window size")
    stride: IntOrPair | None = Field(None, description="stride (default: the window size)")
    pad: IntOrPair = Field(0, description="implicit -inf padding, at most half the window")
    dilation: IntOrPair = Field(1, description="dilation")
    ceil_mode: bool = Field(False, description="round the output size up instead of down")


class AvgPoolParams(Params):
    k: IntOrPair = Field(description="window size")
    stride: IntOrPair | None = Field(None, description="stride (default: the window size)")
    pad: IntOrPair = Field(0, description="implicit zero padding, at most half the window")
    ceil_mode: bool = Field(False, description="round the output size up instead of down")
    count_include_pad: bool = Field(True, description="average over padded zeros too")


class _Pool(Op):
    color = POOL_COLOR
    fuzz: ClassVar[Fuzz] = {
        "k": [1, 2, 3, [2, 3]],
        "stride": [1, 2],
        "pad": [0, 1],
        "ceil_mode": [True],
    }

    def geometry(self, p: Any) -> tuple[tuple[int, int], ...]:
        k = check_pair("k", p.k, 1, MAX_KERNEL)
        s = check_pair("stride", p.stride if p.stride is not None else p.k, 1, MAX_KERNEL)
        pad = check_pair("pad", p.pad, 0, MAX_KERNEL)
        d = check_pair("dilation", getattr(p, "dilation", 1), 1, MAX_KERNEL)
        for axis in range(2):
            if pad[axis] > k[axis] // 2:
                raise Problem(
                    "E-POOL-PAD",
                    f"{self.name} pad={pad[axis]} is more than half the window k={k[axis]}",
                    f"PyTorch allows at most pad={k[axis] // 2} for k={k[axis]}",
                )
        return k, s, pad, d

    def infer(self, p: Any, shape: Shape) -> Inferred:
        need_image(self.name, shape)
        k, s, pad, d = self.geometry(p)
        hw = tuple(
            pool_out(size, k[i], s[i], pad[i], d[i], p.ceil_mode)
            for i, size in enumerate(shape[1:])
        )
        if min(hw) <= 0:
            raise collapse(
                self.name,
                f"k={fmt(k)} s={fmt(s)}",
                shape,
                hw,
                "use a larger --input or drop a pool",
            )
        return Inferred((shape[0], hw[0], hw[1]), window=Window(k, s, d))

    def describe(self, p: Any) -> str:
        k = pair(p.k)
        s = pair(p.stride if p.stride is not None else p.k)
        return f"{self.name} {k[0]}x{k[1]}/{s[0]}" + (" ceil" if p.ceil_mode else "")


@register
class MaxPool(_Pool):
    name = "maxpool"
    doc = "2-D max pooling (torch.nn.MaxPool2d)"
    example = ("16,32,32", "- maxpool: {k: 3, stride: 2, pad: 1}")
    Params = MaxPoolParams

    def saved(self, p: MaxPoolParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # max_pool2d_with_indices: the input and int64 argmax indices, one per output element
        return Saved(input=True, extra=(Extra("indices", numel(out), "int64"),))

    def build(self, p: MaxPoolParams, shape: Shape) -> Any:
        from torch import nn

        k, s, pad, d = self.geometry(p)
        return nn.MaxPool2d(k, s, pad, d, ceil_mode=p.ceil_mode)


@register
class AvgPool(_Pool):
    name = "avgpool"
    doc = "2-D average pooling (torch.nn.AvgPool2d)"
    example = ("16,32,32", "- avgpool: {k: 2, stride: 2}")
    Params = AvgPoolParams

    def saved(self, p: AvgPoolParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(input=True)  # avg_pool2d_backward reads the input

    def build(self, p: AvgPoolParams, shape: Shape) -> Any:
        from torch import nn

        k, s, pad, _ = self.geometry(p)
        return nn.AvgPool2d(k, s, pad, p.ceil_mode, p.count_include_pad)


class AdaptiveParams(Params):
    out: IntOrPair = Field(description="output size: n or [h, w]")


class _Adaptive(Op):
    Params = AdaptiveParams
    color = POOL_COLOR
    fuzz: ClassVar[Fuzz] = {"out": [1, 2, 3, 4, [1, 2], [3, 2], [4, 4]]}
    module: ClassVar[str]

    def size(self, p: Any) -> tuple[int, int]:
        return check_pair("out", p.out, 1, MAX_KERNEL)

    def infer(self, p: Any, shape: Shape) -> Inferred:
        c, h, w = need_image(self.name, shape)
        oh, ow = self.size(p)
        (kh, sh), (kw, sw) = adaptive_window(h, oh), adaptive_window(w, ow)
        return Inferred((c, oh, ow), window=Window((kh, kw), (sh, sw)))

    def build(self, p: Any, shape: Shape) -> Any:
        from torch import nn

        return getattr(nn, self.module)(self.size(p))

    def describe(self, p: Any) -> str:
        return f"{self.name} {fmt(self.size(p))}"


@register
class AdaptiveAvgPool(_Adaptive):
    name = "adaptive_avgpool"
    doc = "adaptive average pooling to a fixed size (torch.nn.AdaptiveAvgPool2d)"
    example = ("16,13,13", "- adaptive_avgpool: {out: 6}")
    module = "AdaptiveAvgPool2d"

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        # to 1x1 ATen takes `mean`, which keeps only sizes; otherwise the input
        return NOTHING if out[1:] == (1, 1) else Saved(input=True)


@register
class AdaptiveMaxPool(_Adaptive):
    name = "adaptive_maxpool"
    doc = "adaptive max pooling to a fixed size (torch.nn.AdaptiveMaxPool2d)"
    example = ("16,13,13", "- adaptive_maxpool: {out: [2, 3]}")
    module = "AdaptiveMaxPool2d"

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(input=True, extra=(Extra("indices", numel(out), "int64"),))


class _Global(_Adaptive):
    Params = NoParams  # type: ignore[assignment]  # global pools take no parameters
    fuzz: ClassVar[Fuzz] = {}

    def size(self, p: Any) -> tuple[int, int]:
        return (1, 1)

    def describe(self, p: Any) -> str:
        return self.name


@register
class GlobalAvgPool(_Global):
    name = "gap"
    aliases = ("global_avgpool", "global_average_pool", "AdaptiveAvgPool2d")
    doc = "global average pooling to 1x1 (torch.nn.AdaptiveAvgPool2d(1))"
    example = ("16,7,7", "- gap")
    module = "AdaptiveAvgPool2d"
    saved = AdaptiveAvgPool.saved  # `mean`: nothing kept


@register
class GlobalMaxPool(_Global):
    name = "gmp"
    aliases = ("global_maxpool", "global_max_pool", "AdaptiveMaxPool2d")
    doc = "global max pooling to 1x1 (torch.nn.AdaptiveMaxPool2d(1))"
    example = ("16,7,7", "- gmp")
    module = "AdaptiveMaxPool2d"
    saved = AdaptiveMaxPool.saved  # the input and int64 indices
