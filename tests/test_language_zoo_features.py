"""The language features the torchvision zoo needed: auxiliary heads (`aux` stages), spec-level
`params`, `use: $template`, and template parameters typed apart from their default."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from click.testing import CliRunner
from safetensors.torch import load_file
from spec_files import write

import archspec
from archspec.cli.train import train
from archspec.run.loop import AUX_WEIGHT, _loss

SPECS = Path(__file__).resolve().parents[1] / "specs" / "torchvision"

TINY_AUX = """\
name: tiny_aux
input: [1, 8, 8]
num_classes: 3
stages:
  stem: [conv: {out: 4, k: 3, pad: 1}, bn, relu]
  side:
    aux: [gap, flatten, linear: {out: $num_classes, name: fc}]
  pool: {maxpool: {k: 2, stride: 2}}
  head: [flatten, linear: {out: $num_classes}]
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions on a shared 2-core machine run far faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def codes(report) -> list[str]:
    return [d.code for d in report.errors]


# --------------------------------------------------------------------------- aux heads


@pytest.fixture(scope="module")
def googlenet_pair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tv = tvm.googlenet(weights=None, num_classes=1000, init_weights=False)
    ours = archspec.build(SPECS / "googlenet.yaml", input_shape=(3, 64, 64))
    ours.load_state_dict(tv.state_dict(), strict=True)
    return tv, ours


