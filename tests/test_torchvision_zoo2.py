"""The rest of torchvision's convolutional zoo (specs/torchvision/mobilenet.yaml, ...): for every
builder, torchvision's state_dict loads strictly into the built model and the parameter counts
agree; `check` counts the MACs torch.utils.flop_counter counts for torchvision's model
(convolutions and matmuls, counted on the meta device: no memory, no arithmetic) for the
smallest builder of each family and each with a structure of its own (ARCHSPEC_ZOO_ALL=1: for
every builder), and for those their eval-mode outputs agree within 1e-5 of max |output| with
every parameter and BatchNorm statistic randomised.

Everything but the numeric comparison runs on the meta device; the forwards use small inputs
on one thread (see test_torchvision_zoo.py, whose random state this file shares).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict
from unittest.mock import patch

import pytest
import torch
import torchvision.models as tvm
from click.testing import CliRunner
from test_torchvision_zoo import _one_thread, random_state  # noqa: F401  # autouse fixture
from torch.utils.flop_counter import FlopCounterMode

import archspec
from archspec.cli import main

SPECS = "specs/torchvision"
ALL = os.environ.get("ARCHSPEC_ZOO_ALL") == "1"  # MACs of every builder, not the smallest

# builder -> spec file (the variant is the builder's name)
ZOO = {
    "mobilenet_v2": "mobilenet",
    "mobilenet_v3_large": "mobilenet",
    "mobilenet_v3_small": "mobilenet",
    "squeezenet1_0": "squeezenet",
    "squeezenet1_1": "squeezenet",
    "mnasnet0_5": "mnasnet",
    "mnasnet0_75": "mnasnet",
    "mnasnet1_0": "mnasnet",
    "mnasnet1_3": "mnasnet",
    **{f"efficientnet_b{i}": "efficientnet" for i in range(8)},
    **{f"efficientnet_v2_{s}": "efficientnet" for s in "sml"},
    **{
        f"regnet_y_{s}": "regnet"
        for s in ["400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf"]
    },
    **{
        f"regnet_x_{s}": "regnet"
        for s in ["400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf"]
    },
    **{f"shufflenet_v2_{s}": "shufflenet" for s in ["x0_5", "x1_0", "x1_5", "x2_0"]},
}
# The builders compared numerically, with the input size of the comparison.
NUMERIC = {
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "mobilenet_v3_large": 64,
    "squeezenet1_0": 64,
    "squeezenet1_1": 64,
    "mnasnet0_5": 64,
    "efficientnet_b0": 64,
    "efficientnet_v2_s": 64,
    "regnet_y_400mf": 64,
    "regnet_x_400mf": 64,
    "shufflenet_v2_x0_5": 64,
}


def spec_of(builder: str) -> str:
    return f"{SPECS}/{ZOO[builder]}.yaml"


def _widths_on_cpu(cls, *args, **kwargs):
    """RegNet's builder derives its widths with torch ops (`.tolist()`): on the CPU, not meta."""
    with torch.device("cpu"):
        return _FROM_INIT_PARAMS(cls, *args, **kwargs)


_FROM_INIT_PARAMS = tvm.regnet.BlockParams.from_init_params.__func__


def torchvision_model(builder: str) -> torch.nn.Module:
    with (
        warnings.catch_warnings(),
        torch.device("meta"),
        patch.object(tvm.regnet.BlockParams, "from_init_params", classmethod(_widths_on_cpu)),
    ):
        warnings.simplefilter("ignore")
        return getattr(tvm, builder)(weights=None, num_classes=1000)


def test_every_builder_is_a_variant_and_the_default_is_the_first() -> None:
    for name in sorted(set(ZOO.values())):
        variants = archspec.variants(f"{SPECS}/{name}.yaml")
        assert set(variants) == {b for b, f in ZOO.items() if f == name}
        base = archspec.check(f"{SPECS}/{name}.yaml")
        first = archspec.check(f"{SPECS}/{name}.yaml", variants[0])
        assert base.ok and (base.name, base.params, base.macs) == (
            first.name,
            first.params,
            first.macs,
        )


@pytest.mark.parametrize("builder", list(ZOO))
def test_state_dict_loads_strictly_and_params_match(builder: str) -> None:
    tv = torchvision_model(builder)
    ours = archspec.build(spec_of(builder), builder, device="meta")
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    want = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    report = archspec.check(spec_of(builder), builder)
    assert report.ok and report.name == builder
    assert report.params == sum(p.numel() for p in tv.parameters())


@pytest.mark.parametrize("builder", list(ZOO) if ALL else list(NUMERIC))
def test_check_json_macs_match_the_flop_counter(builder: str) -> None:
    """MACs as `check --json` prints them, against FlopCounterMode's count (flops / 2) for
    torchvision's model at the spec's input size. ARCHSPEC_ZOO_ALL=1: every builder."""
    out = CliRunner().invoke(main, ["check", spec_of(builder), "--variant", builder, "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    x = torch.empty(1, *report["input"], device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        torchvision_model(builder).eval()(x)
    macs = counter.get_total_flops() // 2
    assert abs(report["macs"] - macs) <= 0.01 * macs, (report["macs"], macs)


@pytest.mark.parametrize("builder", list(NUMERIC))
def test_outputs_match_with_random_weights(builder: str) -> None:
    gen = torch.Generator().manual_seed(0)
    tv = torchvision_model(builder)
    state = OrderedDict(random_state(tv, gen))
    state._metadata = tv.state_dict()._metadata  # type: ignore[attr-defined]  # MNASNet's version
    tv.load_state_dict(state, strict=True, assign=True)
    tv.eval()
    size = NUMERIC[builder]
    ours = archspec.build(spec_of(builder), builder, input_shape=(3, size, size), device="meta")
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    ours.eval()
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        want, got = tv(x), ours(x)
    assert got.shape == want.shape == (2, 1000)
    assert want.std() > 1e-3  # a real signal, not a collapsed one
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
