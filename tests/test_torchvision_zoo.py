"""specs/torchvision/*.yaml build models interchangeable with torchvision's: same state_dict
keys and shapes (torchvision's state_dict loads strictly), same outputs in eval mode, same
parameter counts, and MACs within 1% of torchvision's published "GFLOPS" (which count MACs).

Key/shape and parameter checks run at full size on the meta device (no memory, no init).
Numerics use small inputs and random weights written straight into a meta-built torchvision
model (skipping both libraries' slow initialisers), on one thread: every variant is compared
and the file runs in about a minute on a loaded 2-core machine (the VGGs' 130M random weights
cost most of it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.models as tvm
from timing import best_of

import archspec

SPECS = "specs/torchvision"

# variant -> (spec file, torchvision builder, builder kwargs, published GFLOPS = GMACs).
# The GFLOPS are the `_ops` of torchvision's weight metadata, the source of the docs' table
# (https://pytorch.org/vision/stable/models.html, "GFLOPS" column, rounded there to 2 places).
# googlenet/inception_v3 are published for the inference graph: auxiliary heads not counted.
ZOO = {
    "alexnet": ("alexnet", "alexnet", {}, 0.714),
    "vgg11": ("vgg", "vgg11", {}, 7.609),
    "vgg11_bn": ("vgg", "vgg11_bn", {}, 7.609),
    "vgg13": ("vgg", "vgg13", {}, 11.308),
    "vgg13_bn": ("vgg", "vgg13_bn", {}, 11.308),
    "vgg16": ("vgg", "vgg16", {}, 15.47),
    "vgg16_bn": ("vgg", "vgg16_bn", {}, 15.47),
    "vgg19": ("vgg", "vgg19", {}, 19.632),
    "vgg19_bn": ("vgg", "vgg19_bn", {}, 19.632),
    "resnet18": ("resnet", "resnet18", {}, 1.814),
    "resnet34": ("resnet", "resnet34", {}, 3.664),
    "resnet50": ("resnet", "resnet50", {}, 4.089),
    "resnet101": ("resnet", "resnet101", {}, 7.801),
    "resnet152": ("resnet", "resnet152", {}, 11.514),
    "resnext50_32x4d": ("resnet", "resnext50_32x4d", {}, 4.23),
    "resnext101_32x8d": ("resnet", "resnext101_32x8d", {}, 16.414),
    "resnext101_64x4d": ("resnet", "resnext101_64x4d", {}, 15.46),
    "wide_resnet50_2": ("resnet", "wide_resnet50_2", {}, 11.398),
    "wide_resnet101_2": ("resnet", "wide_resnet101_2", {}, 22.753),
    "densenet121": ("densenet", "densenet121", {}, 2.834),
    "densenet161": ("densenet", "densenet161", {}, 7.728),
    "densenet169": ("densenet", "densenet169", {}, 3.36),
    "densenet201": ("densenet", "densenet201", {}, 4.291),
    "googlenet": ("googlenet", "googlenet", {}, 1.498),
    "googlenet_noaux": ("googlenet", "googlenet", {"aux_logits": False}, 1.498),
    "inception_v3": ("inception_v3", "inception_v3", {}, 5.713),
    "inception_v3_noaux": ("inception_v3", "inception_v3", {"aux_logits": False}, 5.713),
}
# Parameter counts torchvision publishes (its pretrained models: GoogLeNet without aux heads,
# Inception v3 with its AuxLogits), as a second, fixed reference.
PUBLISHED_PARAMS = {
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "densenet121": 7_978_856,
    "densenet201": 20_013_928,
    "googlenet_noaux": 6_624_904,
    "inception_v3": 27_161_264,
}
# Smallest convenient inputs for the numeric comparison; Inception v3's aux head needs 299.
SMALL = {"googlenet": 64, "googlenet_noaux": 64, "inception_v3": 299, "inception_v3_noaux": 75}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions on a shared 2-core machine: one thread is 10-50x faster than two
    threads fighting other processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec_of(variant: str) -> str:
    return f"{SPECS}/{ZOO[variant][0]}.yaml"


def torchvision_model(variant: str, device: str = "meta") -> torch.nn.Module:
    _, builder, kwargs, _ = ZOO[variant]
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")  # GoogLeNet/Inception's init-weights FutureWarning
        kwargs = (
            {"init_weights": False, **kwargs}
            if "googlenet" in builder or "inception" in builder
            else kwargs
        )
        return getattr(tvm, builder)(weights=None, num_classes=1000, **kwargs)


def random_state(model: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Real CPU tensors for every entry of a (meta) state_dict, scaled so activations stay O(1):
    fan-in scaled weights, BN scales and running variances around 1, small shifts and means."""
    out = {}
    for key, t in model.state_dict().items():
        if not t.is_floating_point():
            out[key] = torch.zeros(t.shape, dtype=t.dtype)
        elif t.dim() > 1:
            fan_in = t[0].numel()
            out[key] = torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith(("running_var", "weight")):
            out[key] = torch.rand(t.shape, generator=gen) + 0.5
        else:  # biases, BN shifts, running means
            out[key] = torch.randn(t.shape, generator=gen) * 0.1
    return out


