"""The torch modules of ops that torch.nn has no class for. Imported only by `Op.build` (it
imports torch). Each takes the tensor whose size it follows as a second input, so a built
network works at any input size; TorchScript and FX read the code as written."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
