"""The op registry: one definition per op (see ops/base.py), the built-ins by family.

`from archspec.ops import OPS, register, Op, Params, ...` is the public API; plugins
(docs/plugins.md) use it exactly as the built-in modules below do. The import order of the
families is the order of the docs reference and the schema.
"""

from __future__ import annotations

from importlib import import_module

from archspec.lang.errors import Problem
from archspec.ops.base import (
    MAX_CHANNELS,
    MAX_KERNEL,
    NOTHING,
    OPS,
    Extra,
    Inferred,
    IntOrPair,
    NoParams,
    Op,
    Params,
    PosInt,
    Saved,
    Shape,
    Window,
    check_pair,
    collapse,
    fmt,
    he_init,
    need_image,
    numel,
    register,
)

__all__ = [
    "MAX_CHANNELS",
    "MAX_KERNEL",
    "NOTHING",
    "OPS",
    "Extra",
    "Inferred",
    "IntOrPair",
    "NoParams",
    "Op",
    "Params",
    "PosInt",
    "Problem",
    "Saved",
    "Shape",
    "Window",
    "check_pair",
    "collapse",
    "fmt",
    "he_init",
    "need_image",
    "numel",
    "register",
]

FAMILIES = ("conv", "pool", "linear", "norm", "activation")  # registered in this order
for _family in FAMILIES:
    import_module(f"archspec.ops.{_family}")