def test_every_variant_is_listed_and_the_default_is_the_first_builder():
    listed = {
        v
        for name in ("alexnet", "vgg", "resnet", "densenet", "googlenet", "inception_v3")
        for v in archspec.variants(f"{SPECS}/{name}.yaml")
    }
    assert listed == set(ZOO)
    for name, default in [
        ("alexnet", "alexnet"),
        ("vgg", "vgg11"),
        ("resnet", "resnet18"),
        ("densenet", "densenet121"),
        ("googlenet", "googlenet"),
        ("inception_v3", "inception_v3"),
    ]:
        base, named = (
            archspec.check(f"{SPECS}/{name}.yaml"),
            archspec.check(f"{SPECS}/{name}.yaml", default),
        )
        assert base.ok and (base.params, base.macs, base.name) == (
            named.params,
            named.macs,
            named.name,
        )


@pytest.mark.parametrize("variant", list(ZOO))
def test_state_dict_keys_shapes_and_params_match_torchvision(variant):
    tv = torchvision_model(variant)
    ours = archspec.build(spec_of(variant), variant, device="meta")
    want = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want
    report = archspec.check(spec_of(variant), variant)
    assert report.params == sum(p.numel() for p in tv.parameters())
    if variant in PUBLISHED_PARAMS:
        assert report.params == PUBLISHED_PARAMS[variant]


@pytest.mark.parametrize("variant", list(ZOO))
def test_macs_within_one_percent_of_published_gflops(variant):
    report = archspec.check(spec_of(variant), variant)
    published = ZOO[variant][3] * 1e9
    assert abs(report.macs - published) / published < 0.01, (report.macs, published)


def test_published_table_agrees_with_installed_torchvision_metadata():
    for variant, (_, builder, _, gflops) in ZOO.items():
        ops = {w.meta["_ops"] for w in tvm.get_model_weights(builder)}
        assert ops == {gflops}, variant


@pytest.mark.parametrize("variant", list(ZOO))
def test_torchvision_state_dict_loads_strictly_and_outputs_match(variant):
    gen = torch.Generator().manual_seed(0)
    tv = torchvision_model(variant)
    tv.load_state_dict(random_state(tv, gen), strict=True, assign=True)
    tv.eval()
    size = SMALL.get(variant, 64)
    ours = archspec.build(spec_of(variant), variant, input_shape=(3, size, size), device="meta")
    result = ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        want, got = tv(x), ours(x)
    assert got.shape == want.shape == (2, 1000)
    assert want.std() > 1e-3  # a real signal, not a collapsed one
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", ["resnet152", "densenet201"])
def test_check_of_the_largest_models_is_fast(variant):
    archspec.check(spec_of(variant), variant)  # warm imports
    best, report = best_of(lambda: archspec.check(spec_of(variant), variant), 1.0)
    assert report.ok
    assert best < 1.0, f"{variant}: check took {best:.2f}s"


def test_build_with_weights_file_loads_a_torchvision_state_dict(tmp_path):
    tv = torchvision_model("resnet18", device="cpu").eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    ours = archspec.build(
        spec_of("resnet18"), "resnet18", input_shape=(3, 32, 32), weights=path
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5, rtol=0)
