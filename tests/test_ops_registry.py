"""The op registry: each op is one definition that every consumer reads (docs, schema, graph,
training initialisation), and `from archspec.ops import ...` keeps its public names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import archspec
from archspec.backend.init import init_weights
from archspec.ops import OPS, Op, he_init

ROOT = Path(__file__).resolve().parents[1]


def test_the_public_names_are_importable_from_archspec_ops() -> None:
    from archspec import ops

    for name in ops.__all__:
        assert hasattr(ops, name), name
    assert {"OPS", "Op", "Params", "register", "Shape", "Window", "Saved", "Inferred"} <= set(
        ops.__all__
    )


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_is_one_complete_definition(name: str) -> None:
    op = OPS[name]
    assert isinstance(op, Op) and op.name == name
    assert op.doc and not op.doc[0].isupper()  # the docs capitalise it
    shape, layers = op.example
    assert all(d.isdigit() for d in shape.split(",")) and f"- {name}" in layers


def test_the_relu_family_is_the_activations_that_want_he_init() -> None:
    family = {n for n, op in OPS.items() if op.init_family == "relu"}
    assert family == {"relu", "relu6", "leaky_relu", "silu", "hardswish", "gelu"}
    assert he_init(["conv", "gelu"]) and not he_init(["conv", "sigmoid", "tanh"])


@pytest.mark.parametrize(
    "spec,he", [("specs/lenet.yaml", False), ("specs/resnet18.yaml", True)], ids=["lenet", "resnet"]
)
def test_training_init_follows_the_family_of_the_ops_in_the_model(spec: str, he: bool) -> None:
    model = archspec.build(ROOT / spec)
    report = archspec.check(ROOT / spec)
    assert set(model.op_names) == {n.op for n in report.layers}
    torch.manual_seed(0)
    init_weights(model)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    want = torch.empty_like(first.weight)
    torch.manual_seed(0)
    if he:
        nn.init.kaiming_normal_(want, mode="fan_out", nonlinearity="relu")
    else:
        nn.init.xavier_uniform_(want)
    assert torch.equal(first.weight, want)
