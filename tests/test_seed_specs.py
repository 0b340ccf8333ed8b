"""Every seed network as a spec: same layers, same parameters, same outputs as the seed code."""

from __future__ import annotations

import pytest
import torch
from seed_reference import SEEDS
from torch_compare import copy_in_execution_order, execution_order, observed_layers

import archspec

# seed key -> (spec file, variant)
SPECS = {
    "lenet": ("specs/lenet.yaml", None),
    "lenet_bn": ("specs/lenet.yaml", "bn"),
    "alexnet": ("specs/alexnet.yaml", None),
    "alexnet_cifar10": ("specs/alexnet.yaml", "cifar10"),
    "alexnet_lrn": ("specs/alexnet.yaml", "lrn"),
    "vgg11": ("specs/vgg.yaml", None),
    "vgg13": ("specs/vgg.yaml", "vgg13"),
    "vgg16": ("specs/vgg.yaml", "vgg16"),
    "vgg19": ("specs/vgg.yaml", "vgg19"),
    "vgg_small": ("specs/vgg.yaml", "small"),
    "nin": ("specs/nin.yaml", None),
    "googlenet": ("specs/googlenet.yaml", None),
    "inception_mnist": ("specs/inception_mnist.yaml", None),
    "resnet18": ("specs/resnet18.yaml", None),
    "densenet": ("specs/densenet.yaml", None),
}


def test_every_seed_has_a_spec():
    assert set(SPECS) == set(SEEDS)


@pytest.mark.parametrize("key", sorted(SPECS))
def test_spec_reproduces_seed_network(key):
    path, variant = SPECS[key]
    factory, shape = SEEDS[key]
    report = archspec.check(path, variant)
    assert report.ok, report.render_errors()
    assert tuple(report.input) == shape
    torch.manual_seed(0)
    seed = factory().eval()
    assert report.params == sum(p.numel() for p in seed.parameters())
    model = archspec.build(path, variant).eval()
    x = torch.randn(1, *shape)
    # The same parameterised layers, called in the same order, with the same output shapes.
    assert execution_order(model, x) == execution_order(seed, x)
    # Same weights in, same logits out: the spec is exactly the seed's network.
    copy_in_execution_order(seed, model, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), seed(x), rtol=1e-5, atol=1e-5)
    assert tuple(report.output) == tuple(seed(x).shape[1:])


def stage_shapes(path, variant=None, input_shape=None):
    report = archspec.check(path, variant, input_shape)
    assert report.ok, report.render_errors()
    return [list(stage.out_shape) for stage in report.network.root.children]


def test_nin_stage_shapes_printed_by_the_seed():
    # seed 002: "Sequential output shape: torch.Size([1, 96, 54, 54])" ...
    assert stage_shapes("specs/nin.yaml", input_shape=(1, 224, 224)) == [
        [96, 54, 54],
        [96, 26, 26],
        [256, 26, 26],
        [256, 12, 12],
        [384, 12, 12],
        [384, 5, 5],
        [384, 5, 5],
        [10, 5, 5],
        [10, 1, 1],
        [10],
    ]


def test_resnet_stage_shapes_printed_by_the_seed():
    # seed 000 at 224: 64x56x56, 64x56x56, 128x28x28, 256x14x14, 512x7x7, then 10 logits
    assert stage_shapes("specs/resnet18.yaml", input_shape=(1, 224, 224)) == [
        [64, 56, 56],
        [64, 56, 56],
        [128, 28, 28],
        [256, 14, 14],
        [512, 7, 7],
        [10],
    ]
    assert stage_shapes("specs/resnet18.yaml") == [
        [64, 24, 24],
        [64, 24, 24],
        [128, 12, 12],
        [256, 6, 6],
        [512, 3, 3],
        [10],
    ]


def test_googlenet_stage_shapes_at_96():
    assert stage_shapes("specs/googlenet.yaml") == [
        [64, 24, 24],
        [192, 12, 12],
        [480, 6, 6],
        [832, 3, 3],
        [1024],
        [10],
    ]


def test_densenet_channels_through_the_blocks():
    shapes = stage_shapes("specs/densenet.yaml")
    assert [s[0] for s in shapes] == [64, 192, 96, 224, 112, 240, 120, 248, 10]


# Several input sizes per spec, odd ones included: the checker's per-layer shapes and
# parameter counts must equal what torch produces, layer by layer.
SIZES = {
    "specs/lenet.yaml": [(1, 28, 28), (1, 31, 37)],
    "specs/alexnet.yaml": [None, (1, 227, 255)],
    "specs/vgg.yaml": [None, (1, 97, 131)],
    "specs/nin.yaml": [None, (1, 225, 231)],
    "specs/googlenet.yaml": [None, (1, 97, 127)],
    "specs/inception_mnist.yaml": [None, (1, 31, 31)],
    "specs/resnet18.yaml": [None, (1, 97, 111)],
    "specs/densenet.yaml": [None, (1, 97, 101)],
}
CASES = [
    (path, variant, size)
    for path, sizes in SIZES.items()
    for variant in [None, *archspec.variants(path)]
    for size in sizes
]


@pytest.mark.parametrize(
    "path,variant,size", CASES, ids=[f"{p[6:-5]}-{v}-{s}" for p, v, s in CASES]
)
def test_checker_agrees_with_torch_layer_by_layer(path, variant, size):
    if variant == "cifar10" and size is not None:
        size = (3, *size[1:])
    report = archspec.check(path, variant, size)
    assert report.ok, report.render_errors()
    model = archspec.build(path, variant, size).eval()
    rows = report.layer_rows()
    seen = observed_layers(model, [r["path"] for r in rows], torch.randn(1, *report.input))
    for row in rows:
        assert seen[row["path"]] == (tuple(row["output"]), row["params"]), row["path"]
