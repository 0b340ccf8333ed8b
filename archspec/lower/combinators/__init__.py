"""The combinator registry. Each built-in is one module here, registered in this order (the
order of the schema and the docs); a plugin registers its own with the same decorator
(`archspec.lower.register_combinator`)."""

from archspec.lower.combinators.base import COMBINATORS

# isort: off
from archspec.lower.combinators import parallel, residual, dense, seq, aux, scale, split  # noqa: F401  # registers them
# isort: on

__all__ = ["COMBINATORS"]
