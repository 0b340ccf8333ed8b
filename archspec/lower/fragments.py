"""The pieces a combinator's JSON Schema fragment is written with (analysis/schema.py puts the
fragments together with the ops' and the repeat form's)."""

from __future__ import annotations

from typing import Any

REF_ITEM = {"$ref": "#/$defs/item"}
EXPR = {"$ref": "#/$defs/expr"}
NAME = {"$ref": "#/$defs/name"}
INLINE = {"$ref": "#/$defs/inline"}
LAYER_LIST = {"$ref": "#/$defs/layerList"}


def described(description: str, schema: dict[str, Any] | None = None, **extra: Any) -> dict:
    """A schema with its description (and examples) — every field of the format has one."""
    out = dict(schema or {})
    out["description"] = description
    out.update(extra)
    return out
