"""`archspec import`: torchvision's classification models and the seed networks round-trip —
import, `check` (parameter count = the source's), `build`, the source's state_dict loads
strictly and the eval outputs agree; the imported specs are readable (templates, repeats);
what the language cannot express is a located error, or with --partial a marked file.

Models are meta-built and filled with random tensors (no slow initialisers) and traced at small
inputs, on one thread."""

from __future__ import annotations

import warnings

import pytest
import torch
from seed_reference import SEEDS
from test_torchvision_zoo import SMALL, ZOO, random_state, torchvision_model
from torch import nn

import archspec


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def round_trip(model: nn.Module, shape: tuple[int, ...], tmp_path, name: str = "net") -> str:
    model.eval()
    text = archspec.import_module(model, shape)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    report = archspec.check(path)
    assert report.ok, report.render_errors()
    assert report.params == sum(p.numel() for p in model.parameters())
    ours = archspec.build(path, device="meta")
    result = ours.load_state_dict(model.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), ours(x)
    assert got.shape == want.shape
    assert want.abs().max() > 1e-3
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    return text


def tv(variant: str) -> nn.Module:
    model = torchvision_model(variant)
    model.load_state_dict(
        random_state(model, torch.Generator().manual_seed(0)), strict=True, assign=True
    )
    return model


@pytest.mark.parametrize("variant", list(ZOO))
def test_torchvision_round_trip(variant, tmp_path):
    size = SMALL.get(variant, 64)
    round_trip(tv(variant), (3, size, size), tmp_path, variant)


@pytest.mark.parametrize("key", list(SEEDS))
def test_seed_round_trip(key, tmp_path):
    factory, shape = SEEDS[key]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = factory()
    round_trip(model, shape, tmp_path, key)
