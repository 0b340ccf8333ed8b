"""specs/torchvision/convnext.yaml, vit.yaml, swin.yaml and maxvit.yaml against torchvision (issue
17): every builder's state_dict keys and shapes (strict load) and parameter count on the meta
device, MACs within 1% of torchvision's published GFLOPS; the smallest builder of each family
(convnext_tiny, swin_t and swin_v2_t at 64x64 and at a non-square size, vit_b_32 at its fixed
224x224, maxvit_t at 224x224 in float64) with every parameter randomised gives torchvision's eval outputs within 1e-5 of max
|output|, and MACs within 1% of torch.utils.flop_counter; in training, stochastic depth at
torchvision's rate in every block."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.models as tvm
from test_torchvision_zoo import random_state
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.maxvit import _get_relative_position_index
from torchvision.ops import StochasticDepth

import archspec

SPECS = "specs/torchvision"
FAMILIES = {
    "convnext": ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
    "vit": ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"],
    "swin": ["swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"],
    "maxvit": ["maxvit_t"],
}
BUILDERS = [(family, b) for family, names in FAMILIES.items() for b in names]
SMALLEST = [
    ("convnext", "convnext_tiny", (64, 64)),
    ("vit", "vit_b_32", (224, 224)),
    ("swin", "swin_t", (64, 64)),
    ("swin", "swin_v2_t", (64, 64)),
    # non-square, where torchvision takes it: ConvNeXt's tokens back to a 16x24 image; Swin's
    # 18x25 grid padded to whole windows and merged with odd sides padded (9x13, 5x7, 3x4)
    ("convnext", "convnext_tiny", (64, 96)),
    ("swin", "swin_t", (72, 100)),
    ("swin", "swin_v2_t", (72, 100)),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchvision_model(builder: str, device: str = "meta") -> torch.nn.Module:
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")
        return getattr(tvm, builder)(weights=None, num_classes=1000)


def test_variants_are_torchvision_builders_and_the_default_is_the_first():
    for family, names in FAMILIES.items():
        spec = f"{SPECS}/{family}.yaml"
        assert archspec.variants(spec) == names
        base, first = archspec.check(spec), archspec.check(spec, names[0])
        assert base.ok and (base.name, base.params, base.macs) == (
            first.name,
            first.params,
            first.macs,
        )


@pytest.mark.parametrize("family, builder", BUILDERS, ids=[b for _, b in BUILDERS])
def test_state_dict_keys_shapes_and_params_match_torchvision(family, builder):
    tv = torchvision_model(builder)
    ours = archspec.build(f"{SPECS}/{family}.yaml", builder, device="meta")
    want = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    result = ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    report = archspec.check(f"{SPECS}/{family}.yaml", builder)
    assert report.params == sum(p.numel() for p in tv.parameters())


@pytest.mark.parametrize("family, builder", BUILDERS, ids=[b for _, b in BUILDERS])
def test_macs_within_one_percent_of_published_gflops(family, builder):
    # at the input of the builder's smallest published weights (224; Swin V2's are 256), whose
    # GFLOPS torchvision gives for that input
    weights = min(tvm.get_model_weights(builder), key=lambda w: w.transforms.keywords["crop_size"])
    size = weights.transforms.keywords["crop_size"]
    report = archspec.check(f"{SPECS}/{family}.yaml", builder, input_shape=(3, size, size))
    published = weights.meta["_ops"] * 1e9
    assert abs(report.macs - published) / published < 0.01, (report.macs, published)


@pytest.mark.parametrize(
    "family, builder, size", SMALLEST, ids=[f"{b}-{h}x{w}" for _, b, (h, w) in SMALLEST]
)
def test_outputs_and_flop_counter_macs_match_torchvision(family, builder, size):
    gen = torch.Generator().manual_seed(0)
    tv = torchvision_model(builder)
    tv.load_state_dict(random_state(tv, gen), strict=True, assign=True)
    tv.eval()
    spec = f"{SPECS}/{family}.yaml"
    shape = (3, *size)
    ours = archspec.build(spec, builder, input_shape=shape, device="meta")
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    ours.eval()
    x = torch.randn(2, *shape, generator=gen)
    with torch.no_grad():
        want, got = tv(x), ours(x)
    assert got.shape == want.shape == (2, 1000)
    scale = want.abs().max().item()
    assert want.std() > 1e-3 and (got - want).abs().max().item() <= 1e-5 * scale
    # flop_counter: grad enabled (MultiheadAttention's no-grad fast path is one fused op it does
    # not see) and the math backend of scaled_dot_product_attention (it has no rule for the
    # fused CPU kernel; on CUDA it counts the fused kernels as the same two matmuls)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tv(x[:1])
    counted = counter.get_total_flops() / 2
    report = archspec.check(spec, builder, input_shape=shape)
    assert abs(report.macs - counted) / counted < 0.01, (report.macs, counted)


def test_maxvit_outputs_and_flop_counter_macs_match_torchvision():
    # In float64: with every parameter randomised, maxvit_t amplifies float32 rounding to ~7e-4
    # of max |output| (torchvision's own float32 output is that far from its float64 one), so
    # float32 cannot tell a wrong network from rounding; float64 agrees to ~1e-12. The relative
    # position indexes are torchvision's (random_state would zero them), so a wrong window or
    # grid layout changes the bias each token gets.
    gen = torch.Generator().manual_seed(0)
    tv = torchvision_model("maxvit_t")
    spec, shape = f"{SPECS}/maxvit.yaml", (3, 224, 224)
    with FlopCounterMode(display=False) as counter:  # counted on the meta device: no arithmetic
        tv(torch.empty(1, *shape, device="meta"))
    counted = counter.get_total_flops() / 2
    report = archspec.check(spec, "maxvit_t")
    assert abs(report.macs - counted) / counted < 0.01, (report.macs, counted)
    state = random_state(tv, gen)
    for key in state:
        if key.endswith("relative_position_index"):
            state[key] = _get_relative_position_index(7, 7)
    tv.load_state_dict(state, strict=True, assign=True)
    ours = archspec.build(spec, "maxvit_t", device="meta")
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    tv, ours = tv.double().eval(), ours.double().eval()
    x = torch.randn(1, *shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want, got = tv(x), ours(x)
    assert got.shape == want.shape == (1, 1000)
    scale = want.abs().max().item()
    assert want.std() > 1e-3 and (got - want).abs().max().item() <= 1e-5 * scale


def stochastic_depth_rates(model: torch.nn.Module) -> dict[str, float]:
    return {n: m.p for n, m in model.named_modules() if isinstance(m, StochasticDepth)}


@pytest.mark.parametrize("builder", FAMILIES["swin"] + FAMILIES["maxvit"])
def test_stochastic_depth_has_torchvision_rate_in_every_block(builder):
    """torchvision applies one StochasticDepth module to both residuals of a Swin block (and of
    MaxViT's attention layers); the spec has one per residual (`stochastic_depth` and
    `stochastic_depth_mlp`, MaxViT's `stochastic_dropout` and `stochastic_dropout_mlp`), both
    at that rate. Identity in eval; in training they drop samples."""
    family = "swin" if builder.startswith("swin") else "maxvit"
    want = stochastic_depth_rates(torchvision_model(builder))
    ours = archspec.build(f"{SPECS}/{family}.yaml", builder, device="meta")
    got = stochastic_depth_rates(ours)
    assert len(want) > 10 and max(want.values()) > 0.19
    pairs = {n: n + "_mlp" for n in want if n.endswith(("stochastic_depth", "stochastic_dropout"))}
    pairs = {n: m for n, m in pairs.items() if m in got}  # MBConv's has no second
    assert set(got) == set(want) | set(pairs.values())
    for name, p in want.items():
        assert got[name] == pytest.approx(p, abs=1e-12), name
        if name in pairs:
            assert got[pairs[name]] == pytest.approx(p, abs=1e-12), name
    assert ours.training and all(m.training for n, m in ours.named_modules() if n in got)
