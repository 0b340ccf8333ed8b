"""The language features the rest of torchvision's convolutional zoo needed (issue 16): `scale`
(squeeze-and-excitation), `split` and `channel_shuffle`, `merge: mul`, `hardsigmoid`,
`stochastic_depth`, `when:`, `shortcut: identity_if_same`, stage tables (`rows`), names with
hyphens, `make_divisible` and text in expressions, `use: $name` from `with:`, and did-you-mean
hints that suggest only near names. Each is held against torch: outputs against a hand-written
forward, training memory against autograd's saved tensors, shapes against a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models.shufflenetv2 as tv_shufflenet
from torch import nn
from torchvision.models._utils import _make_divisible
from torchvision.ops import StochasticDepth

import archspec
from archspec.analysis.memory import estimate
from archspec.backend.measure import saved_bytes
from archspec.lang.errors import did_you_mean
from archspec.lang.expr import evaluate
from archspec.ops import OPS

BLOCKS = """\
name: blocks
input: [8, 12, 12]
num_classes: 5
templates:
  se_block:
    params: {c: int, stride: 1, expand: 1, mid: "$in.c * $expand"}   # $in: the block's input
    residual:
      shortcut: identity_if_same
      main:
        - seq:
            name: block
            layers:
              - {when: "$expand != 1", conv: {out: "$in.c * $expand", k: 1, bias: false}}
              - conv: {out: $in.c, k: 3, stride: $stride, pad: 1, groups: $in.c, bias: false}
              - bn
              - hardswish
              - scale:
                  by:
                    - gap: {name: avgpool}
                    - conv: {out: 4, k: 1, name: fc1}
                    - relu: {name: activation}
                    - conv: {out: $mid, k: 1, name: fc2}
                    - hardsigmoid: {name: scale_activation}
              - conv: {out: $c, k: 1, bias: false}
              - bn
        - stochastic_depth: {p: 0.25, name: stochastic_depth}
  unit:
    params: {c: int}
    body:
      - split:
          inline: true
          branches:
            branch1: []
            branch2: [conv: {out: "$c // 2", k: 1, bias: false}, bn, relu]
      - channel_shuffle: {groups: 2}
stages:
  body:
    use: se_block
    nest: true
    prefix: block
    start: 1
    names: "'block' + str($row + 1) + '-' + str($j)"
    columns: [c, repeat, expand, s]
    rows:
      - [8, 2, 1, 1]
      - [16, 1, 4, 2]
    first: {stride: $s}
  shuffle: {unit: {c: 16}}
  gate:
    parallel:
      merge: mul
      branches: [[identity], [gap, conv: {out: 1, k: 1}, sigmoid]]
  head: [gap, flatten, linear: {out: $num_classes}]
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "blocks.yaml"
    path.write_text(BLOCKS)
    return path


def test_check_names_every_module_as_written(spec: Path) -> None:
    report = archspec.check(spec)
    assert report.ok, report.render_errors()
    paths = [layer.path for layer in report.layers]
    # rows nest under block1, block2; repetitions are named by `names`, with hyphens
    assert "body.block1.block1-0.block.0" in paths  # expand 1: the depthwise conv is first
    assert "body.block2.block2-0.block.0" in paths  # expand 4: the 1x1 expansion is first
    shapes = {layer.path: layer.out_shape for layer in report.layers}
    assert shapes["body.block2.block2-0.block.0"] == (32, 12, 12)
    assert shapes["body.block2.block2-0.block.4.fc2"] == (32, 1, 1)
    assert "shuffle.branch2.0" in paths and shapes["shuffle.2"] == (16, 6, 6)
    assert report.output == (5,)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script
def test_build_matches_a_hand_written_forward(spec: Path) -> None:
    torch.manual_seed(0)
    model = archspec.build(spec).eval()
    x = torch.randn(2, 8, 12, 12)

    def se_block(m: nn.Module, x: torch.Tensor, residual: bool) -> torch.Tensor:
        h = x
        for child in m.block.children():
            if type(child).__name__ == "Scale":
                s = child.scale_activation(child.fc2(child.activation(child.fc1(child.avgpool(h)))))
                h = s * h
            else:
                h = child(h)
        assert isinstance(m.stochastic_depth, StochasticDepth)
        return h + x if residual else h

    with torch.no_grad():
        body = model.body
        h = se_block(body.block1.get_submodule("block1-0"), x, True)
        h = se_block(body.block1.get_submodule("block1-1"), h, True)
        h = se_block(body.block2.get_submodule("block2-0"), h, False)  # 8 -> 16, stride 2
        a, b = h.chunk(2, 1)
        h = tv_shufflenet.channel_shuffle(torch.cat([a, model.shuffle.branch2(b)], 1), 2)
        g = model.gate.get_submodule("1")
        h = h * g(h)
        want = model.head(h)
        got = model(x)
    torch.testing.assert_close(got, want)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), got)


