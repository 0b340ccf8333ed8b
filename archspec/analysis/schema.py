"""JSON Schema of the spec format, for editors (YAML language server) and `jsonschema`.

The top level comes from `SpecModel`; the recursive layer grammar, which `lower/` validates
by hand, is written here from the same registries: one definition per op (its pydantic
`Params` schema, doc line and example), each combinator's own fragment, the repeat form and
template calls. Template names are the user's own, so any single-key mapping whose key is not
an op, a combinator or a repeat key is a template call; an op key keeps its strict parameter
schema, so `conv: {ot: 3}` still fails.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from archspec.lang.spec import SpecModel
from archspec.lower import COMBINATORS, REPEAT_KEYS, TYPES
from archspec.lower.combinators.base import JOINS
from archspec.lower.fragments import EXPR, REF_ITEM
from archspec.lower.fragments import described as _d
from archspec.lower.refs import ITEM_KEYS
from archspec.lower.repeat import schema_props as _repeat_props
from archspec.ops import OPS

DRAFT = "http://json-schema.org/draft-07/schema#"

# Examples shown by editors: each op's own docs example gives one whole layer (Op.example), and
# these one value per parameter where a default alone says little.
PARAM_EXAMPLES: dict[str, list[Any]] = {
    "out": [64, "$c * 4", "$in.c // 2"],
    "k": [3, [1, 7]],
    "stride": [2, [2, 1]],
    "pad": [1, [0, 3], "same"],
    "dilation": [2],
    "groups": [32],
    "size": [5],
    "p": [0.5],
}
TOP_EXAMPLES: dict[str, list[Any]] = {
    "name": ["resnet18"],
    "description": ["ResNet-18 for 96x96 Fashion-MNIST"],
    "plugins": [["my_pkg.my_ops"]],
    "input": [[3, 224, 224], [1, 28, 28], [784]],
    "num_classes": [10, 1000],
    "width": [0.25, 1.0],
    "defaults": [{"bn": {"eps": 0.001}, "conv": {"bias": False}}],
    "params": [{"layers": [2, 2, 2, 2], "block": "basic"}],
    "templates": [
        {
            "basic": {
                "params": {"c": "int", "stride": 1},
                "body": [
                    {"conv": {"out": "$c", "k": 3, "stride": "$stride", "pad": 1}},
                    "bn",
                    "relu",
                ],
            }
        }
    ],
    "stages": [
        {
            "stem": [{"conv": {"out": 64, "k": 7, "stride": 2, "pad": 3}}, "bn", "relu"],
            "head": ["gap", "flatten", {"linear": {"out": "$num_classes"}}],
        }
    ],
    "variants": [{"resnet34": {"stages": {"b2": {"repeat": 3}}}}],
}


def _with_expr(schema: dict[str, Any]) -> dict[str, Any]:
    """Let a numeric/boolean/list value, or one of a set of strings, also be an expression
    string such as `$c * 4` or `$kind` (a string holding `$` is an expression)."""
    s = copy.deepcopy(schema)
    if "anyOf" in s:
        s["anyOf"] = [_with_expr(a) for a in s["anyOf"]]
        if EXPR not in s["anyOf"]:
            s["anyOf"].append(EXPR)
        return s
    kind = s.get("type")
    if kind == "array" and isinstance(s.get("items"), dict):
        s["items"] = _with_expr(s["items"])
    if kind in ("integer", "number", "boolean", "array") or "enum" in s:
        keep: dict[str, Any] = {
            k: s.pop(k) for k in ("description", "default", "title", "examples") if k in s
        }
        return {**keep, "anyOf": [s, EXPR]}
    return s


def _op_def(name: str) -> dict[str, Any]:
    op = OPS[name]
    params = op.Params.model_json_schema()
    props = {}
    for field, sub in params.get("properties", {}).items():
        sub = _with_expr(sub)
        sub.pop("title", None)
        examples = PARAM_EXAMPLES.get(field)
        if examples is None and "default" in sub:
            examples = [sub["default"]]
        if examples is not None:
            sub["examples"] = examples
        props[field] = sub
    props["name"] = _d(
        "module name of this layer in the built model (default: its position)",
        {"type": ["string", "integer"]},
        examples=["conv1", "downsample"],
    )
    out: dict[str, Any] = {
        "type": "object",
        "description": f"`{name}`: {op.doc}",
        "properties": props,
        "additionalProperties": False,
    }
    if params.get("required"):
        out["required"] = params["required"]
    example = _example_params(op.example[1], name)
    if example:
        out["examples"] = [example]
    return out


def _example_params(layers: str, name: str) -> dict[str, Any] | None:
    """The first parameter mapping of op `name` in its docs example (`- conv: {out: 16, k: 3}`;
    the example may show other layers first, as the one a `crop` takes its size from)."""
    from ruamel.yaml import YAML

    for item in YAML(typ="safe").load(layers) or []:
        if isinstance(item, dict) and name in item:
            body = item[name]
            if isinstance(body, dict) and body:
                return body
    return None


def _defaults_of(name: str, op_def: dict[str, Any]) -> dict[str, Any]:
    """`defaults: {conv: {...}}`: some of the op's parameters (none required, no `name`)."""
    fields = [f for f in op_def["properties"] if f != "name"]
    return _d(
        f"default parameters of every `{name}`",
        {
            "type": "object",
            "properties": {f: {"$ref": f"#/$defs/op.{name}/properties/{f}"} for f in fields},
            "additionalProperties": False,
        },
    )


