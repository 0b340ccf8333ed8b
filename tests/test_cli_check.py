"""`archspec check` as a user runs it: table, JSON contract, exit codes, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from timing import best_of

SPECS = sorted(str(p) for p in Path("specs").rglob("*.yaml"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archspec", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_table_lists_layers_and_totals():
    r = run("check", "specs/lenet.yaml")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["path", "op", "output", "params", "MACs", "RF"]
    assert any(line.split()[:3] == ["features.0", "conv", "6x28x28"] for line in lines)
    assert "params: 61,706" in r.stdout
    assert "MACs:   416,520" in r.stdout


def test_json_matches_the_contract():
    r = run("check", "specs/resnet18.yaml", "--json")
    assert r.returncode == 0
    obj = json.loads(r.stdout)
    assert set(obj) >= {
        "spec",
        "name",
        "variant",
        "input",
        "output",
        "params",
        "macs",
        "layers",
        "errors",
    }
    assert obj["input"] == [1, 96, 96] and obj["output"] == [10]
    assert obj["errors"] == [] and obj["variant"] is None and obj["memory"] is None
    assert obj["params"] == sum(layer["params"] for layer in obj["layers"]) == 11_178_378
    first = obj["layers"][0]
    assert set(first) >= {"path", "op", "output", "params", "macs"}
    assert first == {**first, "path": "b1.0", "op": "conv", "output": [64, 48, 48], "params": 3200}


def test_json_paths_are_module_paths_of_the_built_model():
    import archspec

    report = archspec.check("specs/googlenet.yaml")
    modules = dict(archspec.build("specs/googlenet.yaml").named_modules())
    for row in report.to_json()["layers"]:
        assert row["path"] in modules


def test_variant_and_overrides():
    obj = json.loads(
        run(
            "check",
            "specs/vgg.yaml",
            "--variant",
            "small",
            "--input",
            "1,64,64",
            "--num-classes",
            "7",
            "--json",
        ).stdout
    )
    assert obj["variant"] == "small" and obj["input"] == [1, 64, 64] and obj["output"] == [7]
    assert obj["layers"][0]["output"] == [16, 64, 64]  # width 0.25 of 64


def test_spec_error_exits_1_with_located_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: [1, 8, 8]\nstages:\n  a: [conv: {out: 4, k: 9}]\n")
    r = run("check", str(bad))
    assert r.returncode == 1
    assert f"{bad}:4:7: error[E-SHAPE-COLLAPSE]" in r.stderr
    assert "help:" in r.stderr and "Traceback" not in r.stderr
    obj = json.loads(run("check", str(bad), "--json").stdout)
    assert obj["output"] is None and obj["params"] is None
    assert [(e["line"], e["column"], e["code"]) for e in obj["errors"]] == [
        (4, 7, "E-SHAPE-COLLAPSE")
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("specs/nope.yaml",),
        ("specs/vgg.yaml", "--variant", "vgg12"),
        ("specs/vgg.yaml", "--input", "a,b"),
    ],
)
def test_usage_errors_exit_2(args):
    r = run("check", *args)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr


def test_unknown_variant_suggests_the_closest():
    r = run("check", "specs/vgg.yaml", "--variant", "vgg1", "--json")
    obj = json.loads(r.stdout)
    assert obj["errors"][0]["code"] == "E-VARIANT"
    assert "did you mean" in obj["errors"][0]["help"]


def test_check_never_imports_torch():
    code = (
        "import sys; from archspec.cli import main\n"
        "sys.argv = ['archspec', 'check', 'specs/densenet.yaml', '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import archspec\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("spec", SPECS)
def test_every_shipped_spec_checks_clean_and_fast(spec):
    import archspec

    for variant in [None, *archspec.variants(spec)]:
        report = archspec.check(spec, variant)
        assert report.ok, report.render_errors()
        elapsed, _ = best_of(lambda: archspec.check(spec, variant), 0.5)  # noqa: B023  # called now
        assert elapsed < 0.5, f"{spec} {variant}: {elapsed:.2f}s at best of three"
