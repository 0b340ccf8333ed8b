"""`archspec import`: torchvision's classification models and the seed networks round-trip —
import, `check` (parameter count = the source's), `build`, the source's state_dict loads
strictly and the eval outputs agree; the imported specs are readable (templates, repeats);
what the language cannot express is a located error, or with --partial a marked file.

Models are meta-built and filled with random tensors (no slow initialisers) and traced at small
inputs, on one thread. A representative subset runs by default; ARCHSPEC_IMPORT_ALL=1 runs every
builder and seed (about two minutes more on a loaded 2-core machine)."""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from functools import cache

import pytest
import torch
import yaml
from click.testing import CliRunner
from seed_reference import SEEDS
from test_torchvision_zoo import (  # noqa: F401  # _one_thread: the same one-thread fixture
    SMALL,
    ZOO,
    _one_thread,
    random_state,
    torchvision_model,
)
from torch import nn

import archspec
from archspec.cli import main
from archspec.importer import ImportFailure


def round_trip(
    model: nn.Module, shape: tuple[int, ...], tmp_path, name: str = "net", double: bool = False
) -> str:
    """`double`: outputs compared in float64 (MaxViT's random-weight activations grow to 1e3,
    where float32's different summation orders differ by more than 1e-5 of the output)."""
    model.eval()
    text = archspec.import_module(model, shape, verify=False)  # verified here, step by step
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
    if double:
        model, ours, x = model.double(), ours.double(), x.double()
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


ALL = os.environ.get("ARCHSPEC_IMPORT_ALL") == "1"
# Every family and every structural case (grouped convs, aux heads, flat Inception branches) runs
# by default; the deeper or wider siblings of these only with ARCHSPEC_IMPORT_ALL=1.
DEFAULT_TV = {
    "alexnet", "vgg16", "vgg11_bn", "resnet18", "resnet50", "resnext50_32x4d", "densenet121",
    "googlenet", "inception_v3_noaux",
}  # fmt: skip
READABLE = ("resnet50", "vgg16", "densenet121")  # imported once for two tests each
DEFAULT_SEEDS = set(SEEDS) - {"vgg13", "vgg16", "vgg19", "alexnet_lrn"}


def everything(names, default):
    return [
        n if n in default else pytest.param(n, marks=pytest.mark.skipif(not ALL, reason="ALL"))
        for n in names
    ]


@cache
def kept(variant: str) -> nn.Module:
    assert variant in READABLE
    return tv(variant)


@cache
def imported(variant: str) -> str:
    size = SMALL.get(variant, 64)
    return archspec.import_module(kept(variant), (3, size, size), verify=False)


@pytest.mark.parametrize("variant", everything(ZOO, DEFAULT_TV))
def test_torchvision_round_trip(variant, tmp_path):
    size = SMALL.get(variant, 64)
    model = kept(variant) if variant in READABLE else tv(variant)
    text = round_trip(model, (3, size, size), tmp_path, variant)
    head = text.splitlines()[:2]
    assert head[0].startswith("# yaml-language-server: $schema=")
    assert "torchvision.models" in head[1]


@pytest.mark.parametrize("key", everything(SEEDS, DEFAULT_SEEDS))
def test_seed_round_trip(key, tmp_path):
    factory, shape = SEEDS[key]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = factory()
    round_trip(model, shape, tmp_path, key)


# Builders beyond specs/torchvision/ that the language also covers (fire modules, inverted
# residuals, x.mean([2, 3]) as a global pool). MNASNet's and MobileNet's depthwise convs included.
EXTRA = ["squeezenet1_0", "squeezenet1_1", "mobilenet_v2", "mnasnet0_5", "mnasnet0_75",
         "mnasnet1_0", "mnasnet1_3"]  # fmt: skip


