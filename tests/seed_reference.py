"""Reference architectures of the seed networks, in plain PyTorch.

Every network here is transcribed from the seed documents in ``/work/shared/seeds/``
(Chinese d2l-style tutorials).  Tests compare archspec-built models against these
(parameter counts, per-layer shapes, outputs), so the code below follows the seeds
*literally*: same layer order, same constructor arguments, same module attribute names,
same functional calls in ``forward``.  Do not "tidy" it.

Seed map (file prefix -> what it contributes):

* 000 -- d2l review: LeNet, AlexNet (10 classes), VGG-11 + small VGG (ratio 4), NiN,
  GoogLeNet, ResNet-18 (with printed block shapes at 224), DenseNet.
* 001 -- AlexNet article: text on LRN placement, and the ``AlexNet`` class for CIFAR-10.
* 002 -- d2l NiN lecture notes, with the printed per-block shapes at 224.
* 003 -- "Inception" MNIST tutorial: ``InceptionA`` and ``Net``.
* 004 -- course notes: LeNet, AlexNet (1000 classes), VGG ``conv_arch`` dict (11/13/16/19),
  GoogLeNet, ResNet.

Where seeds disagree or are silent, the choice made is documented next to the code
(search for "SEED NOTE").

``SEEDS`` maps a key to ``(factory, (C, H, W))`` -- the input shape the seed trains on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CONV_ARCH",
    "LRN_KWARGS",
    "SEEDS",
    "SMALL_VGG_RATIO",
    "AlexNet",
    "DenseBlock",
    "Inception",
    "InceptionA",
    "InceptionMNIST",
    "Net",
    "Reshape",
    "Residual",
    "alexnet",
    "alexnet_cifar10",
    "alexnet_lrn",
    "conv_block",
    "densenet",
    "googlenet",
    "inception_mnist",
    "lenet",
    "lenet_bn",
    "nin",
    "nin_block",
    "resnet18",
    "resnet_block",
    "transition_block",
    "vgg",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg_block",
    "vgg_small",
]


# ---------------------------------------------------------------------------------------
# LeNet (seed 000 section 一; identical Sequential in seed 004)
# ---------------------------------------------------------------------------------------
class Reshape(torch.nn.Module):
    """Seed 000's reshape-to-MNIST module.  Not part of ``lenet()`` by default."""

    def forward(self, x):
        return x.view(-1, 1, 28, 28)


def lenet(with_reshape: bool = False) -> nn.Module:
    """Seed LeNet-5 (sigmoid + avg-pool), input 1x28x28.

    SEED NOTE: seed 000 puts ``Reshape()`` first; seed 004 does not.  It has no parameters
    and is a no-op for (N, 1, 28, 28) input, so it is left out unless ``with_reshape``.
    """
    layers = [
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    ]
    if with_reshape:
        layers.insert(0, Reshape())
    return nn.Sequential(*layers)


