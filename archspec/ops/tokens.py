"""Tokens: image <-> token reshapes, token selection, and the learnable tensors a spec declares
(class token, position embedding, layer scale).

Shapes are [C, H, W] images, [L, D] tokens or [F] features (batch left out). `to_tokens` turns
an image into one token per position ([H*W, C], a view); `to_image` turns tokens back.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    GLOBAL,
    MAX_KERNEL,
    NOTHING,
    Fuzz,
    Inferred,
    NoParams,
    Op,
    Params,
    Saved,
    Shape,
    need_image,
    need_tokens,
    numel,
    register,
)

TOKEN_COLOR = "#d0e0e3"


@register
class ToTokens(Op):
    name = "to_tokens"
    doc = "a CxHxW image to H*W tokens of C (x.flatten(2).transpose(1, 2), a view)"
    example = ("16,4,4", "- to_tokens")
    color = TOKEN_COLOR

    def infer(self, p: Any, shape: Shape) -> Inferred:
        c, h, w = need_image(self.name, shape)
        return Inferred((h * w, c))

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(alias=True)

    def token_grid(
        self, p: Any, shape: Shape, out: Shape, grid: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        return (shape[1], shape[2])  # one token per position, row by row

    def build(self, p: Any, shape: Shape) -> Any:
        from archspec.backend.layers import ToTokens as Module

        return Module()


class ToImageParams(Params):
    h: int | None = Field(
        None,
        ge=1,
        le=MAX_KERNEL,
        description="height (default: the tokens' grid where known, e.g. the image `to_tokens` "
        "read; else a square)",
    )
    w: int | None = Field(None, ge=1, le=MAX_KERNEL, description="width (default: L / h)")


def grid(op: str, p: ToImageParams, n: int) -> tuple[int, int]:
    """The h x w grid n tokens lie on: `h`/`w` as given (one implies the other; the walk gives
    both for tokens whose grid it knows, Op.reads_grid), else a square."""
    if p.h is None and p.w is None:
        side = math.isqrt(n)
        if side * side != n:
            raise Problem(
                "E-SHAPE-TOKENS",
                f"{op}: {n} tokens are not a square grid",
                f"the tokens' grid is not known here: give it as `{op}: {{h: H, w: W}}` "
                f"with H*W = {n}",
            )
        return side, side
    h = p.h if p.h is not None else n // max(1, p.w or 1)
    w = p.w if p.w is not None else n // max(1, h)
    if h * w != n:
        raise Problem(
            "E-SHAPE-TOKENS",
            f"{op}: a {h}x{w} grid holds {h * w} tokens, but there are {n}",
            f"choose h and w with h*w = {n}",
        )
    return h, w


@register
class ToImage(Op):
    name = "to_image"
    doc = "tokens LxD to a DxHxW image, H*W = L (the inverse of `to_tokens`, a view)"
    example = ("16,4,4", "- to_tokens\n- to_image\n- to_tokens\n- to_image: {h: 2, w: 8}")
    Params = ToImageParams
    color = TOKEN_COLOR
    fuzz: ClassVar[Fuzz] = {"h": [1, 2]}
    reads_grid = True

    def infer(self, p: ToImageParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        h, w = grid(self.name, p, n)
        return Inferred((d, h, w))

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(alias=True)

    def build(self, p: ToImageParams, shape: Shape) -> Any:
        from archspec.backend.layers import ToImage as Module

        return Module(*grid(self.name, p, shape[0]))


@register
class TransposeTokens(Op):
    name = "transpose_tokens"
    aliases = ("transpose",)
    doc = (
        "swap the two axes of tokens: LxD -> DxL (x.transpose(1, 2), a view; MLP-Mixer's token "
        "mixing: a `linear` after it mixes the L positions)"
    )
    example = ("64,32", "- transpose_tokens\n- linear: {out: 16}\n- transpose_tokens")
    color = TOKEN_COLOR

    def infer(self, p: Any, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        return Inferred((d, n))

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(alias=True)

    def token_grid(
        self, p: Any, shape: Shape, out: Shape, grid: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        return None  # its "tokens" are the channels, even where there are as many (L = D)

    def build(self, p: Any, shape: Shape) -> Any:
        from archspec.backend.layers import TransposeTokens as Module

        return Module()


class TokenParams(Params):
    index: int = Field(0, ge=-(1 << 20), le=(1 << 20) - 1, description="which token (0: first)")


@register
class Token(Op):
    name = "token"
    doc = "one token of LxD tokens as D features (ViT's class token: x[:, 0])"
    example = ("50,64", "- token: {index: 0}")
    Params = TokenParams
    color = TOKEN_COLOR
    fuzz: ClassVar[Fuzz] = {"index": [0, -1]}

    def infer(self, p: TokenParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        if not -n <= p.index < n:
            raise Problem(
                "E-RANGE",
                f"token index {p.index} is out of range for {n} tokens",
                f"use an index in [{-n}, {n - 1}]",
                field="index",
            )
        return Inferred((d,))

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(alias=True)  # a view of the tokens

    def build(self, p: TokenParams, shape: Shape) -> Any:
        from archspec.backend.layers import TakeToken

        return TakeToken(p.index)

    def describe(self, p: TokenParams) -> str:
        return f"token {p.index}"


@register
class MeanTokens(Op):
    name = "mean_tokens"
    doc = "the mean of LxD tokens as D features (x.mean(1))"
    example = ("49,64", "- mean_tokens")
    Params = NoParams
    color = TOKEN_COLOR

    def infer(self, p: Any, shape: Shape) -> Inferred:
        _, d = need_tokens(self.name, shape)
        return Inferred((d,), window=GLOBAL)  # sees every position, like `gap`

    def build(self, p: Any, shape: Shape) -> Any:
        from archspec.backend.layers import MeanTokens as Module

        return Module()


# ------------------------------------------------------------------ learnable tensors


class TensorParams(Params):
    init: float = Field(0.0, description="initial value of every element")
    std: float | None = Field(
        None, ge=0, description="initialise from a normal distribution N(init, std) instead"
    )


class _Tensor(Op):
    """A learnable tensor the spec declares: built as an nn.Parameter registered on the
    enclosing module under the layer's `name` (see Op.tensor)."""

    tensor = True
    Params = TensorParams
    color = "#ead1dc"
    fuzz: ClassVar[Fuzz] = {"init": [0.5], "std": [0.02]}

    def shape_of(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def infer(self, p: TensorParams, shape: Shape) -> Inferred:
        return Inferred(shape, numel(self.shape_of(shape)))

    def build(self, p: TensorParams, shape: Shape) -> Any:
        import torch
        from torch import nn

        t = torch.full(self.shape_of(shape), p.init)
        if p.std is not None:
            t.normal_(p.init, p.std)
        return nn.Parameter(t)


@register
class ClassToken(_Tensor):
    name = "class_token"
    doc = "prepend a learnable token: L x D -> (L+1) x D (ViT's class_token, initialised to 0)"
    example = ("49,64", "- class_token")

    def shape_of(self, shape: Shape) -> Shape:
        return (1, 1, shape[-1])

    def infer(self, p: TensorParams, shape: Shape) -> Inferred:
        n, d = need_tokens(self.name, shape)
        return Inferred((n + 1, d), d)

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return NOTHING  # cat keeps only sizes

    def code(self, p: Any, shape: Shape, param: str, x: str) -> str:
        return f"torch.cat([{param}.expand({x}.shape[0], -1, -1), {x}], 1)"


@register
class PosEmbedding(_Tensor):
    name = "pos_embedding"
    doc = "add a learnable tensor of the input's shape (ViT's position embedding)"
    example = ("50,64", "- pos_embedding: {std: 0.02}")

    def shape_of(self, shape: Shape) -> Shape:
        return (1, *shape)

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return NOTHING  # an addition keeps nothing

    def code(self, p: Any, shape: Shape, param: str, x: str) -> str:
        return f"{x} + {param}"


@register
class LayerScale(_Tensor):
    name = "layer_scale"
    doc = (
        "multiply each channel (or feature) by a learnable scale (ConvNeXt's layer_scale, "
        "C x 1 x 1 on an image)"
    )
    example = ("16,8,8", "- layer_scale: {init: 0.000001}")

    def shape_of(self, shape: Shape) -> Shape:
        return (shape[0], 1, 1) if len(shape) == 3 else (shape[-1],)

    def saved(self, p: Any, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(input=True)  # for the scale's gradient

    def code(self, p: Any, shape: Shape, param: str, x: str) -> str:
        return f"{param} * {x}"
