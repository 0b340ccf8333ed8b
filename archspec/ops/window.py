"""Attention within windows of tokens laid out on a grid, and patch merging, built as
torchvision's modules (their parameter and buffer names): Swin's shifted-window attention with
relative position bias (v1; v2: cosine attention and a log-spaced continuous position bias
MLP) and patch merging; MaxViT's relative-position attention within P x P windows or a P x P
grid of strided tokens."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.attention import heads_divide
from archspec.ops.base import (
    GLOBAL,
    MAX_KERNEL,
    Extra,
    Fuzz,
    Inferred,
    IntOrPair,
    Op,
    Saved,
    Shape,
    Window,
    check_pair,
    need_tokens,
    register,
)
from archspec.ops.tokens import ToImageParams, grid


class WindowParams(ToImageParams):
    heads: int = Field(ge=1, le=1 << 12, description="attention heads (they split D)")
    window: IntOrPair = Field(description="window size (tokens per side)")
    shift: IntOrPair = Field(
        0, description="cyclic shift of the windows (Swin: window // 2 on every other block)"
    )
    version: Literal[1, 2] = Field(1, description="1: Swin; 2: Swin V2 (cosine attention, CPB MLP)")
    bias: bool = Field(True, description="learn the q/k/v projection's bias")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after the output projection")
    attention_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the attention weights"
    )


def window_macs(tokens: int, d: int, per_window: int) -> int:
    """Attention within windows of `per_window` tokens, as flop_counter counts it: the q/k/v
    and output projections (4 L D²), then Q·Kᵀ and attention·V within each window (2 L P D)."""
    return 4 * tokens * d * d + 2 * tokens * per_window * d


def window_saved(tokens: int, d: int, heads: int, per_window: int) -> tuple[Extra, ...]:
    """What autograd keeps of attention within windows (measured on a CPU): the partitioned
    input of the q/k/v projection, q, k (scaled), v and the output projection's input (5 L D),
    and the softmax (heads x L x window tokens)."""
    return (
        Extra("q, k, v, partitions", 5 * tokens * d),
        Extra("attention", heads * tokens * per_window),
    )


CPB_HIDDEN = (
    512  # torchvision's continuous position bias MLP: Linear(2, 512), ReLU, Linear(512, heads)
)


@register
class WindowAttention(Op):
    name = "window_attention"
    doc = (
        "shifted-window multi-head self-attention with relative position bias over LxD tokens on "
        "an h x w grid (torchvision's ShiftedWindowAttention, V2 with `version: 2`)"
    )
    example = (
        "64,32",
        "- window_attention: {heads: 2, window: 4}\n- window_attention: {heads: 2, window: 4, shift: 2, version: 2}",
    )
    Params = WindowParams
    color = "#b4a7d6"
    fuzz: ClassVar[Fuzz] = {"heads": [1, 2], "window": [2, 3], "shift": [0, 1], "version": [1, 2]}
    autocast = "lower"
    reads_grid = True

    def geometry(self, p: WindowParams) -> tuple[tuple[int, int], tuple[int, int]]:
        win = check_pair("window", p.window, 1, MAX_KERNEL)
        shift = check_pair("shift", p.shift, 0, MAX_KERNEL)
        return win, shift

    def infer(self, p: WindowParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        h, w = grid(self.name, p, n)
        (wh, ww), _ = self.geometry(p)
        heads_divide(self.name, p.heads, d)
        table = (2 * wh - 1) * (2 * ww - 1)
        params = 4 * d * d + 3 * d + d  # qkv (+ bias), proj (+ bias)
        if p.version == 1:
            params += table * p.heads
        else:
            params += (
                p.heads + 2 * CPB_HIDDEN + CPB_HIDDEN + CPB_HIDDEN * p.heads
            )  # logit_scale, cpb
            params -= 3 * d if not p.bias else 0
        if not p.bias and p.version == 1:
            params -= 3 * d
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww  # padded to whole windows
        macs = window_macs(hp * wp, d, wh * ww)
        if p.version == 2:
            macs += table * (2 * CPB_HIDDEN + CPB_HIDDEN * p.heads)
        return Inferred(shape, params, macs)

    def saved(self, p: WindowParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        # Measured on a CPU (torchvision's shifted_window_attention): the window-partitioned
        # input, scaled q, kᵀ, v and the output projection's input (5 Lp D over the padded
        # tokens), the softmax (heads x Lp x window tokens); V2 also the packed q/k/v (3 Lp D),
        # the norms of q and k (2 heads Lp each) and the attention before the softmax, plus
        # per batch the position-bias MLP's hidden layer, the bias and the clamped logit scale.
        n, d = shape
        (wh, ww), _ = self.geometry(p)
        h, w = grid(self.name, p, n)
        lp = -(-h // wh) * wh * (-(-w // ww) * ww)
        att = p.heads * lp * wh * ww
        extra = list(window_saved(lp, d, p.heads, wh * ww))
        if p.version == 2:
            table = (2 * wh - 1) * (2 * ww - 1)
            extra += [
                Extra("packed q, k, v", 3 * lp * d),
                Extra("q, k norms", 4 * p.heads * lp),
                Extra("logits", att),
                Extra(
                    "position bias",
                    table * CPB_HIDDEN + p.heads * (wh * ww) ** 2 + p.heads,
                    per_sample=False,
                ),
            ]
        return Saved(extra=tuple(extra))

    def build(self, p: WindowParams, shape: Shape) -> Any:
        from archspec.backend.layers import window_attention

        h, w = grid(self.name, p, shape[0])
        win, shift = self.geometry(p)
        return window_attention(
            p.version,
            h,
            w,
            shape[1],
            list(win),
            list(shift),
            p.heads,
            qkv_bias=p.bias,
            attention_dropout=p.attention_dropout,
            dropout=p.dropout,
        )

    def describe(self, p: WindowParams) -> str:
        return f"window_attention {p.heads}h"


class MergeParams(ToImageParams):
    version: Literal[1, 2] = Field(1, description="1: norm then reduction; 2: reduction then norm")


@register
class PatchMerging(Op):
    name = "patch_merging"
    doc = (
        "patch merging (Swin): each 2x2 group of tokens on an h x w grid concatenated (4D), "
        "LayerNorm and a linear map to 2D (torchvision's PatchMerging, V2 with `version: 2`)"
    )
    example = ("64,32", "- patch_merging")
    Params = MergeParams
    color = "#d0e0e3"
    fuzz: ClassVar[Fuzz] = {"version": [1, 2]}
    autocast = "lower"
    reads_grid = True

    def infer(self, p: MergeParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        h, w = grid(self.name, p, n)
        l2 = ((h + 1) // 2) * ((w + 1) // 2)
        norm = 2 * (4 * d if p.version == 1 else 2 * d)
        return Inferred((l2, 2 * d), 8 * d * d + norm, l2 * 8 * d * d)

    def token_grid(
        self, p: MergeParams, shape: Shape, out: Shape, grid_in: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        h, w = grid(self.name, p, shape[0])
        return ((h + 1) // 2, (w + 1) // 2)  # odd sides padded, as torchvision does

    def saved(self, p: MergeParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        n, d = shape
        h, w = grid(self.name, p, n)
        l2 = ((h + 1) // 2) * ((w + 1) // 2)
        return Saved(extra=(Extra("merged", 4 * l2 * d), Extra("stats", 2 * l2, "float32")))

    def build(self, p: MergeParams, shape: Shape) -> Any:
        from archspec.backend.layers import patch_merging

        h, w = grid(self.name, p, shape[0])
        return patch_merging(p.version, h, w, shape[1])


class PartitionParams(ToImageParams):
    heads: int = Field(ge=1, le=1 << 12, description="attention heads (they split D)")
    window: int = Field(
        ge=1, le=MAX_KERNEL, description="P: the windows' (or the grid's) size, P x P tokens"
    )
    partition: Literal["window", "grid"] = Field(
        "window",
        description="window: P x P blocks of neighbours; grid: a P x P grid of tokens spread "
        "over the whole h x w (stride h/P, w/P)",
    )


@register
class PartitionAttention(Op):
    name = "partition_attention"
    doc = (
        "multi-head self-attention with relative position bias within P x P windows, or a "
        "P x P grid, of LxD tokens on an h x w grid (MaxViT; torchvision's "
        "RelativePositionalMultiHeadAttention between its window partition and departition)"
    )
    example = (
        "64,32",
        (
            "- partition_attention: {heads: 2, window: 4}\n"
            "- partition_attention: {heads: 2, window: 4, partition: grid}"
        ),
    )
    Params = PartitionParams
    color = "#b4a7d6"
    fuzz: ClassVar[Fuzz] = {"heads": [1, 2], "window": [1, 2], "partition": ["window", "grid"]}
    autocast = "lower"
    reads_grid = True

    def infer(self, p: PartitionParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        h, w = grid(self.name, p, n)
        heads_divide(self.name, p.heads, d)
        if h % p.window or w % p.window:
            what = "windows" if p.partition == "window" else "a grid"
            raise Problem(
                "E-WINDOW",
                f"{self.name}: {p.window}x{p.window} {what} do not tile the {h}x{w} token grid",
                f"use a `window` that divides {h} and {w}, or an input that gives such a grid",
                field="window",
            )
        table = (2 * p.window - 1) ** 2
        params = 4 * d * d + 4 * d + table * p.heads  # to_qkv, merge (+ biases), bias table
        # a token sees its P x P window, or (grid) tokens spread over the whole image
        seen = GLOBAL if p.partition == "grid" else Window((p.window, p.window), (1, 1))
        return Inferred(shape, params, window_macs(n, d, p.window**2), seen)

    def saved(self, p: PartitionParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(extra=window_saved(shape[0], shape[1], p.heads, p.window**2))

    def build(self, p: PartitionParams, shape: Shape) -> Any:
        from archspec.backend.layers import PartitionAttention as Module

        h, w = grid(self.name, p, shape[0])
        return Module(shape[1], p.heads, p.window, h, w, p.partition == "grid")

    def describe(self, p: PartitionParams) -> str:
        return f"{p.partition}_attention {p.heads}h"