def _dropout_off(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()


def test_aux_heads_run_in_training_only_and_match_torchvision(googlenet_pair):
    tv, ours = googlenet_pair
    assert ours.aux_heads == ("aux1", "aux2")
    x = torch.randn(2, 3, 64, 64)
    tv.train(), ours.train()
    _dropout_off(tv), _dropout_off(ours)  # batch-norm in training mode, dropout deterministic
    with torch.no_grad():
        logits, aux2, aux1 = tv(x)  # torchvision's order: (logits, aux2, aux1)
        out = ours(x)  # ours: (main, *heads in stage order)
    assert isinstance(out, tuple) and len(out) == 3
    for got, want in zip(out, (logits, aux1, aux2)):
        assert (got - want).abs().max().item() <= 1e-5
    tv.eval(), ours.eval()
    with torch.no_grad():
        main = ours(x)
        assert isinstance(main, torch.Tensor) and (main - tv(x)).abs().max().item() <= 1e-5


def test_aux_model_scripts_to_the_inference_model(tmp_path):
    ours = archspec.build(write(tmp_path, TINY_AUX)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, still supported
        scripted = torch.jit.script(ours)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(scripted(x), ours(x))
        scripted.train()
        assert isinstance(scripted(x), torch.Tensor)  # TorchScript: the main output in every mode


def test_check_lists_aux_layers_but_counts_inference_macs_only():
    full = archspec.check(SPECS / "googlenet.yaml")
    bare = archspec.check(SPECS / "googlenet.yaml", "googlenet_noaux")
    paths = {row["path"] for row in full.layer_rows()}
    assert {"aux1.fc1", "aux1.conv.conv", "aux2.fc2"} <= paths
    assert not any(p.startswith("aux") for p in (r["path"] for r in bare.layer_rows()))
    aux_macs = sum(r["macs"] for r in full.layer_rows() if r["path"].startswith("aux"))
    assert aux_macs > 0 and full.macs == bare.macs
    assert full.params - bare.params == sum(
        r["params"] for r in full.layer_rows() if r["path"].startswith("aux")
    )
    assert full.output == bare.output == (1000,)


def test_aux_stage_passes_its_input_on(tmp_path):
    report = archspec.check(write(tmp_path, TINY_AUX))
    assert report.ok, report.render_errors()
    rows = {r["path"]: r for r in report.layer_rows()}
    assert rows["side.fc"]["output"] == [3]
    assert rows["pool"]["output"] == [4, 4, 4]  # the pool reads the stem's output, not the head's


def test_aux_inside_a_stage_is_refused(tmp_path):
    text = TINY_AUX.replace("  side:\n    aux: [gap", "  side:\n    - aux: [gap")
    report = archspec.check(write(tmp_path, text))
    assert "E-AUX-PLACE" in codes(report)
    err = next(d for d in report.errors if d.code == "E-AUX-PLACE")
    assert err.loc.line == 7


def test_aux_mapping_needs_layers(tmp_path):
    text = TINY_AUX.replace(
        "aux: [gap, flatten, linear: {out: $num_classes, name: fc}]", "aux: {name: x}"
    )
    assert "E-MISSING-KEY" in codes(archspec.check(write(tmp_path, text)))


def test_training_loss_adds_weighted_aux_losses():
    y = torch.tensor([0, 2])
    main, aux = torch.randn(2, 3), torch.randn(2, 3)
    logits, loss = _loss((main, aux), y)
    ce = torch.nn.functional.cross_entropy
    assert logits is main
    assert torch.allclose(loss, ce(main, y) + AUX_WEIGHT * ce(aux, y))
    assert torch.allclose(_loss(main, y)[1], ce(main, y))


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    """32 train / 16 test random 8x8 images in 3 classes."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48).astype(np.uint8)
    x = rng.integers(0, 255, (48, 8, 8)).astype(np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    return path


def test_train_cli_trains_an_aux_model_from_init_weights(tmp_path, npz):
    spec = write(tmp_path, TINY_AUX)
    init = archspec.build(spec)
    with torch.no_grad():
        for p in init.parameters():
            p.fill_(0.25)
    torch.save(init.state_dict(), tmp_path / "init.pth")
    out = tmp_path / "run"
    args = [
        spec,
        "--data",
        npz,
        "--epochs",
        1,
        "--batch-size",
        16,
        "--max-steps",
        1,
        "--lr",
        1e-12,
        "--out",
        out,
        "--init",
        tmp_path / "init.pth",
        "-q",
    ]
    r = CliRunner().invoke(train, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    trained = load_file(str(out / "model.safetensors"))
    for key in ("stem.0.weight", "side.fc.weight", "head.1.weight"):  # lr ~ 0: still the init
        assert torch.allclose(trained[key], torch.full_like(trained[key], 0.25), atol=1e-6)


def test_train_cli_refuses_init_weights_that_do_not_fit(tmp_path, npz):
    spec = write(tmp_path, TINY_AUX)
    other = write(tmp_path, TINY_AUX.replace("out: 4", "out: 5"), "other.yaml")
    torch.save(archspec.build(other).state_dict(), tmp_path / "other.pth")
    args = [
        spec,
        "--data",
        npz,
        "--init",
        tmp_path / "other.pth",
        "--max-steps",
        1,
        "--out",
        tmp_path / "r",
    ]
    r = CliRunner().invoke(train, [str(a) for a in args])
    assert r.exit_code == 1
    assert "E-WEIGHTS" in r.output and "stem.0.weight" in r.output


# --------------------------------------------------------------------------- spec params


PARAMS = """\
name: p
input: [3, 16, 16]
num_classes: 5
params:
  chans: [4, 8]
  block: plain
  half: $num_classes * 2
templates:
  plain:
    params: {c: int}
    body: [conv: {out: $c, k: 3, pad: 1}, relu]
  wide:
    params: {c: int}
    body: [conv: {out: $c * 2, k: 3, pad: 1}, relu]
stages:
  body: {repeat: 2, use: $block, with: {c: "$chans[$i]"}}
  head: [gap, flatten, linear: {out: $half}]
variants:
  big: {params: {chans: [16, 32], block: wide}}
"""


def test_spec_params_feed_expressions_and_variants_override_them(tmp_path):
    path = write(tmp_path, PARAMS)
    base, big = archspec.check(path), archspec.check(path, "big")
    assert base.ok and big.ok, base.render_errors() + big.render_errors()
    assert [r["output"][0] for r in base.layer_rows() if r["op"] == "conv"] == [4, 8]
    assert [r["output"][0] for r in big.layer_rows() if r["op"] == "conv"] == [
        32,
        64,
    ]  # `wide` doubles
    assert base.output == (10,)  # $num_classes * 2


@pytest.mark.parametrize(
    "bad,code",
    [
        ("  in: 3\n", "E-NAME"),
        ("  width: 3\n", "E-NAME"),
        ("  x: $in.c\n", "E-EXPR-NAME"),
        ("  y: $nope + 1\n", "E-EXPR-NAME"),
    ],
)
def test_bad_spec_params_are_located_errors(tmp_path, bad, code):
    text = PARAMS.replace("params:\n  chans", f"params:\n{bad}  chans")
    report = archspec.check(write(tmp_path, text))
    err = next(d for d in report.errors if d.code == code)
    assert err.loc.line == 5


def test_use_expression_naming_no_template_is_an_error(tmp_path):
    report = archspec.check(write(tmp_path, PARAMS.replace("block: plain", "block: plian")))
    err = next(d for d in report.errors if d.code == "E-UNKNOWN-TEMPLATE")
    assert "plian" in err.message and "plain" in (err.help or "")


# --------------------------------------------------------------------------- typed defaults


TYPED = """\
name: t
input: [3, 16, 16]
templates:
  c:
    params: {k: {type: %s, default: 1}}
    body: [conv: {out: 4, k: $k, pad: 0}]
stages:
  a: {c: {}}
  b: {c: {k: [1, 3]}}
"""


def test_typed_default_takes_other_types_than_its_value(tmp_path):
    report = archspec.check(write(tmp_path, TYPED % "any"))
    assert report.ok, report.render_errors()
    assert [r["output"] for r in report.layer_rows()] == [[4, 16, 16], [4, 16, 14]]


def test_typed_default_still_checks_its_type(tmp_path):
    report = archspec.check(write(tmp_path, TYPED % "int"))
    err = next(d for d in report.errors if d.code == "E-TYPE")
    assert "must be int" in err.message


def test_unknown_declared_type_is_an_error(tmp_path):
    report = archspec.check(write(tmp_path, TYPED % "integer"))
    assert "E-TEMPLATE" in codes(report)
