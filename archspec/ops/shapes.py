"""Output-size arithmetic shared by convolutions and pools, exactly as PyTorch computes it."""

from __future__ import annotations


def pair(v: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def conv_out(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    """torch.nn.Conv2d: floor((size + 2p - d(k-1) - 1) / s) + 1 (may be <= 0: the caller checks)."""
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def pool_out(size: int, k: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """ATen's pooling_output_shape: with ceil_mode the last window must start inside the
    input or the left padding, otherwise it is dropped."""
    span = size + 2 * pad - dilation * (k - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def adaptive_window(size: int, out: int) -> tuple[int, int]:
    """The largest window and the stride an adaptive pool uses (for the receptive field)."""
    k = -(-size // out)
    return k, max(1, size // out)


def same_pad(k: int, dilation: int) -> tuple[int, int]:
    """Left and right padding of `padding='same'` (PyTorch pads the extra one on the right)."""
    total = dilation * (k - 1)
    return total // 2, total - total // 2