def _op_value(name: str) -> dict[str, Any]:
    """The value under an op key: its parameters, or nothing (`- bn:` is `- bn`)."""
    return _d(OPS[name].doc, {"anyOf": [{"$ref": f"#/$defs/op.{name}"}, {"type": "null"}]})


def _single(key: str, value: dict[str, Any], description: str) -> dict[str, Any]:
    """A one-key layer mapping `{key: value}` (plus the optional `name` and `inline`)."""
    return {
        "type": "object",
        "title": f"{key} layer" if key in OPS else f"{key} block",
        "description": description,
        "required": [key],
        "properties": {
            key: value,
            "name": {"$ref": "#/$defs/name"},
            "inline": {"$ref": "#/$defs/inline"},
            "when": {"$ref": "#/$defs/when"},
            **_REFS,
        },
        "additionalProperties": False,
    }


# `from` and `merge` may sit beside any layer (docs/language.md, "References").
_REFS = {"from": {"$ref": "#/$defs/from"}, "merge": {"$ref": "#/$defs/merge"}}


def _combinators() -> dict[str, dict[str, Any]]:
    return {name: comb.schema() for name, comb in COMBINATORS.items()}


def _reserved() -> list[str]:
    """Keys that are not template names (`name`, `inline` and `when` may sit beside a template
    call; `from` and `merge` beside any item)."""
    return sorted({*OPS, *COMBINATORS, *REPEAT_KEYS, *ITEM_KEYS} - {"name", "inline", "when"})


