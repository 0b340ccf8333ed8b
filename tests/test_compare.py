"""`archspec diff`: layer-by-layer differences of two variants or two files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

import archspec
from archspec.analysis.diff import Layer, diff_layers, layers_of
from archspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def L(path: str, op: str = "conv 3x3", out=(8, 4, 4), params: int = 10) -> Layer:
    return Layer(path, op, out, params, params * 16)


def test_identical_networks_have_no_differences():
    r = archspec.check(SPECS / "googlenet.yaml")
    rows = diff_layers(layers_of(r), layers_of(r))
    assert rows and all(row.change == "same" for row in rows)


def test_an_inserted_layer_is_one_addition_and_moves_the_paths_after_it():
    a = [L("s.0"), L("s.1", "relu", params=0), L("s.2", "maxpool 2x2/2", (8, 2, 2), 0)]
    b = [
        L("s.0"),
        L("s.1", "relu", params=0),
        L("s.2"),
        L("s.3", "relu", params=0),
        L("s.4", "maxpool 2x2/2", (8, 2, 2), 0),
    ]
    rows = diff_layers(a, b)
    assert [(r.change, r.a and r.a.path, r.b and r.b.path) for r in rows] == [
        ("same", "s.0", "s.0"),
        ("same", "s.1", "s.1"),
        ("added", None, "s.2"),
        ("added", None, "s.3"),
        ("changed", "s.2", "s.4"),
    ]
    assert rows[-1].what() == ["path"]


def test_changed_shapes_and_params_are_reported():
    rows = diff_layers([L("s.0", out=(8, 4, 4), params=10)], [L("s.0", out=(16, 4, 4), params=20)])
    assert rows[0].change == "changed" and rows[0].what() == ["output", "params", "macs"]
    rows = diff_layers([L("s.0"), L("t.0", "linear 10")], [L("s.0")])
    assert [r.change for r in rows] == ["same", "removed"]


def test_vgg11_to_vgg16_adds_exactly_the_extra_convolutions():
    a, b = (archspec.check(SPECS / "vgg.yaml", variant=v) for v in (None, "vgg16"))
    rows = diff_layers(layers_of(a), layers_of(b))
    added = [r.b for r in rows if r.change == "added"]
    assert len(added) == 2 * (16 - 11)  # five more convolutions, each with its relu
    assert sum(x.params for x in added) == b.params - a.params
    assert not [r for r in rows if r.change == "removed"]


def test_cli_two_variants():
    result = CliRunner().invoke(
        main, ["diff", str(SPECS / "resnet18.yaml"), "--variant", "resnet34"]
    )
    assert result.exit_code == 0, result.output
    assert "48 added" in result.output and "0 removed" in result.output
    assert "params: 11,178,378 -> 21,290,250  (+10.11M, +90.5%)" in result.output
    assert "+  b2.2.conv1" in result.output


def test_cli_json_two_named_variants():
    result = CliRunner().invoke(
        main,
        ["diff", str(SPECS / "vgg.yaml"), "--variant", "vgg13", "--variant", "vgg19", "--json"],
    )
    assert result.exit_code == 0
    data = json.loads(result.output)
    a, b = (archspec.check(SPECS / "vgg.yaml", variant=v) for v in ("vgg13", "vgg19"))
    assert data["params_delta"] == b.params - a.params and data["macs_delta"] == b.macs - a.macs
    assert data["a"]["variant"] == "vgg13" and data["b"]["name"] == "vgg19"
    # vgg13 has [2, 2, 2, 2, 2] convs per block, vgg19 [2, 2, 4, 4, 4]: six more, each with a relu
    assert data["counts"]["added"] == 2 * 6 and all(x["change"] != "same" for x in data["layers"])


def test_cli_two_files(tmp_path):
    other = tmp_path / "lenet_relu.yaml"
    other.write_text(
        (SPECS / "lenet.yaml").read_text().replace("    - sigmoid\n", "    - relu\n", 1)
    )
    result = CliRunner().invoke(main, ["diff", str(SPECS / "lenet.yaml"), str(other), "--all"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(ln.startswith("-  features.1") and "sigmoid" in ln for ln in lines)
    assert any(ln.startswith("+  features.1") and "relu" in ln for ln in lines)
    assert any(ln.startswith("   features.0") for ln in lines)  # --all shows unchanged layers
    assert "params: 61,706 -> 61,706" in result.output


def test_cli_usage_and_spec_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["diff", str(SPECS / "lenet.yaml")])
    assert r.exit_code == 2 and "--variant" in r.output
    r = runner.invoke(main, ["diff", str(SPECS / "lenet.yaml"), "--variant", "nope"])
    assert r.exit_code == 2 and "E-VARIANT" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: [1, 8, 8]\nstages:\n  s: [conv: {out: 4, k: 9}]\n")
    r = runner.invoke(main, ["diff", str(SPECS / "lenet.yaml"), str(bad)])
    assert r.exit_code == 1 and "E-SHAPE-COLLAPSE" in r.output and "Traceback" not in r.output
