"""The per-primitive shape rules against torch itself, over a seeded sweep of odd sizes."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from archspec.lang.errors import Problem
from archspec.ops import OPS


def infer(op: str, shape: tuple, **params):
    entry = OPS[op]
    return entry.infer(entry.Params.model_validate(params), shape)


def torch_shape(module: nn.Module, shape: tuple):
    try:
        with torch.no_grad():
            return tuple(module(torch.zeros(1, *shape)).shape[1:])
    except RuntimeError:
        return None


def archspec_shape(op: str, shape: tuple, **params):
    try:
        return infer(op, shape, **params).out
    except Problem:
        return None


rng = random.Random(1234)
CONV_CASES = []
for _ in range(300):
    k = (rng.randint(1, 7), rng.randint(1, 7))
    d = (rng.randint(1, 3), rng.randint(1, 3))
    pad = rng.choice([0, 1, 2, 3, "same", "valid", [rng.randint(0, 3), rng.randint(0, 3)]])
    stride = 1 if pad == "same" else rng.choice([1, 2, 3, [rng.randint(1, 3), rng.randint(1, 3)]])
    g = rng.choice([1, 1, 2, 3])
    cin = g * rng.randint(1, 3)
    CONV_CASES.append(
        (
            (cin, rng.randint(1, 33), rng.randint(1, 33)),
            {
                "out": g * rng.randint(1, 3),
                "k": list(k),
                "stride": stride,
                "pad": pad,
                "dilation": list(d),
                "groups": g,
            },
        )
    )


@pytest.mark.parametrize("shape,params", CONV_CASES)
def test_conv_rule_matches_torch(shape, params):
    p = OPS["conv"].Params.model_validate(params)
    module = OPS["conv"].build(p, shape)
    expected = torch_shape(module, shape)
    assert archspec_shape("conv", shape, **params) == expected
    if expected is not None:
        assert infer("conv", shape, **params).params == sum(t.numel() for t in module.parameters())


POOL_CASES = []
for _ in range(300):
    op = rng.choice(["maxpool", "avgpool"])
    k = rng.randint(1, 6)
    params = {
        "k": [k, rng.randint(1, 6)],
        "stride": [rng.randint(1, 4), rng.randint(1, 4)],
        "pad": [rng.randint(0, 3), rng.randint(0, 3)],
        "ceil_mode": rng.random() < 0.5,
    }
    if op == "maxpool":
        params["dilation"] = [rng.randint(1, 2), rng.randint(1, 2)]
    POOL_CASES.append((op, (2, rng.randint(1, 25), rng.randint(1, 25)), params))


@pytest.mark.parametrize("op,shape,params", POOL_CASES)
def test_pool_rule_matches_torch_including_ceil_mode(op, shape, params):
    try:
        p = OPS[op].Params.model_validate(params)
        OPS[op].geometry(p)  # refuses pad > k/2, as torch does
        module = OPS[op].build(p, shape)
    except Problem:
        # torch refuses it too (at construction or on the first call)
        k = params["k"]
        torch_cls = nn.MaxPool2d if op == "maxpool" else nn.AvgPool2d
        kwargs = {
            "kernel_size": k,
            "stride": params["stride"],
            "padding": params["pad"],
            "ceil_mode": params["ceil_mode"],
        }
        if op == "maxpool":
            kwargs["dilation"] = params["dilation"]
        with pytest.raises(RuntimeError):
            torch_cls(**kwargs)(torch.zeros(1, *shape))
        return
    assert archspec_shape(op, shape, **params) == torch_shape(module, shape)


@pytest.mark.parametrize("size,out", [(1, 1), (5, 3), (7, 6), (13, 4), (224, 7), (3, 6)])
def test_adaptive_pools_give_the_requested_size(size, out):
    for op in ("adaptive_avgpool", "adaptive_maxpool"):
        p = OPS[op].Params.model_validate({"out": out})
        assert infer(op, (4, size, size + 1), out=out).out == torch_shape(
            OPS[op].build(p, (4, size, size + 1)), (4, size, size + 1)
        )


def test_collapse_names_the_sizes():
    with pytest.raises(Problem) as e:
        infer("maxpool", (8, 1, 1), k=2, stride=2)
    assert e.value.code == "E-SHAPE-COLLAPSE"
    assert "1x1 into 0x0" in e.value.message


def test_same_padding_refuses_stride():
    with pytest.raises(Problem) as e:
        infer("conv", (3, 8, 8), out=4, k=3, stride=2, pad="same")
    assert e.value.code == "E-PAD-SAME"


def test_groups_must_divide_channels():
    with pytest.raises(Problem) as e:
        infer("conv", (6, 8, 8), out=4, k=3, groups=4)
    assert e.value.code == "E-GROUPS"


def test_linear_and_bn_on_features():
    assert infer("linear", (400,), out=120).params == 400 * 120 + 120
    assert infer("bn", (120,)).params == 240
    with pytest.raises(Problem) as e:
        infer("linear", (16, 5, 5), out=10)
    assert e.value.code == "E-SHAPE-RANK"


PARTITION_CASES = [
    (side, window, kind)
    for side in (1, 4, 6, 12, 14)
    for window in (1, 3, 4, 7)
    for kind in ("window", "grid")
]


@pytest.mark.parametrize("side,window,kind", PARTITION_CASES)
def test_partition_attention_rule_matches_torchvision(side, window, kind):
    """Against torchvision's MaxViT PartitionAttentionLayer on a side x side image: it runs
    exactly where the rule says P x P windows (or a P x P grid) tile the grid."""
    from torchvision.models.maxvit import PartitionAttentionLayer

    d = 8
    try:
        with torch.no_grad():
            layer = PartitionAttentionLayer(
                d, 4, window, kind, (side, side), 2, nn.GELU, nn.LayerNorm, 0.0, 0.0, 0.0
            )
            out = layer.eval()(torch.zeros(1, d, side, side)).shape
        expected = (side * side, d) if tuple(out) == (1, d, side, side) else None
    except (RuntimeError, ZeroDivisionError, AssertionError):
        expected = None
    shape = (side * side, d)
    params = {"heads": 2, "window": window, "partition": kind}
    assert archspec_shape("partition_attention", shape, **params) == expected
    if expected is not None:
        ours = OPS["partition_attention"].build(
            OPS["partition_attention"].Params.model_validate(params), shape
        )
        assert torch_shape(ours, shape) == expected
        assert infer("partition_attention", shape, **params).params == sum(
            t.numel() for t in layer.attn_layer[1].parameters()
        )
