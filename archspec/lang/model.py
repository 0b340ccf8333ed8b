"""Models of validated values (the spec's top level, each op's parameters) that are pydantic
models to everyone who asks for one, without importing pydantic on the way to a clean check.

A `Model` subclass is written like a pydantic model (annotations, `Field(default, ge=...,
description=...)`, `model_config`), and the pydantic model it stands for is built from that
same class body on first need: JSON Schema, the field table, and every value that does not
validate. A value that is plainly valid (the type and range of every field obvious, no unknown
key) is accepted without pydantic, with exactly the result pydantic gives it (strict mode: no
coercion but int -> float; lists and dicts copied; mutable defaults copied). Anything the fast
path is not sure of goes to pydantic, so errors and corner cases are pydantic's own.

Why: `check` is a fresh process per command, and importing pydantic and building its schemas
is about half of what a `check` of a small spec costs (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import builtins
import copy
import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Union

# Field keywords the fast path knows; any other (pattern, multiple_of, alias, ...) hands the
# class to pydantic for every value.
_CONSTRAINTS = ("ge", "gt", "le", "lt", "min_length", "max_length")
_DOCS = ("description", "examples", "title", "json_schema_extra")
_MISSING: Any = object()


class FieldSpec:
    """What `Field(...)` records: pydantic's `Field` is called with the same arguments when the
    pydantic model is built."""

    def __init__(self, default: Any = _MISSING, **kwargs: Any):
        self.default = default
        self.kwargs = kwargs

    def pydantic(self) -> Any:
        from pydantic import Field as PydanticField

        if self.default is _MISSING:
            return PydanticField(**self.kwargs)
        return PydanticField(self.default, **self.kwargs)


def Field(default: Any = _MISSING, **kwargs: Any) -> Any:  # pydantic's name
    """pydantic's `Field`, recorded (the same arguments)."""
    return FieldSpec(default, **kwargs)


def ConfigDict(**settings: Any) -> dict[str, Any]:  # pydantic's name
    """A model's `model_config`, as pydantic's `ConfigDict` takes it."""
    return settings


class Invalid(Exception):
    """A value pydantic refused; `errors` is its `ValidationError`."""

    def __init__(self, errors: Any):
        super().__init__(str(errors))
        self.errors = errors


class _Slow(Exception):
    """The fast path is not sure: ask pydantic."""


def _check(kind: Any, exact: bool = False) -> Callable[[Any], Any]:
    """A function that returns the value as pydantic (strict) would give it, or raises _Slow.
    `exact`: the value must be taken as it is (no int -> float), as a union member is first."""
    if kind is Any or kind is object:
        return lambda v: v
    if kind is int:
        return lambda v: v if type(v) is int else _slow()
    if kind is float:
        if exact:
            return lambda v: v if type(v) is float else _slow()
        return lambda v: v if type(v) is float else float(v) if type(v) is int else _slow()
    if kind is bool:
        return lambda v: v if type(v) is bool else _slow()
    if kind is str:
        return lambda v: v if type(v) is str else _slow()
    if kind is type(None) or kind is None:
        return lambda v: v if v is None else _slow()
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return lambda v: v if any(type(v) is type(c) and v == c for c in args) else _slow()
    if origin is list:
        item = _check(args[0] if args else Any, exact)
        return lambda v: [item(x) for x in v] if type(v) is list else _slow()
    if origin is dict:
        key, val = (_check(a, exact) for a in (args or (Any, Any)))
        return lambda v: {key(k): val(x) for k, x in v.items()} if type(v) is dict else _slow()
    if origin is Union or type(kind).__name__ == "UnionType":
        # pydantic's smart union: a member that takes the value as it is, else the first that
        # takes it at all (an int where only floats are allowed)
        passes = [[_check(a, True) for a in args], [_check(a, exact) for a in args]]
        return lambda v: _first(passes, v)
    raise TypeError(f"no fast path for {kind!r}")


def _first(passes: list[list[Callable[[Any], Any]]], v: Any) -> Any:
    for members in passes:
        for member in members:
            try:
                return member(v)
            except _Slow:
                continue
    return _slow()


