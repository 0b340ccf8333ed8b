"""The torch modules of ops that torch.nn lacks as such: each is one small class whose
parameter names are torchvision's, so its state_dicts load strictly. Imported by the ops'
`build` (never by `check`). Modules that follow another tensor's size (`ResizeTo`, `CropTo`,
`PadTo`) take it as a second input, so a built network works at any input size; TorchScript
and FX read the code as written."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each position of an NCHW image (torchvision's
    convnext.LayerNorm2d: the same parameters as nn.LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ToTokens(nn.Module):
    """N x C x H x W -> N x (H*W) x C: one token per position (a view, nothing copied)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class ToImage(nn.Module):
    """N x (H*W) x C -> N x C x H x W (a view: the inverse of ToTokens)."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.h, self.w)

    def extra_repr(self) -> str:
        return f"h={self.h}, w={self.w}"


class TakeToken(nn.Module):
    """N x L x D -> N x D: the token at `index` (ViT's x[:, 0])."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


class TransposeTokens(nn.Module):
    """N x L x D -> N x D x L (a view: nothing copied)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class MeanTokens(nn.Module):
    """N x L x D -> N x D: the mean over the tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


class SelfAttention(nn.MultiheadAttention):
    """Multi-head self-attention on N x L x D tokens: nn.MultiheadAttention (batch_first)
    called as attention(x, x, x, need_weights=False), as torchvision's ViT encoder block does —
    the same parameters (in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # what nn.MultiheadAttention.forward runs for batch_first self-attention (outside its
        # inference fast path), written out so TorchScript can script it
        t = x.transpose(0, 1)
        out, _ = F.multi_head_attention_forward(
            t,
            t,
            t,
            self.embed_dim,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            self.out_proj.weight,
            self.out_proj.bias,
            training=self.training,
            need_weights=False,
        )
        return out.transpose(0, 1)


def _grid(cls: type, name: str) -> type:
    """A torchvision Swin module (N x H x W x C) taking N x L x C tokens on an h x w grid."""

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        n, _, c = x.shape
        y = cls.forward(self, x.reshape(n, self.h, self.w, c))  # type: ignore[attr-defined]
        return y.reshape(n, -1, y.shape[-1])

    return type(name, (cls,), {"forward": forward, "__module__": __name__})


def window_attention(version: int, h: int, w: int, *args: object, **kw: object) -> nn.Module:
    """torchvision's ShiftedWindowAttention(V2) on tokens: the same parameters and buffers."""
    cls = _WINDOW[version - 1]
    module = cls(*args, **kw)
    module.h, module.w = h, w
    return module


def patch_merging(version: int, h: int, w: int, dim: int) -> nn.Module:
    """torchvision's PatchMerging(V2) on tokens: 2x2 neighbours concatenated, LayerNorm, linear."""
    module = _MERGE[version - 1](dim)
    module.h, module.w = h, w
    return module


from torchvision.models import maxvit as _mv  # type: ignore[import-untyped]
from torchvision.models import swin_transformer as _sw  # type: ignore[import-untyped]

_WINDOW = (
    _grid(_sw.ShiftedWindowAttention, "WindowAttention"),
    _grid(_sw.ShiftedWindowAttentionV2, "WindowAttentionV2"),
)
_MERGE = (_grid(_sw.PatchMerging, "PatchMerging"), _grid(_sw.PatchMergingV2, "PatchMergingV2"))


class ResizeTo(nn.Module):
    """F.interpolate to the height and width of `ref` (torchvision's FPN top-down path)."""

    def __init__(self, mode: str, align_corners: Optional[bool]):  # noqa: UP045  # TorchScript
        super().__init__()
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        size = ref.shape[-2:]
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class CropTo(nn.Module):
    """The centre of `x` at the height and width of `ref`."""

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        h, w = ref.shape[-2], ref.shape[-1]
        top = (x.shape[-2] - h) // 2
        left = (x.shape[-1] - w) // 2
        return x[:, :, top : top + h, left : left + w]


class PadTo(nn.Module):
    """`x` zero-padded to the height and width of `ref`: half before, the rest after."""

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        dh = ref.shape[-2] - x.shape[-2]
        dw = ref.shape[-1] - x.shape[-1]
        return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers (torchvision's
    `torchvision.ops.FrozenBatchNorm2d`, same state_dict keys and arithmetic)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        # buffers: mypy sees Tensor | Module attributes
        w = self.weight.reshape(1, -1, 1, 1)  # type: ignore[operator]
        b = self.bias.reshape(1, -1, 1, 1)  # type: ignore[operator]
        rv = self.running_var.reshape(1, -1, 1, 1)  # type: ignore[operator]
        rm = self.running_mean.reshape(1, -1, 1, 1)  # type: ignore[operator]
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"  # type: ignore[index]


class PartitionAttention(_mv.RelativePositionalMultiHeadAttention):  # type: ignore[misc]
    """torchvision's MaxViT RelativePositionalMultiHeadAttention (to_qkv, merge,
    relative_position_bias_table, relative_position_index) on N x L x D tokens of an h x w grid:
    the tokens partitioned into P x P windows of neighbours, or (`grid`) into groups of P x P
    tokens spread over the whole grid, as its PartitionAttentionLayer (with the grid's axis
    swap) does, attended within each group, and laid back out in row-major order."""

    def __init__(self, dim: int, heads: int, size: int, h: int, w: int, grid: bool):
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide {dim}")
        super().__init__(dim, dim // heads, size * size)
        self.h, self.w, self.grid = h, w, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, p = x.shape[0], x.shape[2], self.size
        a, b = self.h // p, self.w // p
        if self.grid:  # row r1 * a + i, column r2 * b + j -> group (i, j), token (r1, r2)
            x = x.reshape(n, p, a, p, b, c).permute(0, 2, 4, 1, 3, 5)
        else:  # row i * p + r1, column j * p + r2 -> group (i, j), token (r1, r2)
            x = x.reshape(n, a, p, b, p, c).permute(0, 1, 3, 2, 4, 5)
        y = super().forward(x.reshape(n, a * b, p * p, c)).reshape(n, a, b, p, p, c)
        y = y.permute(0, 3, 1, 4, 2, 5) if self.grid else y.permute(0, 1, 3, 2, 4, 5)
        return y.reshape(n, self.h * self.w, c)

    def extra_repr(self) -> str:
        kind = "grid" if self.grid else "window"
        return f"{self.n_heads * self.head_dim}, heads={self.n_heads}, {kind}={self.size}"
