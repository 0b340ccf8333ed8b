"""Checks that tests/seed_reference.py reproduces the seed documents.

Every shape asserted here is either printed in a seed (NiN per-block shapes, seed 002;
ResNet block shapes at 224, seed 000; DenseBlock/transition demo shapes, seed 000;
Inception-MNIST prose shapes, seed 003; LeNet "16*5*5" comment) or derived by hand from
the seed code and checked with a real forward pass.  The parameter counts are literals,
each recomputed by hand (layer-by-layer arithmetic, see the comments) -- they are what
catches regressions in the reference.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_reference as R


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trace(seq: nn.Sequential, x: torch.Tensor):
    """d2l's ``for layer in net: X = layer(X); print(...)`` loop, returned as a list."""
    out = []
    for layer in seq:
        x = layer(x)
        out.append((layer.__class__.__name__, tuple(x.shape)))
    return out


@pytest.fixture(autouse=True)
def _seed_and_grad():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------------------
# Parameter counts (literals; hand arithmetic in the comments, conv = o*i*k*k + o,
# linear = i*o + o, batch-norm = 2*c).
# --------------------------------------------------------------------------------------
EXPECTED_PARAMS = {
    # 156 + 2416 + 48120 + 10164 + 850
    "lenet": 61_706,
    # 156 + 12 + 2416 + 32 + 30840 + 240 + 10164 + 168 + 850
    "lenet_bn": 44_878,
    # 11712 + 614656 + 885120 + 1327488 + 884992 + 26218496 + 16781312 + 40970
    "alexnet": 46_764_746,
    # 23296 + 307392 + 663936 + 884992 + 590080 + 37752832 + 4195328 + 10250
    "alexnet_cifar10": 44_428_106,
    # LocalResponseNorm has no parameters
    "alexnet_lrn": 46_764_746,
    # vgg11: convs 9219328 + fc 102764544 + 16781312 + 40970 (1-channel input)
    "vgg11": 128_806_154,
    "vgg13": 128_990_666,
    "vgg16": 134_300_362,
    "vgg19": 139_610_058,
    # convs 576832 (16,32,64,128,128 channels) + 25694208 + 16781312 + 40970
    "vgg_small": 43_093_322,
    # nin blocks 30336 + 746240 + 1180800 + 34790
    "nin": 1_992_166,
    # b1 3200 + b2 114944 + 9 Inception blocks 5849136 + Linear(1024, 10) 10250
    "googlenet": 5_977_530,
    # conv1 260 + conv2 44020 + incep1 19104 + incep2 19824 + fc 14090
    "inception_mnist": 97_298,
    # b1 3328 + b2 148224 + b3 525952 + b4 2100480 + b5 8395264 + fc 5130
    "resnet18": 11_178_378,
    # channels 64 ->192 ->96 ->224 ->112 ->240 ->120 ->248, fc Linear(248, 10)
    "densenet": 758_226,
}


def test_seed_table_is_complete():
    assert set(R.SEEDS) == set(EXPECTED_PARAMS)
    for key, (factory, chw) in R.SEEDS.items():
        assert callable(factory), key
        assert len(chw) == 3 and all(isinstance(d, int) for d in chw), key


@pytest.mark.parametrize("key", sorted(EXPECTED_PARAMS))
def test_parameter_count(key):
    factory, _ = R.SEEDS[key]
    with torch.device("meta"):  # shapes only, no allocation / init cost
        model = factory()
    assert n_params(model) == EXPECTED_PARAMS[key]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("key", sorted(EXPECTED_PARAMS))
