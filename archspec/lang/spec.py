"""Pydantic models of the file format's fixed parts, and mapping of their errors to file positions.

The recursive layer grammar (ops, templates, combinators) is validated item by item in
`lower.py`, which gives far better messages than a pydantic union would; each op's own
parameters are pydantic models in `ops.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from archspec.lang.errors import Collector, Loc, did_you_mean
from archspec.lang.model import ConfigDict, Field, Model
from archspec.lang.source import LMap, LSeq, loc_of

MAX_INPUT = 1 << 16


class SpecModel(Model):
    """The top level of a spec file (a pydantic model, built lazily: archspec/lang/model.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="network name", min_length=1, max_length=200)
    plugins: list[str] = Field(
        default_factory=list,
        description="modules to import first, which register ops of their own "
        "(by module name, e.g. my_pkg.my_ops; see docs/plugins.md)",
    )
    description: str | None = Field(None, description="free text shown by `archspec list`")
    input: list[int] = Field(
        description="input shape without the batch: [C, H, W] for images, [L, D] for L tokens "
        "of width D, [F] for features",
        min_length=1,
        max_length=3,
    )
    num_classes: int | None = Field(
        None, ge=1, le=1 << 20, description="classes; available as `$num_classes`"
    )
    width: float = Field(
        1.0,
        gt=0,
        le=64,
        description="width multiplier for every conv's `out` not derived from `$in`",
    )
    defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="default parameters per op, e.g. {bn: {eps: 0.001}}"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the spec's own named values, `$name` everywhere; variants override them",
    )
    templates: dict[str, Any] = Field(
        default_factory=dict, description="reusable blocks: {params: {...}, body: ...}"
    )
    stages: dict[str, Any] = Field(description="named stages, in forward order", min_length=1)
    outputs: list[str] | dict[str, str] | None = Field(
        None,
        description="layers or stages the built module returns, as a dict in this order: "
        "a list of names, or a mapping from dict key to name (torchvision's return_layers)",
    )
    variants: dict[str, Any] = Field(
        default_factory=dict, description="named overlays deep-merged onto this spec"
    )


def pydantic_errors(
    exc: Any,
    tree: Any,
    fallback: Loc,
    out: Collector,
    *,
    what: str = "",
    known_keys: Iterable[str] = (),
) -> None:
    """Turn each error of a pydantic ValidationError into a located diagnostic."""
    # Drop union-member tags (`k.int`, `k.list[int]`): a value failing `int | list[int]` is one
    # mistake, reported once at its field, by the most specific member (`stride.1`, not `stride`).
    errors: list[tuple[tuple[int | str, ...], Any]] = []
    for err in exc.errors(include_url=False):
        path = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))
        )
        if all(path != p for p, _ in errors):
            errors.append((path, err))
    deeper = {p[:n] for p, _ in errors for n in range(len(p))}
    for path, err in errors:
        if path in deeper and err["type"] not in ("extra_forbidden", "missing"):
            continue
        node, loc = tree, getattr(tree, "loc", fallback)
        parent, last = None, None
        for part in path:
            if isinstance(node, (LMap, LSeq)) and _has(node, part):
                parent, last = node, part
                loc = loc_of(node, part, loc)
                node = node[part]  # type: ignore[index]  # _has checked the key's kind
            else:
                break
        kind = err["type"]
        field = ".".join(str(p) for p in path) or what
        if kind == "extra_forbidden":
            key_loc = loc_of(parent, last, loc, key_loc=True) if parent is not None else loc
            name = str(last)
            out.add(
                key_loc,
                "E-UNKNOWN-KEY",
                f"unknown key `{name}`" + (f" in {what}" if what else ""),
                did_you_mean(name, known_keys),
            )
        elif kind == "missing":
            out.add(
                loc,
                "E-MISSING-KEY",
                f"missing required key `{field}`" + (f" in {what}" if what else ""),
                None,
            )
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            if isinstance(value, bool):
                shown = str(value).lower()
            code = "E-RANGE" if kind.startswith(("greater", "less", "too_")) else "E-TYPE"
            msg = err["msg"][0].lower() + err["msg"][1:]
            out.add(loc, code, f"`{field}`: {msg}, got {shown[:60]}", _type_hint(kind, value))


_UNION_TAGS = {"int", "float", "str", "bool"}


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, LMap):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _type_hint(kind: str, value: Any) -> str | None:
    if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off"):
        return "booleans are written `true` / `false`"
    if kind.startswith("int") and isinstance(value, float):
        return "write a whole number, or wrap the expression in int(...)"
    return None
