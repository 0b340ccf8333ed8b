"""`archspec list`: every spec under a folder, each variant checked: params, MACs, status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import archspec
from archspec.analysis.catalog import catalog, find_specs
from archspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def folder(tmp_path: Path) -> Path:
    """lenet (2 networks), resnet18 (2) in a subfolder, a broken spec, a hidden file, a note."""
    shutil.copy(SPECS / "lenet.yaml", tmp_path / "lenet.yaml")
    (tmp_path / "sub").mkdir()
    shutil.copy(SPECS / "resnet18.yaml", tmp_path / "sub" / "resnet18.yml")
    (tmp_path / "broken.yaml").write_text(
        "name: broken\ninput: [1, 8, 8]\nstages:\n  s: [conv: {out: 4, k: 9}]\n"
    )
    (tmp_path / ".hidden").mkdir()
    shutil.copy(SPECS / "lenet.yaml", tmp_path / ".hidden" / "lenet.yaml")
    (tmp_path / "notes.txt").write_text("not a spec")
    return tmp_path


def test_finds_specs_recursively_sorted_skipping_hidden(tmp_path):
    found = [p.relative_to(tmp_path).as_posix() for p in find_specs(folder(tmp_path))]
    assert found == ["broken.yaml", "lenet.yaml", "sub/resnet18.yml"]


def test_entries_agree_with_check(tmp_path):
    entries = catalog(folder(tmp_path))
    assert [(Path(e.spec).name, e.variant) for e in entries] == [
        ("broken.yaml", None),
        ("lenet.yaml", None),
        ("lenet.yaml", "bn"),
        ("resnet18.yml", None),
        ("resnet18.yml", "resnet34"),
    ]
    for e in entries:
        r = archspec.check(e.spec, variant=e.variant)
        assert (e.params, e.macs, e.ok) == (r.params, r.macs, r.ok)
    assert entries[0].errors[0].startswith("E-SHAPE-COLLAPSE")


def test_cli_table(tmp_path):
    result = CliRunner().invoke(main, ["list", str(folder(tmp_path))])
    assert result.exit_code == 1  # one spec has errors
    lines = result.output.splitlines()
    assert lines[0].split() == ["spec", "variant", "name", "input", "params", "MACs", "status"]
    lenet_bn = next(ln for ln in lines if ln.startswith("lenet.yaml") and " bn " in ln)
    assert "44,878" in lenet_bn and lenet_bn.rstrip().endswith("ok")
    assert any(
        ln.startswith("sub/resnet18.yml") and "resnet34" in ln and "21,290,250" in ln
        for ln in lines
    )
    assert any(ln.startswith("broken.yaml") and "1 error: E-SHAPE-COLLAPSE" in ln for ln in lines)
    assert "3 specs, 5 networks, 1 with errors" in result.output


def test_cli_json_on_the_real_specs():
    result = CliRunner().invoke(main, ["list", str(SPECS), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    got = {(Path(e["spec"]).name, e["variant"]): e for e in data["specs"]}
    assert (
        got[("vgg.yaml", "vgg16")]["params"] == archspec.check(SPECS / "vgg.yaml", "vgg16").params
    )
    assert got[("resnet18.yaml", None)]["params"] == 11_178_378
    assert all(e["ok"] for e in data["specs"])
    seeds = {p.name for p in SPECS.glob("*.yaml")}
    assert seeds <= {Path(e["spec"]).name for e in data["specs"]}


def test_cli_missing_folder(tmp_path):
    result = CliRunner().invoke(main, ["list", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_list_diff_schema_and_dot_never_import_torch(tmp_path):
    code = f"""
import sys
from click.testing import CliRunner
from archspec.cli import main
r = CliRunner()
for args in (["list", {str(SPECS)!r}],
             ["diff", {str(SPECS / "vgg.yaml")!r}, "--variant", "vgg16"],
             ["schema"],
             ["graph", {str(SPECS / "googlenet.yaml")!r}, "-o", {str(tmp_path / "g.dot")!r}]):
    res = r.invoke(main, args)
    assert res.exit_code == 0, (args, res.output)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