def test_forward(key):
    factory, chw = R.SEEDS[key]
    model = factory().eval()
    assert n_params(model) == EXPECTED_PARAMS[key]
    batch = 1 if chw[1] >= 224 else 2  # keep the 224x224 nets cheap on CPU
    x = torch.randn(batch, *chw)
    y = model(x)
    assert y.shape == (batch, 10)
    assert torch.isfinite(y).all()
    if key in ("lenet_bn", "resnet18", "densenet", "inception_mnist"):
        # eval-mode batch norm / the seed's x.view(in_size, -1): items stay independent
        assert torch.allclose(model(x[1:]), y[1:], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------
# LeNet / LeNet-BN
# --------------------------------------------------------------------------------------
def test_lenet_shapes():
    shapes = trace(R.lenet(), torch.rand(1, 1, 28, 28))
    assert shapes == [
        ("Conv2d", (1, 6, 28, 28)),
        ("Sigmoid", (1, 6, 28, 28)),
        ("AvgPool2d", (1, 6, 14, 14)),
        ("Conv2d", (1, 16, 10, 10)),
        ("Sigmoid", (1, 16, 10, 10)),
        ("AvgPool2d", (1, 16, 5, 5)),  # seed: "#输出为16*5*5"
        ("Flatten", (1, 400)),  # seed: "1x400"
        ("Linear", (1, 120)),
        ("Sigmoid", (1, 120)),
        ("Linear", (1, 84)),
        ("Sigmoid", (1, 84)),
        ("Linear", (1, 10)),
    ]


def test_lenet_reshape_variant():
    m = R.lenet(with_reshape=True)
    assert isinstance(m[0], R.Reshape) and len(m) == len(R.lenet()) + 1
    assert m(torch.rand(3, 784)).shape == (3, 10)  # Reshape views (N, 784) as (N,1,28,28)


def test_lenet_bn_shapes_and_train_mode():
    m = R.lenet_bn()
    types = [type(l).__name__ for l in m]
    assert types == [
        "Conv2d",
        "BatchNorm2d",
        "Sigmoid",
        "AvgPool2d",
        "Conv2d",
        "BatchNorm2d",
        "Sigmoid",
        "AvgPool2d",
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Linear",
    ]
    assert m[0].padding == (0, 0)
    shapes = {i: s for i, (_, s) in enumerate(trace(m.eval(), torch.rand(1, 1, 28, 28)))}
    assert shapes[0] == (1, 6, 24, 24)
    assert shapes[7] == (1, 16, 4, 4)
    assert shapes[8] == (1, 256)
    m.train()
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# --------------------------------------------------------------------------------------
# AlexNet family
# --------------------------------------------------------------------------------------
def test_alexnet_shapes():
    shapes = trace(R.alexnet().eval(), torch.rand(1, 1, 224, 224))
    convs_pools = [s for n, s in shapes if n in ("Conv2d", "MaxPool2d")]
    assert convs_pools == [
        (1, 96, 54, 54),
        (1, 96, 26, 26),
        (1, 256, 26, 26),
        (1, 256, 12, 12),
        (1, 384, 12, 12),
        (1, 384, 12, 12),
        (1, 256, 12, 12),
        (1, 256, 5, 5),
    ]
    assert ("Flatten", (1, 6400)) in shapes
    assert shapes[-1] == ("Linear", (1, 10))
    assert R.alexnet(num_classes=1000)[-1].out_features == 1000  # seed 004 variant


def test_alexnet_cifar10_structure_and_shapes():
    m = R.alexnet_cifar10().eval()
    assert isinstance(m, R.AlexNet)
    assert [name for name, _ in m.named_children()] == ["features", "avgpool", "classifier"]
    relus = [l for l in m.modules() if isinstance(l, nn.ReLU)]
    assert len(relus) == 7 and all(r.inplace for r in relus)
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    assert [
        (c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs
    ] == [
        (3, 64, 11, 4, 2),
        (64, 192, 5, 1, 2),
        (192, 384, 3, 1, 1),
        (384, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
    ]
    assert [type(l).__name__ for l in m.classifier] == [
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert [(l.in_features, l.out_features) for l in m.classifier if isinstance(l, nn.Linear)] == [
        (9216, 4096),
        (4096, 1024),
        (1024, 10),
    ]
    x = torch.rand(1, 3, 96, 96)
    f = m.features(x)
    assert f.shape == (1, 256, 2, 2)
    assert m.avgpool(f).shape == (1, 256, 6, 6)
    assert m(x).shape == (1, 10)


def test_alexnet_lrn_placement():
    plain = [type(l).__name__ for l in R.alexnet()]
    m = R.alexnet_lrn()
    types = [type(l).__name__ for l in m]
    # paper order: Conv -> ReLU -> LRN -> MaxPool, after conv1 and conv2 only
    expected = plain[:2] + ["LocalResponseNorm"] + plain[2:5] + ["LocalResponseNorm"] + plain[5:]
    assert types == expected
    for l in m:
        if isinstance(l, nn.LocalResponseNorm):
            assert (l.size, l.alpha, l.beta, l.k) == (5, 1e-4, 0.75, 2.0)
    alt = [type(l).__name__ for l in R.alexnet_lrn(lrn_after_pool=True)]
    assert alt == plain[:3] + ["LocalResponseNorm"] + plain[3:6] + ["LocalResponseNorm"] + plain[6:]
    shapes = trace(m.eval(), torch.rand(1, 1, 224, 224))
    assert shapes[2] == ("LocalResponseNorm", (1, 96, 54, 54))
    assert shapes[6] == ("LocalResponseNorm", (1, 256, 26, 26))
    assert ("Flatten", (1, 6400)) in shapes


def test_alexnet_lrn_changes_outputs_only():
    """Same weights as alexnet(): LRN changes values, not the parameter layout."""
    a, b = R.alexnet().eval(), R.alexnet_lrn().eval()
    pa = [p for p in a.parameters()]
    pb = [p for p in b.parameters()]
    assert [p.shape for p in pa] == [p.shape for p in pb]
    for src, dst in zip(pa, pb):
        dst.copy_(src)
    x = torch.rand(1, 1, 224, 224)
    assert not torch.allclose(a(x), b(x))


# --------------------------------------------------------------------------------------
# VGG
# --------------------------------------------------------------------------------------
def test_conv_arch_table():
    assert R.CONV_ARCH == {
        "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
        "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
        "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
        "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
    }


@pytest.mark.parametrize("name,depth", [("vgg11", 11), ("vgg13", 13), ("vgg16", 16), ("vgg19", 19)])
def test_vgg_depth(name, depth):
    # seed 000: "该网络使用 8 个卷积层和 3 个全连接层,因此它被称为 VGG-11"
    with torch.device("meta"):
        m = R.vgg(R.CONV_ARCH[name])
    n_conv = sum(isinstance(l, nn.Conv2d) for l in m.modules())
    n_fc = sum(isinstance(l, nn.Linear) for l in m.modules())
    assert (n_conv, n_fc) == (depth - 3, 3)
    assert len([l for l in m if isinstance(l, nn.Sequential)]) == 5


def test_vgg11_shapes_and_first_fc():
    m = R.vgg11().eval()
    shapes = trace(m, torch.rand(1, 1, 224, 224))
    assert [s for n, s in shapes[:6]] == [
        (1, 64, 112, 112),
        (1, 128, 56, 56),
        (1, 256, 28, 28),
        (1, 512, 14, 14),
        (1, 512, 7, 7),
        (1, 25088),
    ]
    # seed 002: "512x7x7x4096=102M"
    assert m[6].weight.numel() == 512 * 7 * 7 * 4096 == 102_760_448


def test_vgg_small():
    m = R.vgg_small().eval()
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    fcs = [l for l in m if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in fcs] == [
        (6272, 4096),
        (4096, 4096),
        (4096, 10),
    ]
    shapes = trace(m, torch.rand(1, 1, 224, 224))
    assert [s for n, s in shapes[:6]] == [
        (1, 16, 112, 112),
        (1, 32, 56, 56),
        (1, 64, 28, 28),
        (1, 128, 14, 14),
        (1, 128, 7, 7),
        (1, 6272),
    ]


# --------------------------------------------------------------------------------------
# NiN -- seed 002 prints these exact lines for X = torch.rand(1, 1, 224, 224)
# --------------------------------------------------------------------------------------
def test_nin_block_shapes_seed002():
    assert trace(R.nin().eval(), torch.rand(size=(1, 1, 224, 224))) == [
        ("Sequential", (1, 96, 54, 54)),
        ("MaxPool2d", (1, 96, 26, 26)),
        ("Sequential", (1, 256, 26, 26)),
        ("MaxPool2d", (1, 256, 12, 12)),
        ("Sequential", (1, 384, 12, 12)),
        ("MaxPool2d", (1, 384, 5, 5)),
        ("Dropout", (1, 384, 5, 5)),
        ("Sequential", (1, 10, 5, 5)),
        ("AdaptiveAvgPool2d", (1, 10, 1, 1)),
        ("Flatten", (1, 10)),
    ]


def test_nin_has_no_linear():
    assert not any(isinstance(l, nn.Linear) for l in R.nin().modules())


# --------------------------------------------------------------------------------------
# GoogLeNet
# --------------------------------------------------------------------------------------
def test_googlenet_shapes_96():
    assert trace(R.googlenet().eval(), torch.rand(size=(1, 1, 96, 96))) == [
        ("Sequential", (1, 64, 24, 24)),
        ("Sequential", (1, 192, 12, 12)),
        ("Sequential", (1, 480, 6, 6)),
        ("Sequential", (1, 832, 3, 3)),
        ("Sequential", (1, 1024)),
        ("Linear", (1, 10)),
    ]


def test_inception_block():
    blk = R.Inception(192, 64, (96, 128), (16, 32), 32)
    assert [n for n, _ in blk.named_children()] == [
        "p1_1",
        "p2_1",
        "p2_2",
        "p3_1",
        "p3_2",
        "p4_1",
        "p4_2",
    ]
    y = blk(torch.rand(2, 192, 12, 12))
    assert y.shape == (2, 64 + 128 + 32 + 32, 12, 12)
    assert (y >= 0).all()  # every path ends in F.relu


def test_googlenet_inception_channels():
    m = R.googlenet()
    incs = [l for l in m.modules() if isinstance(l, R.Inception)]
    assert len(incs) == 9
    outs = [
        l.p1_1.out_channels + l.p2_2.out_channels + l.p3_2.out_channels + l.p4_2.out_channels
        for l in incs
    ]
    ins = [l.p1_1.in_channels for l in incs]
    assert outs == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert ins == [192, 256, 480, 512, 512, 512, 528, 832, 832]


def test_googlenet_b2_relu_variant():
    with_relu, without = R.googlenet(), R.googlenet(b2_relu=False)
    assert [type(l).__name__ for l in with_relu[1]] == [
        "Conv2d",
        "ReLU",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
    ]  # seed 004 / d2l
    assert [type(l).__name__ for l in without[1]] == [
        "Conv2d",
        "ReLU",
        "Conv2d",
        "MaxPool2d",
    ]  # seed 000 text
    assert n_params(without) == n_params(with_relu)


# --------------------------------------------------------------------------------------
# Inception on MNIST (seed 003)
# --------------------------------------------------------------------------------------
def test_inception_mnist_intermediate_shapes():
    m = R.inception_mnist().eval()
    seen = {}

    def pre(name):
        return lambda mod, args: seen.__setitem__(name + ".in", tuple(args[0].shape))

    def post(name):
        return lambda mod, args, out: seen.__setitem__(name + ".out", tuple(out.shape))

    for name in ("incep1", "incep2", "fc"):
        getattr(m, name).register_forward_pre_hook(pre(name))
        getattr(m, name).register_forward_hook(post(name))
    y = m(torch.rand(2, 1, 28, 28))
    assert y.shape == (2, 10)
    assert seen["incep1.in"] == (2, 10, 12, 12)  # seed (1)
    # seed prose (2) says (batch,88,8,8); the seed code keeps H,W: 88x12x12
    assert seen["incep1.out"] == (2, 88, 12, 12)
    assert seen["incep2.in"] == (2, 20, 4, 4)  # seed (3)
    assert seen["incep2.out"] == (2, 88, 4, 4)  # seed (4)
    assert seen["fc.in"] == (2, 1408)  # seed (5)


def test_inception_a_block():
    blk = R.InceptionA(in_channels=10)
    assert [n for n, _ in blk.named_children()] == [
        "branch1X1",
        "branch5X5_1",
        "branch5X5_2",
        "branch3X3_1",
        "branch3X3_2",
        "branch3X3_3",
        "branch_pool",
    ]
    assert blk(torch.rand(2, 10, 12, 12)).shape == (2, 88, 12, 12)
    # 72 1x1 filters over in_channels (+72 biases) + 5x5 9624 + 3x3 3480 + 3x3 5208
    assert n_params(blk) == 19_104
    assert n_params(R.InceptionA(in_channels=20)) == 19_824
    # conv2 sees incep1's 88 channels
    assert R.inception_mnist().conv2.in_channels == 88


# --------------------------------------------------------------------------------------
# ResNet-18
# --------------------------------------------------------------------------------------
def test_residual_block_d2l_demo():
    blk = R.Residual(3, 3)
    assert blk.conv3 is None
    assert blk(torch.rand(4, 3, 6, 6)).shape == (4, 3, 6, 6)
    blk = R.Residual(3, 6, use_1x1conv=True, strides=2)
    assert isinstance(blk.conv3, nn.Conv2d)
    assert blk(torch.rand(4, 3, 6, 6)).shape == (4, 6, 3, 3)
    assert {"conv1", "conv2", "conv3", "bn1", "bn2"} <= {n for n, _ in blk.named_children()}


def test_resnet18_block_shapes_224_seed000():
    # seed 000 "各块输出的Shape"
    assert trace(R.resnet18().eval(), torch.rand(size=(1, 1, 224, 224))) == [
        ("Sequential", (1, 64, 56, 56)),
        ("Sequential", (1, 64, 56, 56)),
        ("Sequential", (1, 128, 28, 28)),
        ("Sequential", (1, 256, 14, 14)),
        ("Sequential", (1, 512, 7, 7)),
        ("AdaptiveAvgPool2d", (1, 512, 1, 1)),
        ("Flatten", (1, 512)),
        ("Linear", (1, 10)),
    ]


def test_resnet18_block_shapes_96():
    assert [s for _, s in trace(R.resnet18().eval(), torch.rand(1, 1, 96, 96))] == [
        (1, 64, 24, 24),
        (1, 64, 24, 24),
        (1, 128, 12, 12),
        (1, 256, 6, 6),
        (1, 512, 3, 3),
        (1, 512, 1, 1),
        (1, 512),
        (1, 10),
    ]


def test_resnet18_structure():
    m = R.resnet18()
    res = [l for l in m.modules() if isinstance(l, R.Residual)]
    assert len(res) == 8
    assert [l.conv3 is not None for l in res] == [
        False,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert [l.conv1.stride[0] for l in res] == [1, 1, 2, 1, 2, 1, 2, 1]
    # 1 stem conv + 16 block convs + 1 fc = 18 weighted layers (1x1 shortcuts not counted)
    n3x3_or_stem = sum(isinstance(l, nn.Conv2d) and l.kernel_size != (1, 1) for l in m.modules())
    assert n3x3_or_stem + 1 == 18


def test_resnet18_unused_relu_variant_is_equivalent():
    a = R.resnet18().eval()
    b = R.resnet18(unused_relu=False).eval()
    assert all(
        isinstance(l.relu, nn.ReLU) and l.relu.inplace
        for l in a.modules()
        if isinstance(l, R.Residual)
    )
    assert not any(hasattr(l, "relu") for l in b.modules() if isinstance(l, R.Residual))
    b.load_state_dict(a.state_dict())  # same keys, strict
    x = torch.rand(2, 1, 96, 96)
    assert torch.equal(a(x), b(x))


# --------------------------------------------------------------------------------------
# DenseNet
# --------------------------------------------------------------------------------------
def test_dense_and_transition_demo_seed000():
    blk = R.DenseBlock(2, 3, 10)
    Y = blk(torch.randn(4, 3, 8, 8))
    assert Y.shape == (4, 23, 8, 8)
    assert R.transition_block(23, 10)(Y).shape == (4, 10, 4, 4)


def test_densenet_shapes_96():
    m = R.densenet().eval()
    assert trace(m, torch.rand(1, 1, 96, 96)) == [
        ("Sequential", (1, 64, 24, 24)),
        ("DenseBlock", (1, 192, 24, 24)),
        ("Sequential", (1, 96, 12, 12)),
        ("DenseBlock", (1, 224, 12, 12)),
        ("Sequential", (1, 112, 6, 6)),
        ("DenseBlock", (1, 240, 6, 6)),
        ("Sequential", (1, 120, 3, 3)),
        ("DenseBlock", (1, 248, 3, 3)),
        ("BatchNorm2d", (1, 248, 3, 3)),
        ("ReLU", (1, 248, 3, 3)),
        ("AdaptiveMaxPool2d", (1, 248, 1, 1)),  # Max, as the seed writes it
        ("Flatten", (1, 248)),
        ("Linear", (1, 10)),
    ]
    assert sum(isinstance(l, R.DenseBlock) for l in m) == 4
    assert all(len(l.net) == 4 for l in m if isinstance(l, R.DenseBlock))
