"""A variant is a named overlay of the spec: its top-level keys deep-merged onto the base."""

from __future__ import annotations

from typing import Any

from archspec.lang.errors import Collector, did_you_mean
from archspec.lang.source import LMap, loc_of, merge


def overlay(root: LMap, variant: str | None, out: Collector) -> Any:
    """The spec with `variant` merged on (the spec itself for None); None after an error."""
    if variant is None:
        return root
    variants = root.get("variants") or {}
    if not isinstance(variants, dict) or variant not in variants:
        vloc = loc_of(root, "variants", root.loc, key_loc=True) if "variants" in root else root.loc
        names = list(variants) if isinstance(variants, dict) else []
        out.add(
            vloc,
            "E-VARIANT",
            f"unknown variant `{variant}`",
            did_you_mean(variant, names) if names else "this spec defines no variants",
        )
        return None
    layer = variants[variant]
    if not isinstance(layer, dict):
        out.add(
            loc_of(variants, variant, root.loc),
            "E-VARIANT",
            f"variant `{variant}` must be a mapping",
            None,
        )
        return None
    return merge(root, layer)
