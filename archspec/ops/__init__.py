"""The op registry: one definition per op (see ops/base.py), the built-ins by family.

`from archspec.ops import OPS, register, Op, Params, ...` is the public API; plugins
(docs/plugins.md) use it exactly as the built-in modules below do. The import order of the
families is the order of the docs reference and the schema.
"""

from __future__ import annotations

from importlib import import_module

from archspec.ops.base import *  # the public names: base.__all__
from archspec.ops.base import __all__ as __all__

FAMILIES = (
    "conv",
    "pool",
    "linear",
    "norm",
    "activation",
    "channels",
    "tokens",
    "attention",
    "resample",
    "window",
)  # registered in this order
for _family in FAMILIES:
    import_module(f"archspec.ops.{_family}")