def _slow() -> Any:
    raise _Slow


def _bounded(check: Callable[[Any], Any], limits: dict[str, Any]) -> Callable[[Any], Any]:
    ge, gt, le, lt = (limits.get(k) for k in ("ge", "gt", "le", "lt"))
    lo, hi = limits.get("min_length"), limits.get("max_length")

    def bounded(v: Any) -> Any:
        v = check(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (ge is not None and not v >= ge) or (gt is not None and not v > gt):
                raise _Slow
            if (le is not None and not v <= le) or (lt is not None and not v < lt):
                raise _Slow
        sized = isinstance(v, (str, list, dict))
        if sized and ((lo is not None and len(v) < lo) or (hi is not None and len(v) > hi)):
            raise _Slow
        return v

    return bounded if any(x is not None for x in (ge, gt, le, lt, lo, hi)) else check


class _Meta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> Any:
        cls = super().__new__(mcs, name, bases, ns)
        cls._body = dict(ns)  # type: ignore[attr-defined]  # the class body, for pydantic
        cls._pydantic = None  # type: ignore[attr-defined]
        cls._plan = None  # type: ignore[attr-defined]
        return cls

    @property
    def model_fields(cls) -> dict[str, Any]:
        """pydantic's field table (`FieldInfo` per field)."""
        return cls.pydantic().model_fields  # type: ignore[attr-defined, no-any-return]


class Model(metaclass=_Meta):
    """A pydantic model, built lazily (see the module's doc). Instances have the fields as
    attributes; `model_config = ConfigDict(frozen=True)` makes them immutable."""

    model_config: ClassVar[dict[str, Any]] = {}
    _body: ClassVar[dict[str, Any]]
    _pydantic: ClassVar[Any]
    _plan: ClassVar[Any]

    def __init__(self, **data: Any):
        object.__setattr__(self, "__dict__", type(self)._validated(data))

    @classmethod
    def _config(cls) -> dict[str, Any]:
        """`model_config` merged down the class hierarchy, as pydantic merges it."""
        config: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            config.update(klass.__dict__.get("model_config", {}))
        return config

    @classmethod
    def _made(cls, values: dict[str, Any]) -> Any:
        """An instance holding `values` as they are (validated already)."""
        made = cls.__new__(cls)
        object.__setattr__(made, "__dict__", values)
        return made

    # -- the pydantic model ----------------------------------------------------------------

    @classmethod
    def pydantic(cls) -> Any:
        """The pydantic model this class stands for, built from its class body once."""
        if cls.__dict__.get("_pydantic") is None:
            from pydantic import BaseModel, ConfigDict

            bases = tuple(
                b.pydantic()  # type: ignore[attr-defined]  # a Model subclass
                for b in cls.__bases__
                if isinstance(b, _Meta) and b is not Model
            ) or (BaseModel,)
            body = {
                k: (v.pydantic() if isinstance(v, FieldSpec) else v)
                for k, v in cls._body.items()
                if k not in ("model_config", "__dict__", "__weakref__", "__qualname__")
            }
            body["model_config"] = ConfigDict(**cls._config())  # type: ignore[typeddict-item]
            body["__qualname__"] = cls.__qualname__
            meta: Any = type(BaseModel)
            cls._pydantic = meta(cls.__name__, bases, body)
        return cls._pydantic

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return cls.pydantic().model_json_schema(*args, **kwargs)  # type: ignore[no-any-return]

    # -- validation -------------------------------------------------------------------------

    @classmethod
    def model_validate(cls, data: Any) -> Any:
        """An instance, as pydantic would validate `data`; raises Invalid with pydantic's
        errors."""
        return cls._made(cls._validated(data))

    @classmethod
    def _validated(cls, data: Any) -> dict[str, Any]:
        plan = cls._fast_plan()
        if plan is not None and type(data) is dict and data.keys() <= plan.keys():
            try:
                return {
                    k: (check(data[k]) if k in data else default())
                    for k, (check, default) in plan.items()
                }
            except (_Slow, ValueError, TypeError, OverflowError):
                pass
        from pydantic import ValidationError

        try:
            model = cls.pydantic().model_validate(data)
        except ValidationError as e:
            raise Invalid(e) from None
        return {k: getattr(model, k) for k in type(model).model_fields}

    @classmethod
    def _fast_plan(cls) -> dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]] | None:
        """Per field: its check and its default (a function: mutable defaults are copied, a
        required field fails to pydantic). None when the class needs pydantic for everything."""
        if cls.__dict__.get("_plan") is None:
            plan = cls._make_plan()
            cls._plan = False if plan is None else plan
        return None if cls._plan is False else cls._plan  # type: ignore[no-any-return]

    @classmethod
    def _make_plan(cls) -> dict[str, Any] | None:
        config = cls._config()
        if config.get("strict") is not True or config.get("extra") != "forbid":
            return None
        if set(config) - {"strict", "extra", "frozen"}:
            return None
        plan: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            if not isinstance(klass, _Meta) or klass is Model:
                continue
            body = klass.__dict__["_body"]
            if any(type(v).__module__.startswith("pydantic") for v in body.values()):
                return None  # pydantic's own Field or validators: pydantic validates the class
            try:
                hints = _own_hints(klass)
            except Exception:  # noqa: BLE001  # an annotation only pydantic can read
                return None
            for name in body.get("__annotations__", {}):
                if typing.get_origin(hints[name]) is ClassVar:
                    continue
                spec = body.get(name, _MISSING)
                if not isinstance(spec, FieldSpec):
                    spec = FieldSpec(spec)
                unknown = set(spec.kwargs) - set(_CONSTRAINTS) - set(_DOCS) - {"default_factory"}
                if unknown:
                    return None
                try:
                    check = _check(hints[name])
                except TypeError:
                    return None
                limits = {k: spec.kwargs[k] for k in _CONSTRAINTS if k in spec.kwargs}
                plan[name] = (_bounded(check, limits), _default_of(spec))
        return plan

    # -- the instance -----------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if type(self)._config().get("frozen"):
            raise TypeError(f"{type(self).__name__} is immutable")
        object.__setattr__(self, name, value)

    def model_dump(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def model_copy(self, update: dict[str, Any] | None = None) -> Any:
        return type(self)._made({**self.__dict__, **(update or {})})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple((k, _hashable(v)) for k, v in self.__dict__.items())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


_HINTS: dict[tuple[str, str], Any] = {}  # (module, annotation text) -> the type it names


def _own_hints(klass: type) -> dict[str, Any]:
    """The types of the fields `klass` itself annotates, as `typing.get_type_hints` evaluates
    them (the module's names first, then the class's; Annotated kept, which sends that field to
    pydantic), each distinct text evaluated once per module rather than once per class and base:
    the ops' few dozen `int`, `IntOrPair` and `bool` each cost a compile."""
    module = sys.modules[klass.__module__].__dict__
    hints = {}
    for name, text in inspect.get_annotations(klass).items():
        if not isinstance(text, str):  # a module without `from __future__ import annotations`
            hints[name] = text
            continue
        key = (klass.__module__, text)
        if key not in _HINTS:
            try:
                names = module if text in module else vars(builtins)
                _HINTS[key] = names[text] if text in names else eval(text, module)
            except NameError:  # a name of the class's own: the class may not share it
                hints[name] = eval(text, dict(vars(klass)), module)
                continue
        hints[name] = _HINTS[key]
    return hints


def _default_of(spec: FieldSpec) -> Callable[[], Any]:
    factory = spec.kwargs.get("default_factory")
    if factory is not None:
        return factory  # type: ignore[no-any-return]
    if spec.default is _MISSING:
        return _slow  # required: missing goes to pydantic for its error
    default = spec.default
    if isinstance(default, (list, dict, set)):
        return lambda: copy.deepcopy(default)
    return lambda: default


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _hashable(x)) for k, x in v.items())
    return v
