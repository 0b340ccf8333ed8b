"""Located spec tree -> IR: variants overlaid, templates expanded, expressions evaluated and
every layer's shape inferred, in one walk (expressions may read the incoming shape `$in`).

  network.py     the whole spec: top level, spec params, the stages in order
  variants.py    a variant's overlay
  walk.py        the item walk: ops, combinator and template dispatch, module names
  templates.py   template calls, typed parameters, `$` expressions
  repeat.py      the repeat form (`repeat`, `use`/`body`, `with`, `first`, `at`)
  combinators/   one module per combinator, looked up in a registry (`register_combinator`)
  core.py        the state that flows, scopes, sites, the walk's exceptions
  fragments.py   the pieces of a combinator's schema fragment
"""

from archspec.lower.combinators.base import (
    COMBINATORS,
    JOINS,
    Combinator,
    Flow,
    register_combinator,
)
from archspec.lower.core import UNKNOWN, Scope, Site, State, after, finish
from archspec.lower.fragments import INLINE, LAYER_LIST, NAME, REF_ITEM, described
from archspec.lower.network import lower
from archspec.lower.repeat import MAX_REPEAT, REPEAT_KEYS
from archspec.lower.templates import TYPES
from archspec.lower.walk import Lowerer

# The public API of a combinator (built-in or plugin): the base class and its registration, the
# walk it lowers its parts with, the state it hands on, and the pieces of its schema fragment.
__all__ = [
    "COMBINATORS",
    "INLINE",
    "JOINS",
    "LAYER_LIST",
    "MAX_REPEAT",
    "NAME",
    "REF_ITEM",
    "REPEAT_KEYS",
    "TYPES",
    "UNKNOWN",
    "Combinator",
    "Flow",
    "Lowerer",
    "Scope",
    "Site",
    "State",
    "after",
    "described",
    "finish",
    "lower",
    "register_combinator",
]
