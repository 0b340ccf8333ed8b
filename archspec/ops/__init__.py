"""The primitive registry: each op's parameters, shape rule, cost and torch constructor, together.

Adding an op touches one class here. `infer` is pure Python (the checker never imports torch);
`build` imports torch lazily and sizes the layer from the same inferred shapes, so `check` and
`build` cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from archspec.lang.errors import Problem
from archspec.ops.shapes import adaptive_window, pair, pool_out, same_pad

Shape = tuple[int, ...]
MAX_CHANNELS = 1 << 20
MAX_KERNEL = 1 << 14

PosInt = Field(ge=1)
IntOrPair = Union[int, list[int]]  # noqa: UP007  # docs_reference renders typing.Union as "int or [h, w]"


@dataclass(frozen=True)
class Window:
    """How a layer maps spatial positions (for the receptive field)."""

    k: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Inferred:
    out: Shape
    params: int = 0
    macs: int = 0
    window: Window | None = None  # None: pointwise (activation, bn, ...)


@dataclass(frozen=True)
class Extra:
    """A tensor a layer's backward keeps that no other layer shares: indices, a mask, statistics."""

    what: str
    elems: int  # elements per sample, or in all when `per_sample` is False
    # "act": the activation's dtype; "int64"/"float32": fixed; "mask": the activation's dtype on
    # CPU, bool on CUDA (fused dropout); "wide": float32 under autocast, else the activation's
    dtype: str = "act"
    per_sample: bool = True


@dataclass(frozen=True)
class Saved:
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


class Params(BaseModel):
    # defer_build: a check touches a handful of ops; building every schema at import costs ~0.2 s
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class NoParams(Params):
    pass


def fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def need_image(op: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise Problem(
            "E-SHAPE-RANK",
            f"{op} needs a CxHxW input, but gets a flat vector of {shape[0]} features",
            "move `flatten` after the last convolution or pool",
        )
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


class Op:
    """Base of every primitive. Subclasses set `name`, `Params`, `doc` and override rules."""

    name: ClassVar[str]
    doc: ClassVar[str]
    Params: ClassVar[type[Params]] = NoParams
    scales_with_width: ClassVar[bool] = False
    # Output dtype under autocast: "keep" the input's, "lower" (runs in the 16-bit dtype, like
    # conv and linear) or "float32" (an op autocast widens).
    autocast: ClassVar[str] = "keep"

    def infer(self, p: Any, shape: Shape) -> Inferred:
        return Inferred(shape)

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        """Tensors kept for backward; `grad`: the input requires grad (a layer without
        parameters whose input does not records nothing at all — the walker applies that)."""
        return NOTHING

    def build(self, p: Any, shape: Shape) -> Any:
        raise NotImplementedError

    def describe(self, p: Any) -> str:
        """Short label for tables and graphs: `conv 3x3/2`."""
        return self.name


OPS: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    OPS[cls.name] = cls()
    return cls


# --------------------------------------------------------------------------- convolution


class ConvParams(Params):
    out: int = Field(ge=1, le=MAX_CHANNELS, description="output channels")
    k: IntOrPair = Field(description="kernel size: n, or [kh, kw] for rectangular kernels")
    stride: IntOrPair = Field(1, description="stride")
    pad: int | list[int] | Literal["same", "valid"] = Field(
        0, description="zero padding per side, [ph, pw], `same` (stride 1 only) or `valid`"
    )
    dilation: IntOrPair = Field(1, description="dilation")
    groups: int = Field(1, ge=1, le=MAX_CHANNELS, description="grouped convolution")
    bias: bool = Field(True, description="learn an additive bias")


@register
class Conv(Op):
    name = "conv"
    doc = "2-D convolution (torch.nn.Conv2d)"
    Params = ConvParams
    scales_with_width = True
    autocast = "lower"

    def geometry(self, p: ConvParams) -> tuple[tuple[int, int], ...]:
        k = check_pair("k", p.k, 1, MAX_KERNEL)
        s = check_pair("stride", p.stride, 1, MAX_KERNEL)
        d = check_pair("dilation", p.dilation, 1, MAX_KERNEL)
        if p.pad == "same":
            if s != (1, 1):
                raise Problem(
                    "E-PAD-SAME",
                    f"`pad: same` needs stride 1, got stride {p.stride}",
                    "PyTorch only supports padding='same' at stride 1; give the padding as numbers",
                )
            pads = (same_pad(k[0], d[0]), same_pad(k[1], d[1]))
            pad = (pads[0][0] + pads[0][1], pads[1][0] + pads[1][1])  # total per axis
            return k, s, d, pad
        pv = 0 if p.pad == "valid" else p.pad
        ph, pw = check_pair("pad", pv, 0, MAX_KERNEL)  # type: ignore[arg-type]
        return k, s, d, (2 * ph, 2 * pw)

    def infer(self, p: ConvParams, shape: Shape) -> Inferred:
        c, h, w = need_image("conv", shape)
        k, s, d, pad2 = self.geometry(p)
        if c % p.groups or p.out % p.groups:
            raise Problem(
                "E-GROUPS",
                f"groups={p.groups} must divide both input channels ({c}) and out ({p.out})",
                f"use a groups value that divides {c} and {p.out}",
            )
        hw = tuple(
            (size + pad2[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, size in enumerate((h, w))
        )
        if min(hw) <= 0:
            raise collapse(
                "conv",
                f"k={fmt(k)} s={fmt(s)}",
                shape,
                hw,
                "use a larger --input, a smaller kernel or more padding",
            )
        per_out = (c // p.groups) * k[0] * k[1]
        params = p.out * per_out + (p.out if p.bias else 0)
        macs = p.out * hw[0] * hw[1] * per_out
        return Inferred((p.out, hw[0], hw[1]), params, macs, Window(k, s, d))

    def saved(self, p: ConvParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # ConvolutionBackward keeps input and weight (for grad_weight even if the input needs none)
        k = pair(p.k)
        return Saved(input=True, weight=p.out * (shape[0] // p.groups) * k[0] * k[1])

    def build(self, p: ConvParams, shape: Shape) -> Any:
        from torch import nn

        k, s, d, _ = self.geometry(p)
        pad = p.pad if isinstance(p.pad, str) else pair(p.pad)
        return nn.Conv2d(shape[0], p.out, k, s, pad, d, p.groups, p.bias)

    def describe(self, p: ConvParams) -> str:
        k = pair(p.k)
        s = pair(p.stride)
        label = f"conv {k[0]}x{k[1]}"
        if s != (1, 1):
            label += f"/{s[0]}" if s[0] == s[1] else f"/{s[0]}x{s[1]}"
        return label + (f" g{p.groups}" if p.groups > 1 else "")


# --------------------------------------------------------------------------- pooling


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
    module = "AdaptiveAvgPool2d"

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        # to 1x1 ATen takes `mean`, which keeps only sizes; otherwise the input
        return NOTHING if out[1:] == (1, 1) else Saved(input=True)


@register
class AdaptiveMaxPool(_Adaptive):
    name = "adaptive_maxpool"
    doc = "adaptive max pooling to a fixed size (torch.nn.AdaptiveMaxPool2d)"
    module = "AdaptiveMaxPool2d"

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(input=True, extra=(Extra("indices", numel(out), "int64"),))


class _Global(_Adaptive):
    Params = NoParams  # type: ignore[assignment]  # global pools take no parameters

    def size(self, p: Any) -> tuple[int, int]:
        return (1, 1)

    def describe(self, p: Any) -> str:
        return self.name


@register
class GlobalAvgPool(_Global):
    name = "gap"
    doc = "global average pooling to 1x1 (torch.nn.AdaptiveAvgPool2d(1))"
    module = "AdaptiveAvgPool2d"
    saved = AdaptiveAvgPool.saved  # `mean`: nothing kept


@register
class GlobalMaxPool(_Global):
    name = "gmp"
    doc = "global max pooling to 1x1 (torch.nn.AdaptiveMaxPool2d(1))"
    module = "AdaptiveMaxPool2d"
    saved = AdaptiveMaxPool.saved  # the input and int64 indices


# --------------------------------------------------------------------------- dense layers


@register
class Flatten(Op):
    name = "flatten"
    doc = "flatten CxHxW to C*H*W features (torch.nn.Flatten)"

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
    doc = "fully connected layer (torch.nn.Linear)"
    Params = LinearParams
    autocast = "lower"

    def infer(self, p: LinearParams, shape: Shape) -> Inferred:
        if len(shape) != 1:
            raise Problem(
                "E-SHAPE-RANK",
                f"linear needs flat features, but gets a {fmt(shape)} tensor",
                "insert `flatten` (or `gap`, `flatten`) before `linear`",
            )
        return Inferred((p.out,), shape[0] * p.out + (p.out if p.bias else 0), shape[0] * p.out)

    def saved(self, p: LinearParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # addmm/mm keep the input (for grad_weight) and weight.t() only when the input needs grad
        return Saved(input=True, weight=shape[0] * p.out if grad else 0)

    def build(self, p: LinearParams, shape: Shape) -> Any:
        from torch import nn

        return nn.Linear(shape[0], p.out, p.bias)

    def describe(self, p: LinearParams) -> str:
        return f"linear {p.out}"


# --------------------------------------------------------------------------- normalisation


class BatchNormParams(Params):
    eps: float = Field(1e-5, gt=0, lt=1, description="added to the variance")
    momentum: float = Field(0.1, ge=0, le=1, description="running-statistics momentum")
    affine: bool = Field(True, description="learn a scale and shift")


@register
class BatchNorm(Op):
    name = "bn"
    doc = "batch normalisation over channels (BatchNorm2d on images, BatchNorm1d on features)"
    Params = BatchNormParams

    def infer(self, p: BatchNormParams, shape: Shape) -> Inferred:
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
    Params = LrnParams
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
    Params = DropoutParams

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


# --------------------------------------------------------------------------- activations


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
) -> None:
    cls = type(
        module,
        (_Activation,),
        {
            "name": name,
            "module": module,
            "Params": params,
            "doc": f"torch.nn.{module}",
            "keeps": keeps,
            "inplace_keeps": inplace_keeps,
        },
    )
    register(cls)


_activation("relu", "ReLU", InplaceParams, keeps="output")
_activation("relu6", "ReLU6", InplaceParams, inplace_keeps="copy")
_activation("leaky_relu", "LeakyReLU", LeakyParams)
_activation("silu", "SiLU", InplaceParams, inplace_keeps="copy")
_activation("hardswish", "Hardswish", InplaceParams, inplace_keeps="copy")
_activation("sigmoid", "Sigmoid", keeps="output")
_activation("tanh", "Tanh", keeps="output")
_activation("gelu", "GELU")
_activation("identity", "Identity", keeps="nothing")
