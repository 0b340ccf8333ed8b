"""The combinator registry. Each built-in is one module here, registered in this order (the
order of the schema and the docs); a plugin registers its own with the same decorator."""

from archspec.lower.combinators.base import (
    COMBINATORS,
    EXPR,
    INLINE,
    JOINS,
    LAYER_LIST,
    NAME,
    REF_ITEM,
    Combinator,
    Flow,
    described,
    register_combinator,
)

# isort: off
from archspec.lower.combinators import parallel, residual, dense, seq, aux  # noqa: F401  # registers them
# isort: on

__all__ = [
    "COMBINATORS",
    "EXPR",
    "INLINE",
    "JOINS",
    "LAYER_LIST",
    "NAME",
    "REF_ITEM",
    "Combinator",
    "Flow",
    "described",
    "register_combinator",
]
