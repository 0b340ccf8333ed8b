"""Resampling: upsample (by a scale, or to the size of another output), and crop / pad to the
size of another output — what a U-Net decoder or an FPN's top-down path does to meet a skip."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from archspec.lang.errors import Problem
from archspec.lang.model import Field
from archspec.ops.base import (
    NOTHING,
    Fuzz,
    Inferred,
    Op,
    Params,
    Saved,
    Shape,
    Window,
    fmt,
    need_image,
    register,
)

RESAMPLE_COLOR = "#d0e0e3"
Scale = int | float | list[int | float]


class UpsampleParams(Params):
    scale: Scale | None = Field(None, description="scale factor: s, or [sh, sw]")
    size_of: str | None = Field(
        None, description="name of an earlier output whose height and width to take instead"
    )
    mode: Literal["nearest", "bilinear"] = Field("nearest", description="interpolation")
    align_corners: bool = Field(False, description="bilinear only: align the corner pixels")


def _scales(p: UpsampleParams) -> tuple[float, float]:
    s = p.scale
    if isinstance(s, list) and len(s) != 2:
        raise Problem("E-TYPE", "`scale` must be a number or a list of two", None, field="scale")
    sh, sw = (s, s) if not isinstance(s, list) else s
    for v in (sh, sw):
        if not 0 < v <= 1024:  # type: ignore[operator]
            raise Problem(
                "E-RANGE", f"`scale` = {v} is out of range (0, 1024]", None, field="scale"
            )
    return float(sh), float(sw)  # type: ignore[arg-type]


@register
class Upsample(Op):
    name = "upsample"
    aliases = ("Upsample", "interpolate", "UpsamplingNearest2d", "UpsamplingBilinear2d")
    doc = "upsampling by a scale or to another output's size (nn.Upsample / F.interpolate)"
    example = (
        "8,16,16",
        "- upsample: {scale: 2}\n- upsample: {scale: [1, 2], mode: bilinear}",
    )
    Params = UpsampleParams
    color = RESAMPLE_COLOR
    refs = ("size_of",)
    fuzz: ClassVar[Fuzz] = {"scale": [2, 3, [2, 1], 1.5], "mode": ["nearest", "bilinear"]}

    def geometry(self, p: UpsampleParams) -> None:
        if (p.scale is None) == (p.size_of is None):
            raise Problem(
                "E-UPSAMPLE",
                "`upsample` needs exactly one of `scale` and `size_of`",
                "`scale: 2` doubles the size; `size_of: enc2` takes enc2's height and width",
            )
        if p.scale is not None:
            _scales(p)
        if p.align_corners and p.mode != "bilinear":
            raise Problem(
                "E-UPSAMPLE",
                "`align_corners` applies to `mode: bilinear` only",
                None,
                "align_corners",
            )

    def infer(self, p: UpsampleParams, shape: Shape, refs: dict | None = None) -> Inferred:
        c, h, w = need_image("upsample", shape)
        self.geometry(p)
        if p.size_of is not None:
            out = (c, *(refs or {})["size_of"][1:])
        else:
            sh, sw = _scales(p)
            out = (c, int(h * sh), int(w * sw))  # torch: floor(size * scale_factor)
        up = (max(1, out[1] // h), max(1, out[2] // w))
        return Inferred(out, window=Window((1, 1), (1, 1), up=up))

    def saved(self, p: UpsampleParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        return NOTHING  # the backward needs only the sizes

    def build(self, p: UpsampleParams, shape: Shape) -> Any:
        from torch import nn

        from archspec.backend.layers import ResizeTo

        try:
            self.geometry(p)
        except Problem as e:  # as torch would refuse it (the differential fuzz builds it raw)
            raise ValueError(e.message) from None

        align = True if p.align_corners else None
        if p.size_of is not None:
            return ResizeTo(p.mode, align)
        sh, sw = _scales(p)
        scale = sh if sh == sw else (sh, sw)
        return nn.Upsample(scale_factor=scale, mode=p.mode, align_corners=align)

    def describe(self, p: UpsampleParams) -> str:
        if p.size_of is not None:
            return f"upsample to {p.size_of}"
        sh, sw = _scales(p)
        return f"upsample x{sh:g}" + (f"x{sw:g}" if sh != sw else "") + f" {p.mode}"


class MatchParams(Params):
    to: str = Field(description="name of an earlier output whose height and width to match")


class _Match(Op):
    """Crop or pad to the height and width of another output (the second input)."""

    Params = MatchParams
    color = RESAMPLE_COLOR
    refs = ("to",)
    smaller: ClassVar[bool]  # whose size may be smaller: crop's target, pad's input

    def infer(self, p: MatchParams, shape: Shape, refs: dict | None = None) -> Inferred:
        c, h, w = need_image(self.name, shape)
        target = (refs or {})["to"]
        if len(target) != 3:
            raise Problem("E-SHAPE-RANK", f"`{p.to}` is not an image: {fmt(target)}", None, "to")
        th, tw = target[1:]
        if (th > h or tw > w) if self.smaller else (th < h or tw < w):
            how = "smaller" if self.smaller else "larger"
            raise Problem(
                "E-SHAPE-MATCH",
                f"{self.name} {fmt((h, w))} to {p.to}'s {fmt((th, tw))}: the input must be {how}",
                f"{'pad' if self.smaller else 'crop'} instead, or match another output",
            )
        return Inferred((c, th, tw))

    def describe(self, p: MatchParams) -> str:
        return f"{self.name} to {p.to}"


@register
class Crop(_Match):
    name = "crop"
    doc = "centre crop to another output's height and width (the U-Net paper's skips)"
    example = (
        "8,20,20",
        (
            "- identity: {name: big}\n- conv: {out: 8, k: 5, name: small}\n"
            "- crop: {to: small}    # big's centre at small's size\n  from: big"
        ),
    )
    smaller = True

    def saved(self, p: MatchParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(alias=True)  # a view of its input

    def build(self, p: MatchParams, shape: Shape) -> Any:
        from archspec.backend.layers import CropTo

        return CropTo()


@register
class Pad(_Match):
    name = "pad"
    doc = "zero padding to another output's height and width (half before, the rest after)"
    example = (
        "8,20,20",
        (
            "- identity: {name: big}\n- conv: {out: 8, k: 5, name: small}\n"
            "- pad: {to: big}       # small padded to big's size\n  from: small"
        ),
    )
    smaller = False

    def build(self, p: MatchParams, shape: Shape) -> Any:
        from archspec.backend.layers import PadTo

        return PadTo()