def lenet_bn() -> nn.Module:
    """LeNet with batch normalization, as d2l writes it (concise version, 批量规范化).

    SEED NOTE: seed 000 section 六 (批量归一化) only has prose, no code; this is the d2l
    book's ``nn.BatchNorm*`` LeNet.  The first conv has *no* padding, so the classifier
    sees 16x4x4 = 256 features for 28x28 input.  ``BatchNorm1d`` needs batch >= 2 in
    train mode.
    """
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5),
        nn.BatchNorm2d(6),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.BatchNorm2d(16),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(256, 120),
        nn.BatchNorm1d(120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.BatchNorm1d(84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


# ---------------------------------------------------------------------------------------
# AlexNet
# ---------------------------------------------------------------------------------------
def alexnet(num_classes: int = 10) -> nn.Module:
    """d2l AlexNet (seed 000), input 1x224x224.

    SEED NOTE: seed 004 writes the same network with ``nn.Linear(4096, 1000)``; seed 000
    (Fashion-MNIST) uses 10 classes, which is the default here.
    """
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )


class AlexNet(nn.Module):
    """Seed 001's ``AlexNet`` class (CIFAR-10, 3-channel input resized to 96).

    SEED NOTE: seed 001's markdown mangled ``__init__`` to ``init``; restored here.  The
    ``config`` dict only matters for ``num_classes`` (the save/load helpers are omitted).
    ``nn.ReLU(inplace=True)`` is kept as written.  The fc sizes are the seed's own
    (9216 -> 4096 -> 1024 -> classes), not torchvision's 4096 -> 4096.
    """

    def __init__(self, config=None):
        super().__init__()
        self._config = {"num_classes": 10} if config is None else config
        # 定义卷积层和池化层
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        # 自适应层,将上一层的数据转换成6x6大小
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # 全连接层
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(4096, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, self._config["num_classes"]),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def alexnet_cifar10() -> nn.Module:
    """Seed 001 AlexNet with ``alexnet_config['num_classes'] == 10``; input 3x96x96.

    At 96x96 the feature extractor ends at 256x2x2 and ``AdaptiveAvgPool2d((6, 6))``
    upsamples that to 256x6x6 = 9216.
    """
    return AlexNet({"num_classes": 10})


# SEED NOTE (LRN): no seed gives LRN hyper-parameters -- the formula in both seed 001
# ("计算过程可以用以下公式表示:") and seed 004 ("其中, 表示神经元的输出,是超参数") was lost
# in extraction.  We use the AlexNet paper's numbers k=2, n=5, alpha=1e-4, beta=0.75 passed
# straight to nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0).  Caveat: PyTorch
# (like Caffe) divides alpha by ``size`` and the paper does not, so the effective alpha is
# 2e-5 per squared neighbour, not the paper's 1e-4; the paper's formula to the letter would
# need alpha=5e-4 here.  We keep the conventional 1e-4 (what d2l-style code passes).
LRN_KWARGS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def alexnet_lrn(num_classes: int = 10, lrn_after_pool: bool = False) -> nn.Module:
    """d2l AlexNet (seed 000) plus LocalResponseNorm after conv1 and conv2.

    SEED NOTE (placement): seed 001 says LRN follows conv layers 1 and 2 only ("卷积层C3、C4、
    C5 ... 中间没有接入池化层或归一化层").  On the order relative to max-pooling the seed
    text contradicts itself: the C1 paragraph says "池化后进行LRN处理" (pool, then LRN),
    while the LRN section says "LRN是在卷积层和池化层之间添加的" (between conv and pool),
    and the C2/C3 paragraphs say their input is the "(响应归一化和池化)" / "(归一化的,池化的)"
    output -- the paper's "response-normalized and pooled", where max-pooling follows the
    normalization layers.  Default: paper order, Conv -> ReLU -> LRN -> MaxPool, for both
    conv1 and conv2.  ``lrn_after_pool=True`` gives the C1-paragraph order
    (Conv -> ReLU -> MaxPool -> LRN).  LRN has no parameters and keeps the shape, so the
    two orders differ only in output values.
    """

    def stage(conv):
        if lrn_after_pool:
            return [
                conv,
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.LocalResponseNorm(**LRN_KWARGS),
            ]
        return [
            conv,
            nn.ReLU(),
            nn.LocalResponseNorm(**LRN_KWARGS),
            nn.MaxPool2d(kernel_size=3, stride=2),
        ]

    return nn.Sequential(
        *stage(nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1)),
        *stage(nn.Conv2d(96, 256, kernel_size=5, padding=2)),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )


# ---------------------------------------------------------------------------------------
# VGG (seed 000 section 三; conv_arch dict from seed 004)
# ---------------------------------------------------------------------------------------
def vgg_block(num_convs, in_channels, out_channels):
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(conv_arch) -> nn.Module:
    """d2l VGG for 1x224x224 input, 10 classes.  The first Linear is sized
    ``out_channels * 7 * 7`` from the *last* block's channels."""
    conv_blks = []
    in_channels = 1
    # 卷积层部分
    for num_convs, out_channels in conv_arch:
        conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *conv_blks,
        nn.Flatten(),
        # 全连接层部分 224
        nn.Linear(out_channels * 7 * 7, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 10),
    )


# Seed 004's ``conv_arch`` dict; "vgg11" equals seed 000's ``conv_arch`` tuple.
CONV_ARCH = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
}

SMALL_VGG_RATIO = 4  # seed 000: "ratio = 4 #将通道数除以4 以方便训练"


def vgg11() -> nn.Module:
    return vgg(CONV_ARCH["vgg11"])


def vgg13() -> nn.Module:
    return vgg(CONV_ARCH["vgg13"])


def vgg16() -> nn.Module:
    return vgg(CONV_ARCH["vgg16"])


def vgg19() -> nn.Module:
    return vgg(CONV_ARCH["vgg19"])


