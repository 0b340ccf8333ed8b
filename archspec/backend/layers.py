"""The torch modules of ops that torch.nn lacks as such: each is one small class whose
parameter names are torchvision's, so its state_dicts load strictly. Imported by the ops'
`build` (never by `check`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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


from torchvision.models import swin_transformer as _sw  # type: ignore[import-untyped]

_WINDOW = (
    _grid(_sw.ShiftedWindowAttention, "WindowAttention"),
    _grid(_sw.ShiftedWindowAttentionV2, "WindowAttentionV2"),
)
_MERGE = (_grid(_sw.PatchMerging, "PatchMerging"), _grid(_sw.PatchMergingV2, "PatchMergingV2"))