@pytest.mark.parametrize(
    "builder", everything(EXTRA, {"squeezenet1_1", "mobilenet_v2", "mnasnet0_5"})
)
def test_more_torchvision_builders_round_trip(builder, tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = getattr(tvm, builder)(weights=None, num_classes=10)  # small: built as it is
    state = model.state_dict()  # keeps the version metadata MNASNet's loader reads
    state.update(random_state(model, torch.Generator().manual_seed(0)))
    model.load_state_dict(state)
    round_trip(model, (3, 64, 64), tmp_path, builder)


# The convolutional families of specs/torchvision/ beyond the classic ones: squeeze-and-excitation
# (`x * se(x)` -> `scale`), hardswish/SiLU, stochastic depth, conditional residuals, ShuffleNet's
# chunk -> `split` and view/transpose/view -> `channel_shuffle`, RegNet's `block1-0` names. The
# smallest of each family by default; every builder with ARCHSPEC_IMPORT_ALL=1.
CONV = (
    [f"efficientnet_b{i}" for i in range(8)]
    + [f"efficientnet_v2_{s}" for s in "sml"]
    + ["mobilenet_v3_small", "mobilenet_v3_large"]
    + [f"regnet_{k}_{s}" for k in "xy" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")]
    + ["regnet_y_128gf"]
    + [f"shufflenet_v2_x{s}" for s in ("0_5", "1_0", "1_5", "2_0")]
)  # fmt: skip
DEFAULT_CONV = {
    "efficientnet_b0", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
    "shufflenet_v2_x0_5",
}  # fmt: skip


def meta_built(builder: str, **kwargs) -> nn.Module:
    """A torchvision builder on the meta device, filled with random tensors. RegNet's
    BlockParams compute the widths with tensors (`.tolist()`): those run on the CPU."""
    import torchvision.models as tvm
    from torchvision.models import regnet

    blocks = regnet.BlockParams.from_init_params

    def on_cpu(*args, **kw):
        with torch.device("cpu"):
            return blocks(*args, **kw)

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        regnet.BlockParams.from_init_params = on_cpu  # type: ignore[method-assign]
        try:
            model = getattr(tvm, builder)(weights=None, **kwargs)
        finally:
            regnet.BlockParams.from_init_params = blocks  # type: ignore[method-assign]
    model.load_state_dict(
        random_state(model, torch.Generator().manual_seed(0)), strict=True, assign=True
    )
    return model


@pytest.mark.parametrize("builder", everything(CONV, DEFAULT_CONV))
def test_convolutional_builders_round_trip(builder, tmp_path):
    model = meta_built(builder, num_classes=10)
    round_trip(model, (3, 64, 64), tmp_path, builder)


@cache
def conv_imported(builder: str) -> dict:
    model = meta_built(builder, num_classes=10).eval()
    return yaml.safe_load(archspec.import_module(model, (3, 64, 64), verify=False))


def test_efficientnet_is_one_mbconv_template_with_optional_expansion():
    doc = conv_imported("efficientnet_b0")
    assert set(doc["templates"]) == {"conv2d_norm_activation", "mbconv"}
    cna = doc["templates"]["conv2d_norm_activation"]["body"]
    assert cna[-1] == {"when": "$has_silu", "silu": {"inplace": True}}  # the activation: optional
    mbconv = doc["templates"]["mbconv"]["residual"]
    assert mbconv["shortcut"] == "identity_if_same"  # summed only where torchvision sums
    block, depth = mbconv["main"]
    layers = block["seq"]["layers"]
    assert block["seq"]["name"] == "block" and layers[0]["when"] == "$has_conv2d_norm_activation"
    by = layers[2]["scale"]["by"]  # squeeze-and-excitation: a scale
    assert [next(iter(x.values()))["name"] for x in by[1::2]] == ["fc1", "fc2"]
    assert depth == {"stochastic_depth": {"p": "$p", "name": "stochastic_depth"}}
    features = doc["stages"]["features"]
    assert features[1]["with"]["has_conv2d_norm_activation"] is False  # expand ratio 1
    assert features[1]["with"]["p"] == 0.0  # no sum, so no stochastic depth (as torchvision)
    assert [x["repeat"] for x in features if "repeat" in x] == [1, 2, 2, 3, 3, 4, 1]


def test_mobilenet_v3_is_one_block_template_with_optional_expansion_and_se():
    doc = conv_imported("mobilenet_v3_small")
    assert set(doc["templates"]) == {"conv2d_norm_activation", "inverted_residual"}
    layers = doc["templates"]["inverted_residual"]["residual"]["main"][0]["seq"]["layers"]
    assert [x.get("when") for x in layers] == ["$has_conv2d_norm_activation", None, "$has_scale",
                                               None]  # fmt: skip
    assert layers[2]["scale"]["by"][-1] == {"hardsigmoid": {"name": "scale_activation"}}
    calls = doc["stages"]["features"][1:-1]
    assert len(calls) == 11 and all(list(x) == ["inverted_residual"] for x in calls)


def test_shufflenet_unit_is_split_or_parallel_then_channel_shuffle():
    doc = conv_imported("shufflenet_v2_x0_5")
    unit = doc["templates"]["inverted_residual"]["body"]
    assert unit[0]["when"] == "$has_split" and unit[0]["split"]["branches"]["branch1"] == []
    assert unit[1]["when"] == "$has_parallel" and unit[2] == {"channel_shuffle": {"groups": 2}}
    stages = [doc["stages"][f"stage{i}"] for i in (2, 3, 4)]
    assert [(s["repeat"], s["with"]["c"]) for s in stages] == [(4, 24), (8, 48), (4, 96)]
    assert all(s["first"] == {"has_split": False, "has_parallel": True} for s in stages)


@pytest.mark.parametrize("builder", ["regnet_x_400mf", "regnet_y_400mf"])
def test_regnet_is_one_bottleneck_template_repeated_with_hyphenated_names(builder):
    doc = conv_imported(builder)
    assert set(doc["templates"]) == {"conv2d_norm_activation", "res_bottleneck_block"}
    block = doc["templates"]["res_bottleneck_block"]["residual"]
    assert block["shortcut"] == "auto" and block["projection"] == {"name": "proj"}
    layers = block["main"][0]["seq"]["layers"]
    assert ("scale" in json.dumps(layers)) == (builder == "regnet_y_400mf")
    stages = doc["stages"]["trunk_output"]
    assert [(s["repeat"], s["prefix"], s["name"]) for s in stages] == [
        (n, f"block{i}-", f"block{i}") for i, n in enumerate(
            [1, 2, 7, 12] if builder == "regnet_x_400mf" else [1, 3, 6, 6], start=1)
    ]  # fmt: skip


class _ShuffleUnit(nn.Module):
    """ShuffleNet's unit written out: a chunk (or a split) of the channels, one part through
    `branch`, the concatenation shuffled with reshape/permute/reshape."""

    def __init__(self, sizes=None):
        super().__init__()
        self.sizes = sizes or [4, 4]
        self.branch = nn.Sequential(nn.Conv2d(self.sizes[1], 4, 1), nn.ReLU())

    def forward(self, x):
        if self.sizes == [4, 4]:
            a, b = torch.chunk(x, 2, dim=1)
        else:
            a, b = x.split(self.sizes, 1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        return x.reshape(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def test_chunk_is_split_and_reshape_permute_reshape_is_channel_shuffle(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _ShuffleUnit(), nn.Flatten(), nn.Linear(288, 3))
    doc = yaml.safe_load(round_trip(model, (3, 8, 8), tmp_path))
    split, shuffle = doc["stages"]["1"]
    assert split["split"]["branches"]["branch"] == [{"conv": {"out": 4, "k": 1}}, "relu"]
    assert [] in split["split"]["branches"].values()  # the part passed on as it is
    assert shuffle == {"channel_shuffle": {"groups": 2}}
    with pytest.raises(ImportFailure) as e:  # unequal parts: no archspec op, said where
        archspec.import_module(nn.Sequential(_ShuffleUnit([2, 6])).eval(), (8, 6, 6))
    assert ("0", "Tensor.split") in {(p.path, p.what) for p in e.value.problems}


def test_hardsigmoid_channel_shuffle_and_stochastic_depth_map_to_their_ops(tmp_path):
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Hardsigmoid(), nn.ChannelShuffle(2), StochasticDepth(0.2, "row"),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 4),
    )  # fmt: skip
    doc = yaml.safe_load(round_trip(model, (3, 8, 8), tmp_path))
    assert list(doc["stages"].values())[1:4] == [
        "hardsigmoid",
        {"channel_shuffle": {"groups": 2}},
        {"stochastic_depth": {"p": 0.2}},
    ]


def test_resnet50_is_one_bottleneck_template_repeated_in_at_most_60_lines():
    text = imported("resnet50")
    doc = yaml.safe_load(text)
    assert len(text.splitlines()) <= 60
    assert list(doc["templates"]) == ["bottleneck"]
    layers = [doc["stages"][f"layer{i}"] for i in range(1, 5)]
    assert [s["repeat"] for s in layers] == [3, 4, 6, 3]
    assert all(s["use"] == "bottleneck" for s in layers)
    assert [s.get("first") for s in layers] == [None, {"stride": 2}, {"stride": 2}, {"stride": 2}]
    assert doc["templates"]["bottleneck"]["residual"]["shortcut"] == "auto"


def test_vgg16_features_are_one_block_template():
    doc = yaml.safe_load(imported("vgg16"))
    assert list(doc["templates"]) == ["block"]
    (features,) = doc["stages"]["features"]
    assert features["repeat"] == 5 and features["use"] == "block" and features["inline"]
    assert features["with"]["n"] == "[2, 2, 3, 3, 3][$i]"


def test_densenet121_has_a_dense_block_template():
    doc = yaml.safe_load(imported("densenet121"))
    block = doc["templates"]["dense_block"]
    assert block["dense"]["repeat"] == "$n" and block["dense"]["prefix"] == "denselayer"
    calls = [x["dense_block"]["n"] for x in doc["stages"]["features"] if "dense_block" in x]
    assert calls == [6, 12, 24, 16]
    assert "transition" in doc["templates"]


@pytest.mark.parametrize(
    "index, layer, why",
    [
        (-1, {"linear": {"out": 3}}, "state_dict differs (missing [], unexpected [], shapes ["),
        (2, "sigmoid", "outputs differ by"),
    ],
)
def test_a_spec_that_would_build_another_network_is_refused(monkeypatch, index, layer, why):
    """The import builds what it wrote and compares: a mistake in the importer itself (here a
    pass that changes a width, or an activation) is an ImportFailure, not a returned spec."""
    from archspec.importer import templates

    def corrupt(doc, classes=None):
        doc["stages"]["classifier"][index] = layer

    monkeypatch.setattr(templates, "templatize", corrupt)
    torch.manual_seed(0)
    with pytest.raises(ImportFailure) as e:
        archspec.import_module(tvm_small("alexnet"), (3, 64, 64))
    (problem,) = e.value.problems
    assert problem.what == "the written spec" and why in problem.why


def tvm_small(builder: str) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, builder)(weights=None, num_classes=10).eval()


def test_import_verifies_by_default():
    torch.manual_seed(0)
    text = archspec.import_module(tvm_small("resnet18"), (3, 32, 32))
    assert "layer4: {repeat: 2, use: basic_block" in text


def test_import_archspec_stays_torch_free():
    import subprocess
    import sys

    code = "import archspec, sys; archspec.import_module; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_import_gives_the_model_its_mode_back():
    model = tv("resnet18").train()
    archspec.import_module(model, (3, 32, 32))
    assert model.training  # its mode is given back


# ---------------------------------------------------------------- a user's own modules

USER_NET = """
import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class Mix(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.left = nn.Conv2d(c, 4, 1)
        self.right = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 4, 1))

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)


class Net(nn.Module):
    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList([Block(width) for _ in range(3)])
        self.mix = Mix(width)
        self.head = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.stem(x)), 2)
        for b in self.blocks:
            x = b(x)
        x = F.adaptive_avg_pool2d(self.mix(x), (4, 4))
        return self.head(x.view(x.size(0), -1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x).flatten(2).transpose(1, 2)
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class Dashed(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("conv 1", nn.Conv2d(3, 4, 3))

    def forward(self, x):
        return getattr(self, "conv 1")(x)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.conv(x)
        return x * self.gate(x)


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(c, c, 1)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.fc(self.pool(x))) * x


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = SE(4)

    def forward(self, x):
        return self.gate(self.conv(x))


class Minus(SE):
    def forward(self, x):
        return x - self.act(self.fc(self.pool(x)))


class Difference(Gated):
    def __init__(self):
        super().__init__()
        self.gate = Minus(4)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's package as a file in the working directory, imported by name like any other."""
    name = f"usernets_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_NET))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def run(*args):
    result = CliRunner().invoke(main, list(args), prog_name="archspec")
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result


def test_user_module_imports_from_the_command_line_and_round_trips(user_module, tmp_path):
    result = run("import", f"{user_module}:Net", "--kwargs", '{"num_classes": 3}',
                 "--input", "3,16,16", "-o", "net.yaml")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (tmp_path / "net.yaml").read_text()
    assert f'{user_module}:Net with {{"num_classes": 3}}' in text.splitlines()[1]
    doc = yaml.safe_load(text)
    assert doc["stages"]["blocks"] == {"repeat": 3, "use": "block"}
    assert run("check", "net.yaml").exit_code == 0
    import importlib

    model = importlib.import_module(user_module).Net(num_classes=3)
    round_trip(model, (3, 16, 16), tmp_path)


def test_unsupported_layer_is_located_by_module_path(user_module, tmp_path):
    import importlib

    with pytest.raises(ImportFailure) as e:
        archspec.import_module(importlib.import_module(user_module).Recurrent(), (1, 8, 8))
    assert any(p.path == "rnn" and p.what == "nn.LSTM" for p in e.value.problems)
    result = run("import", f"{user_module}:Recurrent", "--input", "1,8,8", "-o", "rnn.yaml")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "error: cannot express rnn (nn.LSTM): no archspec op" in lines
    assert all(ln.startswith(("error: ", "help: ")) for ln in lines), result.output
    assert not (tmp_path / "rnn.yaml").exists()


def test_partial_writes_the_rest_with_the_places_marked(user_module, tmp_path):
    result = run("import", f"{user_module}:Recurrent", "--input", "1,8,8", "--partial",
                 "-o", "rnn.yaml")  # fmt: skip
    assert result.exit_code == 1
    text = (tmp_path / "rnn.yaml").read_text()
    assert "  # archspec import: cannot express rnn (nn.LSTM)" in text.splitlines()
    doc = yaml.safe_load(text)
    assert doc["stages"]["conv"] == {"conv": {"out": 4, "k": 3}}
    assert doc["stages"]["fc"] == {"linear": {"out": 2}}


def test_a_gate_in_its_own_module_is_a_scale_and_in_the_models_forward_an_error(
    user_module, tmp_path
):
    import importlib

    users = importlib.import_module(user_module)
    torch.manual_seed(0)
    doc = yaml.safe_load(round_trip(users.Gated(), (3, 8, 8), tmp_path))
    assert doc["stages"]["gate"] == {
        "scale": {"by": [{"gap": {"name": "pool"}}, {"conv": {"out": 4, "k": 1, "name": "fc"}},
                         {"sigmoid": {"name": "act"}}]}
    }  # fmt: skip
    result = run("import", f"{user_module}:Gate", "--input", "3,8,8")
    assert result.exit_code == 1
    assert "error: cannot express <model> (operator.mul): branches that rejoin in the model's" in (
        result.output
    )
    result = run("import", f"{user_module}:Difference", "--input", "3,8,8")
    assert result.exit_code == 1
    assert "error: cannot express gate (operator.sub): combines several tensors" in result.output


def test_a_module_name_a_spec_cannot_give_is_refused(user_module):
    result = run("import", f"{user_module}:Dashed", "--input", "3,8,8")
    assert result.exit_code == 1, result.output
    assert "error: cannot express conv 1 (nn.Conv2d): `conv 1` is not a name" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuchmodule_xyz:Net"], "cannot import module 'nosuchmodule_xyz'"),
        (["torchvision.models:nosuch"], "has no attribute 'nosuch'"),
        (["torchvision.models"], "expected MODULE:CALLABLE"),
        (["torchvision.models:resnet18", "--kwargs", "{bad"], "--kwargs is not valid JSON"),
        (["torchvision.models:resnet18", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["torchvision.models:resnet18", "--kwargs", '{"nope": 1}'], "calling"),
        (["torchvision.models:resnet18", "--input", "3,x"], "--input"),
    ],
)
def test_usage_errors_exit_2_in_one_line(args, message):
    result = run("import", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output


def test_a_wrong_input_shape_is_one_error_line():
    result = run("import", "torchvision.models:alexnet", "--input", "1,64,64")
    assert result.exit_code == 1
    assert "does not run on an input of [1, 64, 64]" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- transformers

# torchvision's ConvNeXt, ViT and Swin builders (specs/torchvision/convnext, vit, swin): layer
# norms, permutes, learnable tensors, attention, shifted windows, patch merging. Meta-built with
# random weights (the window attention's position index and coordinates as torchvision computes
# them), at small inputs: ViT at image_size = 2 patches a side, the others at 32 or 64.
TRANSFORMERS = {
    "convnext_tiny": ({}, 32), "convnext_small": ({}, 32), "convnext_base": ({}, 32),
    "convnext_large": ({}, 32),
    "vit_b_16": ({"image_size": 32}, 32), "vit_b_32": ({"image_size": 64}, 64),
    "vit_l_16": ({"image_size": 32}, 32), "vit_l_32": ({"image_size": 64}, 64),
    "vit_h_14": ({"image_size": 28}, 28),
    "swin_t": ({}, 64), "swin_s": ({}, 64), "swin_b": ({}, 64),
    "swin_v2_t": ({}, 64), "swin_v2_s": ({}, 64), "swin_v2_b": ({}, 64),
    "maxvit_t": ({}, 224),  # its partitions of 7 fix the input
}  # fmt: skip
DEFAULT_TRANSFORMERS = {"convnext_tiny", "vit_b_32"}


def windowed_built(factory, **kwargs) -> nn.Module:
    """factory(**kwargs) on the meta device, then random weights; buffers that torchvision
    computes (Swin's relative position index and V2's coordinate table) computed for real."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = factory(**kwargs)
    for m in model.modules():
        if hasattr(m, "define_relative_position_index"):
            m.define_relative_position_bias_table()
            m.define_relative_position_index()
        if type(m).__name__ == "RelativePositionalMultiHeadAttention":  # MaxViT's
            from torchvision.models.maxvit import _get_relative_position_index

            m.relative_position_index = _get_relative_position_index(m.size, m.size)
    state = random_state(model, torch.Generator().manual_seed(0))
    state |= {k: v for k, v in model.state_dict().items() if not v.is_meta and k.endswith(
        ("relative_position_index", "relative_coords_table"))}  # fmt: skip
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


@pytest.mark.parametrize("builder", everything(TRANSFORMERS, DEFAULT_TRANSFORMERS))
def test_transformer_builders_round_trip(builder, tmp_path):
    import torchvision.models as tvm

    kwargs, size = TRANSFORMERS[builder]
    model = windowed_built(getattr(tvm, builder), weights=None, **kwargs)
    text = round_trip(model, (3, size, size), tmp_path, builder, double=builder == "maxvit_t")
    doc = yaml.safe_load(text)
    family = {"c": "cnblock", "v": "encoder_block", "s": "swin_transformer_block",
              "m": "partition_attention_layer"}[builder[0]]  # fmt: skip
    if builder.startswith("swin_v2"):
        family += "_v2"
    assert family in doc["templates"]


def small_swin(v2: bool) -> nn.Module:
    from torchvision.models import swin_transformer as sw

    more = {"block": sw.SwinTransformerBlockV2, "downsample_layer": sw.PatchMergingV2} if v2 else {}
    return windowed_built(sw.SwinTransformer, patch_size=[4, 4], embed_dim=16, depths=[2, 4],
                      num_heads=[2, 4], window_size=[4, 4], stochastic_depth_prob=0.2,
                      num_classes=10, **more)  # fmt: skip


@pytest.mark.parametrize("v2", [False, True])
def test_swin_is_one_block_template_repeated_per_stage(v2, tmp_path):
    doc = yaml.safe_load(round_trip(small_swin(v2), (3, 32, 48), tmp_path))
    block = "swin_transformer_block" + ("_v2" if v2 else "")
    assert set(doc["templates"]) == {block}  # its MLP, used there alone, written in place
    assert '"name": "mlp"' in json.dumps(doc["templates"][block])
    first, merge, second = doc["stages"]["features"][1:]
    # stochastic depth grows with the block's index over the network: written as torchvision
    # computes it (0.2 * k / 5 for block k of 6), the window shifted on every other block
    assert first["repeat"] == 2 and first["use"] == block
    assert first["with"] == {"heads": 2, "shift": "[0, 2][$i]", "p": "0.2 * $i / 5", "c": 64,
                             "c2": 16, "h": 8}  # fmt: skip  # the 8x12 grid: h: 8
    assert merge == (
        {"patch_merging": {"version": 2, "h": 8}} if v2 else {"patch_merging": {"h": 8}}
    )
    assert second["repeat"] == 4 and second["use"] == block
    assert second["with"]["shift"] == "[0, 2][$i % 2]"
    assert second["with"]["p"] == "0.2 * ($i + 2) / 5"
    assert doc["stages"]["permute"] == {"to_image": {"h": 4}}  # 8x12 tokens, merged to 4x6


def test_vit_is_one_encoder_block_template_and_learnable_tensors(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    model = windowed_built(VisionTransformer, image_size=32, patch_size=16, num_layers=3,
                       num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)  # fmt: skip
    doc = yaml.safe_load(round_trip(model, (3, 32, 32), tmp_path))
    assert list(doc["templates"]) == ["encoder_block"]  # its MLP written in place, as by hand
    mlp = doc["templates"]["encoder_block"]["body"][1]["residual"]["main"][1]["seq"]
    heads = [x if isinstance(x, str) else next(iter(x)) for x in mlp["layers"]]
    assert mlp["name"] == "mlp" and heads == ["linear", "gelu", "dropout", "linear", "dropout"]
    stages = doc["stages"]
    assert stages["class_token"] == "class_token" and stages["token"] == "token"
    assert stages["encoder"][0] == {"pos_embedding": {"std": 0.02, "name": "pos_embedding"}}
    layers = stages["encoder"][2]
    assert layers == {"repeat": 3, "use": "encoder_block", "prefix": "encoder_layer_",
                      "name": "layers"}  # fmt: skip


def test_convnext_layer_scale_keeps_its_init_and_blocks_repeat_per_stage(tmp_path):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    cfg = [CNBlockConfig(16, 32, 2), CNBlockConfig(32, 64, 3), CNBlockConfig(64, None, 2)]
    model = ConvNeXt(cfg, stochastic_depth_prob=0.1, num_classes=10).eval()  # as built
    text = round_trip(model, (3, 32, 32), tmp_path)
    doc = yaml.safe_load(text)
    main = doc["templates"]["cnblock"]["residual"]["main"]
    assert {"layer_scale": {"init": 1e-6, "name": "layer_scale"}} in main
    stages = [x for x in doc["stages"]["features"] if isinstance(x, dict) and "repeat" in x]
    assert [(s["repeat"], s["use"]) for s in stages] == [(2, "cnblock"), (3, "cnblock"),
                                                         (2, "cnblock")]  # fmt: skip
    ps = ["0.1 * $i / 6", "0.1 * ($i + 2) / 6", "0.1 * ($i + 5) / 6"]  # torchvision's formula
    assert [s["with"]["p"] for s in stages] == ps


def test_maxvit_partition_layers_are_one_template(tmp_path):
    """MaxViT's PartitionAttentionLayer (window and grid attention between torchvision's own
    partition and departition) is its layers on the tokens with `partition_attention`."""
    from torchvision.models.maxvit import MaxVit

    model = windowed_built(MaxVit, input_size=(32, 32), stem_channels=8, partition_size=2,
                           block_channels=[8, 16], block_layers=[2, 2], head_dim=4,
                           stochastic_depth_prob=0.2, num_classes=10)  # fmt: skip
    text = round_trip(model, (3, 32, 32), tmp_path, double=True)  # torchvision's: square only
    doc = yaml.safe_load(text)
    body = doc["templates"]["partition_attention_layer"]["body"]
    assert body[0] == "to_tokens" and body[-1] == "to_image"
    assert [x["residual"]["main"][1]["stochastic_depth"]["name"] for x in body[1:3]] == [
        "stochastic_dropout", "stochastic_dropout_mlp"]  # fmt: skip
    assert "partition_attention: {heads: $heads, window: 2, partition: $partition}" in text
    assert "partition: grid" in text and "partition: window" in text
    # the attention and MLP Sequentials, used there alone, are written in place by their names
    assert [x["residual"]["main"][0]["seq"]["name"] for x in body[1:3]] == [
        "attn_layer", "mlp_layer"]  # fmt: skip
    assert "proj" in doc["templates"]


class _CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.kv = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return self.attn(x, self.kv(x), self.kv(x))[0].mean(1)


class _OwnWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        return torch.nn.functional.linear(x.flatten(1), self.w)


@pytest.mark.parametrize(
    "model, shape, place",
    [
        (_CrossAttention, (8, 2, 2), ("attn", "nn.MultiheadAttention", "not self-attention")),
        (_OwnWeight, (2, 2, 2), ("<model>", "a parameter used directly", "torch.linear of `w`")),
    ],
)
def test_what_the_token_ops_cannot_say_is_located(model, shape, place):
    with pytest.raises(ImportFailure) as e:
        archspec.import_module(model().eval(), shape)
    path, what, why = place
    assert any(
        p.path == path and p.what == what and p.why.startswith(why) for p in e.value.problems
    ), [(p.path, p.what, p.why) for p in e.value.problems]


class _TokenMixing(nn.Module):
    def __init__(self, d, tokens):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))

    def forward(self, x):
        return x + self.mix(self.norm(x).transpose(1, 2)).transpose(1, 2)


class _Mixer(nn.Module):
    """A user's MLP-Mixer: patches, token mixing between transposes, mean over the tokens."""

    def __init__(self, d=16, tokens=16):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 4, 4)
        self.block = _TokenMixing(d, tokens)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.block(x).mean(dim=1))


def test_a_users_mixer_maps_transposes_and_token_means(tmp_path):
    torch.manual_seed(0)
    doc = yaml.safe_load(round_trip(_Mixer(), (3, 16, 16), tmp_path))
    stages = list(doc["stages"].values())
    assert stages[1] == "to_tokens" and stages[-2] == "mean_tokens"
    main = stages[2]["residual"]["main"]
    assert main[1] == "transpose_tokens" and main[-1] == "transpose_tokens"


class _SumAtTheTop(_Mixer):
    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head((x + self.block.mix(x.transpose(1, 2)).transpose(1, 2)).mean(1))


def test_a_residual_in_the_models_own_forward_names_the_add():
    with pytest.raises(ImportFailure) as e:
        archspec.import_module(_SumAtTheTop().eval(), (3, 16, 16))
    ((path, what),) = [(p.path, p.what) for p in e.value.problems]
    assert (path, what) == ("<model>", "operator.add")
