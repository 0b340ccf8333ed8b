"""Attention over tokens: multi-head self-attention as torch.nn.MultiheadAttention."""

from __future__ import annotations

from typing import Any, ClassVar

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    GLOBAL,
    Extra,
    Fuzz,
    Inferred,
    Op,
    Params,
    Saved,
    Shape,
    need_tokens,
    register,
)


def heads_divide(op: str, heads: int, d: int) -> None:
    """Attention heads split the token width: `heads` must divide D (E-HEADS at `heads`)."""
    if d % heads:
        raise Problem(
            "E-HEADS",
            f"{op}: {heads} heads do not divide the token width {d}",
            f"use a number of heads that divides {d}",
            field="heads",
        )


class AttentionParams(Params):
    heads: int = Field(ge=1, le=1 << 12, description="attention heads (they split D)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention weights")
    bias: bool = Field(True, description="learn the projections' biases")


@register
class Attention(Op):
    name = "attention"
    aliases = ("self_attention", "multihead_attention", "mha")
    doc = (
        "multi-head self-attention over LxD tokens (torch.nn.MultiheadAttention, batch_first, "
        "called as attention(x, x, x, need_weights=False) like torchvision's ViT)"
    )
    example = ("50,64", "- attention: {heads: 4}")
    Params = AttentionParams
    color = "#b4a7d6"
    fuzz: ClassVar[Fuzz] = {"heads": [1, 2], "dropout": [0.1], "bias": [False]}
    autocast = "lower"

    def infer(self, p: AttentionParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        heads_divide(self.name, p.heads, d)
        params = 4 * d * d + (4 * d if p.bias else 0)
        # the q/k/v and output projections, then Q·Kᵀ and attention·V (as flop_counter counts)
        macs = 4 * n * d * d + 2 * n * n * d
        return Inferred(shape, params, macs, GLOBAL)  # every token sees every token

    def saved(self, p: AttentionParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        n, d = shape
        # batch_first input transposed to L x N x D: the in-projection's matmul keeps a
        # contiguous copy (none at batch 1); q, k, v share the packed projection (3 L D).
        # Without dropout the fused CPU kernel of scaled_dot_product_attention keeps its output
        # (laid out so the out-projection reads it without a copy) and a float32 logsumexp per
        # head and query; with dropout the math path keeps scaled q, kᵀ, the softmax, its mask
        # and the dropped weights, and the out-projection a copy of its input.
        h = p.heads
        extra = [Extra("input copy", n * d), Extra("q, k, v", 3 * n * d)]
        if p.dropout == 0:
            extra += [Extra("attention output", n * d), Extra("logsumexp", h * n, "float32")]
        else:
            extra += [
                Extra("scaled q, k", 2 * n * d),
                Extra("attention weights", 3 * h * n * n),
                Extra("out-projection input", n * d),
            ]
        return Saved(extra=tuple(extra), weight=4 * d * d if grad else 0)

    def build(self, p: AttentionParams, shape: Shape) -> Any:
        from archspec.backend.layers import SelfAttention

        return SelfAttention(shape[1], p.heads, dropout=p.dropout, bias=p.bias, batch_first=True)

    def describe(self, p: AttentionParams) -> str:
        return f"attention {p.heads}h"
