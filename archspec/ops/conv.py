"""Convolution."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    MAX_CHANNELS,
    MAX_KERNEL,
    Fuzz,
    Inferred,
    IntOrPair,
    Op,
    Params,
    Saved,
    Shape,
    Window,
    check_pair,
    collapse,
    fmt,
    need_image,
    register,
)
from archspec.ops.shapes import pair, same_pad


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
    aliases = ("convolution", "Conv2d")
    doc = "2-D convolution (torch.nn.Conv2d)"
    example = (
        "3,32,32",
        (
            "- conv: {out: 16, k: 3, pad: 1}            # 3x3, same size\n"
            "- conv: {out: 32, k: 3, stride: 2, pad: 1}  # halves the size\n"
            "- conv: {out: 32, k: [1, 7], pad: [0, 3]}   # rectangular kernel\n"
            "- conv: {out: 32, k: 3, pad: same, groups: 32, bias: false}  # depthwise"
        ),
    )
    Params = ConvParams
    color = "#cfe2f3"
    fuzz: ClassVar[Fuzz] = {
        "out": [1, 2, 4, 8],
        "k": [1, 3, 5, [1, 3], [3, 1]],
        "stride": [1, 2, [2, 1]],
        "pad": [0, 1, [0, 1], "same", "valid"],
        "dilation": [1, 2],
        "groups": [1],
        "bias": [True, False],
    }
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
        _groups(c, p)
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


class ConvTransposeParams(ConvParams):
    pad: IntOrPair = Field(0, description="cropped from each side of the full output")  # type: ignore[assignment]
    output_padding: IntOrPair = Field(0, description="added to one side (less than the stride)")


@register
class ConvTranspose(Op):
    name = "convtranspose"
    aliases = ("deconv", "conv_transpose", "ConvTranspose2d")
    doc = "2-D transposed convolution (torch.nn.ConvTranspose2d)"
    example = (
        "16,8,8",
        (
            "- convtranspose: {out: 8, k: 2, stride: 2}   # doubles the size (U-Net up-conv)\n"
            "- convtranspose: {out: 4, k: 3, stride: 2, pad: 1, output_padding: 1}"
        ),
    )
    Params = ConvTransposeParams
    color = "#cfe2f3"
    fuzz: ClassVar[Fuzz] = {
        "out": [1, 2, 4],
        "k": [1, 2, 3, [2, 3]],
        "stride": [1, 2, [2, 1]],
        "pad": [0, 1],
        "dilation": [1, 2],
        "bias": [True, False],
    }
    autocast = "lower"  # `width:` scales conv's `out` only (docs/language.md)

    def geometry(self, p: ConvTransposeParams) -> tuple[tuple[int, int], ...]:
        k = check_pair("k", p.k, 1, MAX_KERNEL)
        s = check_pair("stride", p.stride, 1, MAX_KERNEL)
        d = check_pair("dilation", p.dilation, 1, MAX_KERNEL)
        pad = check_pair("pad", p.pad, 0, MAX_KERNEL)
        op = check_pair("output_padding", p.output_padding, 0, MAX_KERNEL)
        for i in (0, 1):
            if op[i] >= max(s[i], d[i]):
                raise Problem(
                    "E-RANGE",
                    f"`output_padding` {op[i]} must be less than the stride or the dilation",
                    None,
                    field="output_padding",
                )
        return k, s, d, pad, op

    def infer(self, p: ConvTransposeParams, shape: Shape) -> Inferred:
        c, h, w = need_image("convtranspose", shape)
        k, s, d, pad, op = self.geometry(p)
        _groups(c, p)
        hw = tuple(
            (size - 1) * s[i] - 2 * pad[i] + d[i] * (k[i] - 1) + op[i] + 1
            for i, size in enumerate((h, w))
        )
        if min(hw) <= 0:
            raise collapse("convtranspose", f"pad={fmt(pad)}", shape, hw, "use less padding")
        per_in = (p.out // p.groups) * k[0] * k[1]
        params = c * per_in + (p.out if p.bias else 0)
        # FlopCounterMode counts a transposed convolution over its input positions
        macs = h * w * c * per_in
        # each output position sees ceil(k / s) input positions per axis
        seen = tuple(-(-(d[i] * (k[i] - 1) + 1) // s[i]) for i in (0, 1))
        window = Window(seen, (1, 1), up=s)  # type: ignore[arg-type]
        return Inferred((p.out, hw[0], hw[1]), params, macs, window)

    def saved(self, p: ConvTransposeParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        k = pair(p.k)
        return Saved(input=True, weight=shape[0] * (p.out // p.groups) * k[0] * k[1])

    def build(self, p: ConvTransposeParams, shape: Shape) -> Any:
        from torch import nn

        k, s, d, pad, op = self.geometry(p)
        return nn.ConvTranspose2d(shape[0], p.out, k, s, pad, op, p.groups, p.bias, d)

    def describe(self, p: ConvTransposeParams) -> str:
        k = pair(p.k)
        s = pair(p.stride)
        return f"convT {k[0]}x{k[1]}" + (f"/{s[0]}" if s != (1, 1) and s[0] == s[1] else "")


def _groups(c: int, p: ConvParams) -> None:
    if c % p.groups or p.out % p.groups:
        raise Problem(
            "E-GROUPS",
            f"groups={p.groups} must divide both input channels ({c}) and out ({p.out})",
            f"use a groups value that divides {c} and {p.out}",
        )