def vgg_small() -> nn.Module:
    """Seed 000's trained VGG-11: channels // 4 -> (16, 32, 64, 128, 128); the classifier
    stays 4096-wide, its input is 128 * 7 * 7 = 6272."""
    small_conv_arch = [(pair[0], pair[1] // SMALL_VGG_RATIO) for pair in CONV_ARCH["vgg11"]]
    return vgg(small_conv_arch)


# ---------------------------------------------------------------------------------------
# NiN (seed 000 section 四 and seed 002 -- identical)
# ---------------------------------------------------------------------------------------
def nin_block(in_channels, out_channels, kernel_size, strides, padding):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
    )


def nin() -> nn.Module:
    """d2l NiN, input 1x224x224, 10 classes (no Linear layer)."""
    return nn.Sequential(
        nin_block(1, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        # 标签类别数是10
        nin_block(384, 10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )


# ---------------------------------------------------------------------------------------
# GoogLeNet (seed 000 section 五; seed 004)
# ---------------------------------------------------------------------------------------
class Inception(nn.Module):
    # `c1`--`c4` 是每条路径的输出通道数
    def __init__(self, in_channels, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        # 线路1,单1 x 1卷积层
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        # 线路2,1 x 1卷积层后接3 x 3卷积层
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        # 线路3,1 x 1卷积层后接5 x 5卷积层
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        # 线路4,3 x 3最大汇聚层后接1 x 1卷积层
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        # 在通道维度上拼接输出
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet(b2_relu: bool = True) -> nn.Module:
    """d2l GoogLeNet, input 1x96x96, 10 classes.

    SEED NOTE: in block b2, seed 004 (and the d2l book) has ``nn.ReLU()`` after
    ``Conv2d(64, 192, 3, padding=1)``; seed 000 omits it (transcription slip).  Default
    follows seed 004 / d2l; ``b2_relu=False`` gives seed 000's text.  Parameters and
    shapes are identical either way.
    """
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b2_layers = [
        nn.Conv2d(64, 64, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(64, 192, kernel_size=3, padding=1),
    ]
    if b2_relu:
        b2_layers.append(nn.ReLU())
    b2_layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*b2_layers)
    b3 = nn.Sequential(
        Inception(192, 64, (96, 128), (16, 32), 32),
        Inception(256, 128, (128, 192), (32, 96), 64),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b4 = nn.Sequential(
        Inception(480, 192, (96, 208), (16, 48), 64),
        Inception(512, 160, (112, 224), (24, 64), 64),
        Inception(512, 128, (128, 256), (24, 64), 64),
        Inception(512, 112, (144, 288), (32, 64), 64),
        Inception(528, 256, (160, 320), (32, 128), 128),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b5 = nn.Sequential(
        Inception(832, 256, (160, 320), (32, 128), 128),
        Inception(832, 384, (192, 384), (48, 128), 128),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, 10))


# ---------------------------------------------------------------------------------------
# Inception on MNIST (seed 003)
# ---------------------------------------------------------------------------------------
class InceptionA(nn.Module):
    """Seed 003's block: 16 + 24 + 24 + 24 = 88 output channels, no activations inside.
    Attribute names (``branch1X1`` with a capital X, ...) are the seed's.

    SEED NOTE: the prose says branch5x5's 5x5 conv uses "步长为2" (stride 2) "so the
    outputs can be concatenated"; the code has ``padding=2`` (stride 2 could not be
    concatenated).  The code is followed: stride 1, padding 2.
    """

    def __init__(self, in_channels):
        super().__init__()
        self.branch1X1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5X5_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5X5_2 = nn.Conv2d(16, 24, kernel_size=5, padding=2)
        self.branch3X3_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch3X3_2 = nn.Conv2d(16, 24, kernel_size=3, padding=1)
        self.branch3X3_3 = nn.Conv2d(24, 24, kernel_size=3, padding=1)
        self.branch_pool = nn.Conv2d(in_channels, 24, kernel_size=1)

    def forward(self, x):
        branch1X1 = self.branch1X1(x)
        branch5X5 = self.branch5X5_1(x)
        branch5X5 = self.branch5X5_2(branch5X5)
        branch3X3 = self.branch3X3_1(x)
        branch3X3 = self.branch3X3_2(branch3X3)
        branch3X3 = self.branch3X3_3(branch3X3)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        outputs = [branch1X1, branch5X5, branch3X3, branch_pool]
        return torch.cat(outputs, dim=1)


class InceptionMNIST(nn.Module):
    """Seed 003's ``Net``.  Note the order in forward: pool *then* relu.

    SEED NOTE: the seed's prose says incep1 outputs (batch,88,8,8); the code gives
    (batch,88,12,12) (Inception blocks keep H,W; the 8x8 is conv2's pre-pool output).
    The other prose shapes -- (batch,10,12,12), (batch,20,4,4), (batch,88,4,4), 1408 --
    agree with the code.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(88, 20, kernel_size=5)
        self.incep1 = InceptionA(in_channels=10)
        self.incep2 = InceptionA(in_channels=20)
        self.mp = nn.MaxPool2d(2)
        self.fc = nn.Linear(1408, 10)

    def forward(self, x):
        in_size = x.size(0)
        x = F.relu(self.mp(self.conv1(x)))
        x = self.incep1(x)
        x = F.relu(self.mp(self.conv2(x)))
        x = self.incep2(x)
        x = x.view(in_size, -1)
        x = self.fc(x)
        return x


Net = InceptionMNIST  # the seed's own name for it


def inception_mnist() -> nn.Module:
    """Seed 003 ``Net``, input 1x28x28."""
    return InceptionMNIST()


# ---------------------------------------------------------------------------------------
# ResNet-18 (seed 000 section 七; seed 004)
# ---------------------------------------------------------------------------------------
class Residual(nn.Module):
    """d2l residual block.

    SEED NOTE: seed 000 (d2l-zh) also registers ``self.relu = nn.ReLU(inplace=True)``,
    which ``forward`` never uses (it calls ``F.relu``); seed 004 does not have it.  It has
    no parameters or buffers and is never called, so state_dicts and outputs are equal
    either way; it only shows up in ``named_modules()``.  Kept by default (seed 000),
    ``unused_relu=False`` drops it (seed 004).
    """

    def __init__(
        self, input_channels, num_channels, use_1x1conv=False, strides=1, unused_relu=True
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(
            input_channels, num_channels, kernel_size=3, padding=1, stride=strides
        )
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)
        if unused_relu:
            self.relu = nn.ReLU(inplace=True)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


# num_residuals是表示使用几个block组成一个Stage
def resnet_block(input_channels, num_channels, num_residuals, first_block=False, unused_relu=True):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(
                Residual(
                    input_channels,
                    num_channels,
                    use_1x1conv=True,
                    strides=2,
                    unused_relu=unused_relu,
                )
            )
        else:
            blk.append(Residual(num_channels, num_channels, unused_relu=unused_relu))
    return blk


def resnet18(unused_relu: bool = True) -> nn.Module:
    """d2l ResNet-18, input 1x96x96 (seed prints block shapes for 224), 10 classes."""
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True, unused_relu=unused_relu))
    b3 = nn.Sequential(*resnet_block(64, 128, 2, unused_relu=unused_relu))
    b4 = nn.Sequential(*resnet_block(128, 256, 2, unused_relu=unused_relu))
    b5 = nn.Sequential(*resnet_block(256, 512, 2, unused_relu=unused_relu))
    return nn.Sequential(
        b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10)
    )


# ---------------------------------------------------------------------------------------
# DenseNet (seed 000)
# ---------------------------------------------------------------------------------------
def conv_block(input_channels, num_channels):
    return nn.Sequential(
        nn.BatchNorm2d(input_channels),
        nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1),
    )


class DenseBlock(nn.Module):
    def __init__(self, num_convs, input_channels, num_channels):
        super().__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block(num_channels * i + input_channels, num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X):
        for blk in self.net:
            Y = blk(X)
            # 连接通道维度上每个块的输入和输出
            X = torch.cat((X, Y), dim=1)
        return X


def transition_block(input_channels, num_channels):
    return nn.Sequential(
        nn.BatchNorm2d(input_channels),
        nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


def densenet() -> nn.Module:
    """d2l DenseNet, input 1x96x96, 10 classes.

    SEED NOTE: the seed ends with ``nn.AdaptiveMaxPool2d((1, 1))`` (the d2l book uses
    ``AdaptiveAvgPool2d``); the seed is followed.  Channels: 64 -> 192 -> 96 -> 224 -> 112
    -> 240 -> 120 -> 248, classifier Linear(248, 10).
    """
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        # 上一个稠密块的输出通道数
        num_channels += num_convs * growth_rate
        # 在稠密块之间添加一个转换层,使通道数量减半
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(
        b1,
        *blks,
        nn.BatchNorm2d(num_channels),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, 10),
    )


# ---------------------------------------------------------------------------------------
# Table: key -> (factory, input (C, H, W))
# ---------------------------------------------------------------------------------------
SEEDS = {
    "lenet": (lenet, (1, 28, 28)),
    "lenet_bn": (lenet_bn, (1, 28, 28)),
    "alexnet": (alexnet, (1, 224, 224)),
    "alexnet_cifar10": (alexnet_cifar10, (3, 96, 96)),
    "alexnet_lrn": (alexnet_lrn, (1, 224, 224)),
    "vgg11": (vgg11, (1, 224, 224)),
    "vgg13": (vgg13, (1, 224, 224)),
    "vgg16": (vgg16, (1, 224, 224)),
    "vgg19": (vgg19, (1, 224, 224)),
    "vgg_small": (vgg_small, (1, 224, 224)),
    "nin": (nin, (1, 224, 224)),
    "googlenet": (googlenet, (1, 96, 96)),
    "inception_mnist": (inception_mnist, (1, 28, 28)),
    "resnet18": (resnet18, (1, 96, 96)),
    "densenet": (densenet, (1, 96, 96)),
}