def test_training_memory_matches_autograd(spec: Path) -> None:
    report = archspec.check(spec)
    torch.manual_seed(0)
    model = archspec.build(spec).train()
    x = torch.randn(3, 8, 12, 12)
    assert estimate(report.network, 3).activations_bytes == saved_bytes(model, x, "float32")


def test_stochastic_depth_is_identity_in_eval_and_drops_rows_in_training() -> None:
    op = OPS["stochastic_depth"]
    m = op.build(op.Params.model_validate({"p": 0.5}), (4, 2, 2))
    x = torch.ones(64, 4, 2, 2)
    assert torch.equal(m.eval()(x), x)
    y = m.train()(x)
    per_row = y.flatten(1)
    assert set(per_row.unique().tolist()) == {0.0, 2.0}  # whole rows zeroed, the rest scaled
    assert all(len(set(r.tolist())) == 1 for r in per_row)


@pytest.mark.parametrize("v", [3, 8, 16.2, 18, 27.5, 72 * 0.75, 1280 * 1.3, 500.0])
@pytest.mark.parametrize("d", [8, 16])
def test_make_divisible_is_torchvisions(v: float, d: int) -> None:
    assert evaluate(f"make_divisible($v, {d})", {"v": v}) == _make_divisible(v, d)


def test_text_joins_in_expressions() -> None:
    assert evaluate("'block' + str($r + 1) + '-' + str($j)", {"r": 1, "j": 0}) == "block2-0"


def test_use_reads_a_with_argument_and_a_column(tmp_path: Path) -> None:
    path = tmp_path / "use.yaml"
    path.write_text(
        "name: use\ninput: [3, 8, 8]\n"
        "templates:\n"
        "  a: {params: {c: int}, body: [conv: {out: $c, k: 1}]}\n"
        "  b: {params: {c: int}, body: [conv: {out: $c, k: 3, pad: 1}, relu]}\n"
        "stages:\n"
        "  s1: {repeat: 2, use: $kind, with: {kind: b, c: 4}}\n"
        "  s2: {use: $kind, columns: [kind, c], rows: [[a, 6], [b, 2]]}\n"
    )
    report = archspec.check(path)
    assert report.ok, report.render_errors()
    ops = [(layer.path, layer.op) for layer in report.layers]
    assert ops == [
        ("s1.0.0", "conv"),
        ("s1.0.1", "relu"),
        ("s1.1.0", "conv"),
        ("s1.1.1", "relu"),
        ("s2.0.0", "conv"),
        ("s2.1.0", "conv"),
        ("s2.1.1", "relu"),
    ]


ERRORS = {
    "row width": (
        "stages:\n  s: {body: [conv: {out: $c, k: 1}], columns: [c, repeat], rows: [[4, 1], [8]]}\n",
        "E-ROW",
        4,
    ),
    "scale broadcast": (
        "stages:\n  s: {scale: {by: [gap, conv: {out: 2, k: 1}]}}\n",
        "E-MERGE-MUL",
        4,
    ),
    "mul broadcast": (
        "stages:\n  s: {parallel: {merge: mul, branches: [[identity], [conv: {out: 2, k: 1}]]}}\n",
        "E-MERGE-MUL",
        4,
    ),
    "split channels": ("stages:\n  s: {split: {branches: [[], [], []]}}\n", "E-GROUPS", 4),
    "when not a bool": ("stages:\n  s: [{when: 3, relu}]\n", "E-TYPE", 4),
    "shortcut typo": (
        "stages:\n  s: {residual: {main: [relu], shortcut: identity_if_sam}}\n",
        "E-TYPE",
        4,
    ),
    "name with a dot": ("stages:\n  s: [relu: {name: a.b}]\n", "E-NAME", 4),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_new_features_give_located_errors(tmp_path: Path, case: str) -> None:
    text, code, line = ERRORS[case]
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ninput: [4, 8, 8]\n" + text)
    report = archspec.check(path)
    assert [d.code for d in report.errors] == [code], report.render_errors()
    assert report.errors[0].loc.line == line and report.errors[0].help


def test_shortcut_typo_is_hinted(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ninput: [4, 8, 8]\n" + ERRORS["shortcut typo"][0])
    (err,) = archspec.check(path).errors
    assert err.help == "did you mean `identity_if_same`?"


def test_did_you_mean_suggests_only_near_names() -> None:
    ops = list(OPS)
    assert did_you_mean("sigmod", ops) == "did you mean `sigmoid`?"
    assert did_you_mean("hardsigmod", ops) == "did you mean `hardsigmoid`?"
    assert "flatten" not in (did_you_mean("attention", ["flatten", "conv", "relu"]) or "?")[:20]
    assert not (did_you_mean("attention", ["flatten"]) or "").startswith("did you mean")
    assert not (did_you_mean("hardtanh", ["tanh", "relu"]) or "").startswith("did you mean")