def build_schema() -> dict[str, Any]:
    """The whole schema as a JSON-ready dict (deterministic: same registries, same output)."""
    defs: dict[str, Any] = {
        "expr": _d(
            "an expression over template parameters and the incoming shape, e.g. `$c * 4`, "
            '`$in.c // 2`, `"$c2[0]"`',
            {"type": "string", "pattern": "\\$"},
        ),
        "name": _d(
            "explicit module name (default: the position in the enclosing module)",
            {"type": ["string", "integer"]},
            examples=["conv1", "layer1"],
        ),
        "inline": _d(
            "register the children on the enclosing module instead of a module of their own",
            {"type": "boolean", "default": False},
        ),
        "when": _d(
            'a condition: the item exists only where it is true (e.g. `"$t != 1"`); '
            "otherwise it is left out, taking no module and no position",
            {"anyOf": [{"type": "boolean"}, {"$ref": "#/$defs/expr"}]},
            examples=["$t != 1"],
        ),
        "from": _d(
            "read these earlier outputs (layer or stage names; `in`: the incoming tensor), "
            "merged by `merge`, instead of the incoming tensor",
            {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            examples=[["in", "enc2"]],
        ),
        "merge": _d(
            "how the outputs named by `from` are joined",
            {"enum": list(JOINS), "default": "concat"},
        ),
        "args": _d(
            "arguments: parameter name to value (a number, list, string or expression)",
            {"type": ["object", "null"]},
            examples=[{"c": 64, "stride": 2}],
        ),
    }
    for name in OPS:
        defs[f"op.{name}"] = _op_def(name)
    combs = _combinators()
    for name, body in combs.items():
        defs[f"comb.{name}"] = body
    defs["repeat"] = {
        "type": "object",
        "description": "repeat a template (`use`) or layers (`body`) N times, "
        "with per-repetition overrides",
        "anyOf": [{"required": ["use"]}, {"required": ["body"]}, {"required": ["repeat"]}],
        "properties": {**_repeat_props(), **_REFS},
        "additionalProperties": False,
        "examples": [{"repeat": 2, "use": "basic", "with": {"c": 128}, "first": {"stride": 2}}],
    }
    defs["templateCall"] = {
        "type": "object",
        "description": "a call of a template defined under `templates:`, "
        "e.g. `- inception: {c1: 64}`",
        "minProperties": 1,
        "maxProperties": 6,
        # The key is the template's name: any name that is not an op, combinator or repeat key.
        "propertyNames": {"not": {"enum": _reserved()}},
        "not": {"propertyNames": {"enum": ["name", "inline", "when"]}},
        "properties": {
            "name": {"$ref": "#/$defs/name"},
            "inline": {"$ref": "#/$defs/inline"},
            "when": {"$ref": "#/$defs/when"},
            **_REFS,
        },
        "additionalProperties": {"$ref": "#/$defs/args"},
    }
    op_names = list(OPS)
    defs["item"] = {
        "description": "one layer: an op or template name (`relu`), a one-key mapping "
        "(`{conv: {out: 64, k: 3}}`, `{residual: {...}}`, `{mytemplate: {...}}`), "
        "a repeat mapping, or a nested list",
        "anyOf": [
            {
                "type": "string",
                "minLength": 1,
                "description": "an op without parameters, or a template name",
                "examples": op_names,
            },
            {"$ref": "#/$defs/layerList"},
            {"$ref": "#/$defs/layerMapping"},
        ],
    }
    # A mapping is dispatched on its keys with if/then, not matched against a union, so an
    # editor reports the real mistake (`wiht` is not allowed) instead of guessing which
    # alternative was meant. `properties` only serves completion; the `then`s validate.
    is_repeat = {"anyOf": [{"required": ["use"]}, {"required": ["body"]}, {"required": ["repeat"]}]}
    defs["layerMapping"] = {
        "type": "object",
        "title": "layer mapping",
        "description": "one layer as a mapping: `{op: {params}}`, `{combinator: {...}}`, "
        "`{template: {args}}` or a repeat `{repeat: N, use: template}`",
        "minProperties": 1,
        "properties": {
            **{n: _op_value(n) for n in OPS},
            **{n: _d(combs[n]["description"], {"$ref": f"#/$defs/comb.{n}"}) for n in COMBINATORS},
            **_repeat_props(),
            **_REFS,
        },
        "allOf": [
            *[{"if": {"required": [n]}, "then": _single(n, _op_value(n), OPS[n].doc)} for n in OPS],
            *[
                {
                    "if": {"required": [n]},
                    "then": _single(n, {"$ref": f"#/$defs/comb.{n}"}, combs[n]["description"]),
                }
                for n in COMBINATORS
            ],
            {"if": is_repeat, "then": {"$ref": "#/$defs/repeat"}},
            {
                "if": {"propertyNames": {"not": {"enum": _reserved()}}},
                "then": {"$ref": "#/$defs/templateCall"},
            },
        ],
    }
    defs["layerList"] = {
        "type": "array",
        "description": "layers in forward order",
        "items": REF_ITEM,
    }
    defs["template"] = {
        "type": "object",
        "description": "a reusable block: `params` plus one body "
        "(`body: [...]`, or one op/combinator key)",
        "minProperties": 1,
        "maxProperties": 2,
        "not": {"propertyNames": {"const": "params"}},
        "properties": {
            "params": _d(
                "parameters: `name: type` (required; one of "
                + ", ".join(TYPES)
                + "), `name: default`, or `name: {type: T, default: V}`",
                {
                    "type": ["object", "null"],
                    "additionalProperties": {
                        "anyOf": [
                            {"enum": list(TYPES)},
                            {
                                "type": "object",
                                "required": ["type"],
                                "properties": {
                                    "type": _d("the parameter's type", {"enum": list(TYPES)}),
                                    "default": _d("its value when a call does not give one"),
                                },
                                "additionalProperties": False,
                            },
                            {},  # any other value is the parameter's default
                        ]
                    },
                },
                examples=[{"c": "int", "stride": 1, "k": {"type": "any", "default": 3}}],
            ),
            "body": _d("the template's layers", REF_ITEM),
            **{n: _op_value(n) for n in OPS},
            **{n: {"$ref": f"#/$defs/comb.{n}"} for n in COMBINATORS},
        },
        "additionalProperties": {"$ref": "#/$defs/args"},
    }
    top = SpecModel.model_json_schema()
    props = top["properties"]
    for key, sub in props.items():
        sub.pop("title", None)
        if key in TOP_EXAMPLES:
            sub["examples"] = TOP_EXAMPLES[key]
    props["stages"].update({"additionalProperties": REF_ITEM})
    props["templates"].update({"additionalProperties": {"$ref": "#/$defs/template"}})
    props["defaults"] = _d(
        props["defaults"]["description"],
        {
            "type": "object",
            "properties": {n: _defaults_of(n, defs[f"op.{n}"]) for n in OPS},
            "additionalProperties": False,
        },
        examples=TOP_EXAMPLES["defaults"],
    )
    overlay = {
        "type": "object",
        "description": "a variant: top-level keys deep-merged onto the spec "
        "(lists replace, null deletes)",
        "properties": {
            "extends": {
                "type": "string",
                "description": "another variant this one is overlaid on (its keys win)",
            },
            **{k: _d(v["description"]) for k, v in props.items() if k != "variants"},
        },
        "additionalProperties": False,
    }
    defs["variant"] = overlay
    props["variants"].update({"additionalProperties": {"$ref": "#/$defs/variant"}})
    return {
        "$schema": DRAFT,
        "title": "archspec network spec",
        "description": "A neural network as an archspec YAML spec "
        "(`archspec check SPEC` checks it).",
        "type": "object",
        "required": top["required"],
        "properties": props,
        "additionalProperties": False,
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=False) + "\n"


def write_schema(path: str | Path) -> None:
    Path(path).write_text(schema_text(), encoding="utf-8")
