"""A variant is a named overlay of the spec: its top-level keys deep-merged onto the base. A
variant may `extends:` another, and is then overlaid on that variant instead of the spec alone
(MobileNetV3-Small is MobileNetV3-Large with another table)."""

from __future__ import annotations

from typing import Any

from archspec.lang.errors import Collector, did_you_mean
from archspec.lang.source import LMap, loc_of, merge, without

EXTENDS = "extends"


def overlay(root: LMap, variant: str | None, out: Collector) -> Any:
    """The spec with `variant` merged on (the spec itself for None); None after an error.
    Every variant's `extends:` is checked whichever is chosen: a broken one is a broken file."""
    variants = root.get("variants") or {}
    extends_ok = isinstance(variants, dict) and all(
        _chain(root, variants, name, out) is not None for name in variants
    )
    if variant is None:
        return root
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
    layers = _chain(root, variants, variant, out)
    if layers is None or not extends_ok:
        return None
    doc = root
    for layer in layers:
        doc = merge(doc, layer)
    return doc


def _chain(root: LMap, variants: dict, name: str, out: Collector) -> list[Any] | None:
    """The overlays variant `name` stands for, the one it extends (recursively) first, each
    without its `extends` key; None after an error."""
    layers: list[Any] = []
    seen: list[str] = []
    while True:
        layer = variants[name]
        if not isinstance(layer, dict):
            where = loc_of(variants, name, root.loc)
            out.add(where, "E-VARIANT", f"variant `{name}` must be a mapping")
            return None
        seen.append(name)
        if EXTENDS not in layer:
            layers.append(layer)
            return layers[::-1]
        layers.append(without(layer, EXTENDS))
        base, where = layer[EXTENDS], loc_of(layer, EXTENDS, root.loc)
        if not isinstance(base, str) or base not in variants:
            others = [n for n in variants if n != name]
            out.add(
                where,
                "E-EXTENDS",
                f"variant `{name}` extends `{base}`, which is not a variant of this spec",
                did_you_mean(str(base), others) if others else "this spec has no other variant",
            )
            return None
        if base in seen:
            members = seen[seen.index(base) :]
            if seen[0] == min(members):  # each circle said once, walked from its first name
                out.add(
                    where,
                    "E-EXTENDS",
                    f"variants extend each other in a circle: {' -> '.join([*members, base])}",
                    "a variant may extend one that does not lead back to it",
                )
            return None
        name = base
