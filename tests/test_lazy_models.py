"""archspec's models (each op's Params, the spec's top level) are pydantic models built on first
need; a plainly valid value is accepted without pydantic. Held to pydantic itself: for values
drawn at random (right and wrong types, ranges, unknown keys), the fast path gives exactly what
the pydantic model gives, value and type, or pydantic's own error. A clean check of a spec never
imports pydantic."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from archspec.lang.model import ConfigDict, Field, Invalid, Model
from archspec.lang.spec import SpecModel
from archspec.ops import OPS

ROOT = Path(__file__).resolve().parents[1]
VALUES = [0, 1, 2, 3, 7, -1, 64, 1 << 21, 0.0, 0.5, 1.0, 2.5, -0.5, math.inf, math.nan, True, False,
          None, "", "same", "valid", "max", "avg", "row", "window", "grid", "nearest", "bilinear",
          "x" * 300, [], [1], [3, 3], [1, 2, 3], [1.5, 2.0], [True, 1], ["a"], {}, {"a": 1},
          {"a": {"b": 1}}, {1: 2}, (1, 2)]  # fmt: skip


def same(model: type[Model], data: object) -> None:
    """Our model and the pydantic model it stands for agree on `data`."""
    try:
        want = model.pydantic().model_validate(data)
    except ValidationError as e:
        with pytest.raises(Invalid) as got:
            model.model_validate(data)
        assert got.value.errors.errors(include_url=False) == e.errors(include_url=False)
        return
    got = model.model_validate(data)
    for name in type(want).model_fields:
        a, b = getattr(got, name), getattr(want, name)
        assert type(a) is type(b), (model.__name__, data, name, a, b)
        assert a == b or repr(a) == repr(b), (model.__name__, data, name, a, b)  # nan != nan


def draws(fields: list[str], rng: random.Random, n: int) -> list[dict]:
    out: list[dict] = [{}]
    for _ in range(n):
        picked = rng.sample(fields, k=rng.randint(0, min(3, len(fields))))
        data = {f: rng.choice(VALUES) for f in picked}
        if rng.random() < 0.1:
            data[rng.choice(["bogus", "kk", "outt"])] = 1
        out.append(data)
    return out


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_params_agree_with_pydantic(op):
    params = OPS[op].Params
    fields = list(params.model_fields)
    rng = random.Random(op)
    for data in draws(fields, rng, 60):
        same(params, data)
    for value in VALUES:  # each field alone, every kind of value
        for f in fields:
            same(params, {f: value})


def test_the_spec_model_agrees_with_pydantic():
    rng = random.Random(0)
    base = {"name": "n", "input": [3, 8, 8], "stages": {"a": ["relu"]}}
    same(SpecModel, base)
    for _ in range(300):
        data = dict(base)
        for f in rng.sample(list(SpecModel.model_fields), k=rng.randint(1, 3)):
            data[f] = rng.choice(VALUES)
        same(SpecModel, data)
    same(SpecModel, [1, 2])
    same(SpecModel, {**base, "outputs": {"c3": "layer2"}, "width": 2, "num_classes": 10})


def test_instances_behave_like_frozen_pydantic_models():
    class P(Model):
        model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
        k: int = Field(3, ge=1, description="kernel")
        sizes: list[int] = Field(default_factory=list)

    a, b = P.model_validate({"k": 5}), P(k=5)
    assert a == b and hash(a) == hash(b) and a.k == 5 and a.sizes == []
    assert a.sizes is not P.model_validate({}).sizes  # a default is never shared
    with pytest.raises(TypeError):
        a.k = 2
    assert a.model_copy(update={"k": 9}).k == 9 and a.k == 5
    assert P.model_fields["k"].description == "kernel"
    assert P.model_json_schema()["properties"]["k"]["minimum"] == 1
    with pytest.raises(Invalid):
        P.model_validate({"k": 0})


def test_pydantic_field_and_validators_in_a_plugin_still_work():
    from pydantic import Field as PydanticField
    from pydantic import field_validator

    class Odd(Model):
        model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
        k: int = PydanticField(3, ge=1)

        @field_validator("k")
        @classmethod
        def odd(cls, v: int) -> int:
            if v % 2 == 0:
                raise ValueError("k must be odd")
            return v

    assert Odd.model_validate({"k": 5}).k == 5
    with pytest.raises(Invalid) as e:
        Odd.model_validate({"k": 4})
    assert "k must be odd" in str(e.value.errors)


def test_a_clean_check_never_imports_pydantic_and_an_error_does():
    code = (
        "import sys, archspec\n"
        "from archspec.analysis.report import check_text\n"
        "assert archspec.check('specs/resnet18.yaml').ok\n"
        "assert archspec.check('specs/torchvision/efficientnet.yaml', 'efficientnet_b0').ok\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported by a clean check'\n"
        "bad = 'name: n\\ninput: [3, 8, 8]\\nstages: {a: [conv: {out: 0, k: 3}]}\\n'\n"
        "(e,) = check_text(bad, 'bad.yaml').errors\n"
        "assert (e.code, e.loc.line) == ('E-RANGE', 3), e\n"
        "assert 'greater than or equal to 1' in e.message, e.message\n"
        "assert 'pydantic' in sys.modules\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr


def test_field_types_are_read_as_typing_reads_them():
    """The fast path reads each class's own annotations (once per module and text); typing's
    get_type_hints reads them the slow way. Same types for every op and the spec's top level."""
    import typing

    from archspec.lang.model import _own_hints

    for klass in [SpecModel, *(type(op).Params for op in OPS.values())]:
        for base in klass.__mro__:
            if isinstance(base, type) and issubclass(base, Model) and base is not Model:
                want = typing.get_type_hints(base)
                for name, kind in _own_hints(base).items():
                    assert kind == want[name], (base, name)
