"""Channel rearrangement: ShuffleNet's channel shuffle."""

from __future__ import annotations

from typing import Any, ClassVar

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    MAX_CHANNELS,
    Fuzz,
    Inferred,
    Op,
    Params,
    Shape,
    need_image,
    register,
)


class ShuffleParams(Params):
    groups: int = Field(ge=1, le=MAX_CHANNELS, description="channel groups to interleave")


@register
class ChannelShuffle(Op):
    name = "channel_shuffle"
    doc = (
        "channel shuffle (torch.nn.ChannelShuffle, ShuffleNet): views the channels as "
        "`groups` x C/`groups`, transposes and flattens them again"
    )
    example = ("16,8,8", "- channel_shuffle: {groups: 2}")
    Params = ShuffleParams
    color = "#eeeeee"
    fuzz: ClassVar[Fuzz] = {"groups": [1, 2]}

    def infer(self, p: ShuffleParams, shape: Shape) -> Inferred:
        c, _, _ = need_image("channel_shuffle", shape)
        if c % p.groups:
            raise Problem(
                "E-GROUPS",
                f"channel_shuffle groups={p.groups} must divide the input channels ({c})",
                f"use a groups value that divides {c}",
            )
        return Inferred(shape)

    def build(self, p: ShuffleParams, shape: Shape) -> Any:
        from torch import nn

        return nn.ChannelShuffle(p.groups)

    def describe(self, p: ShuffleParams) -> str:
        return f"channel_shuffle {p.groups}"
