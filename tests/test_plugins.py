"""Plugins: a user's module registers ops with the API the built-ins use, and every part of
archspec sees them — check (table, JSON, memory), build, schema, graph, the generated docs —
while `check` still never imports torch. Each run is a fresh process, as a user's would be, so
no plugin op leaks into the registry the other tests see."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archspec
from archspec.ops import OPS, Op, register

ROOT = Path(__file__).resolve().parents[1]

# A throw-away plugin: space-to-depth (torch.nn.PixelUnshuffle), an op that changes the shape.
S2D = """
from typing import Any

from pydantic import Field

from archspec.ops import Inferred, Op, Params, Problem, Saved, Shape, Window, need_image, register


class S2DParams(Params):
    factor: int = Field(2, ge=1, le=64, description="block size folded into channels")


@register
class SpaceToDepth(Op):
    name = "space_to_depth"
    Params = S2DParams
    doc = "folds each factor x factor block of pixels into channels (torch.nn.PixelUnshuffle)"
    color = "#abcdef"
    example = ("3,8,8", "- space_to_depth: {factor: 2}")

    def infer(self, p: S2DParams, shape: Shape) -> Inferred:
        c, h, w = need_image(self.name, shape)
        f = p.factor
        if h % f or w % f:
            raise Problem("E-SHAPE-COLLAPSE", f"{h}x{w} does not split into {f}x{f} blocks")
        window = Window((f, f), (f, f))
        return Inferred((c * f * f, h // f, w // f), window=window)

    def saved(self, p: S2DParams, shape: Shape, out: Shape, grad: bool) -> Saved:
        return Saved(output=True)

    def build(self, p: S2DParams, shape: Shape) -> Any:
        from torch import nn

        return nn.PixelUnshuffle(p.factor)
"""
SPEC = """\
name: s2d_net
plugins: [s2d_plugin]
input: [3, 16, 16]
num_classes: 5
stages:
  stem: [conv: {out: 4, k: 3, pad: 1}, space_to_depth: {factor: 2}, relu]
  head: [gap, flatten, linear: {out: $num_classes}]
"""


def env_with(folder: Path) -> dict[str, str]:
    paths = [str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env=env_with(folder),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    (tmp_path / "s2d_plugin.py").write_text(S2D)
    (tmp_path / "net.yaml").write_text(SPEC)
    return tmp_path


def test_a_plugin_op_is_seen_by_check_build_schema_graph_and_docs(plugin_dir: Path) -> None:
    table = run(plugin_dir, "-m", "archspec", "check", "net.yaml")
    assert table.returncode == 0, table.stderr
    row = next(ln.split() for ln in table.stdout.splitlines() if "space_to_depth" in ln)
    assert row[:3] == ["stem.1", "space_to_depth", "16x8x8"]

    r = run(plugin_dir, "-m", "archspec", "check", "net.yaml", "--json", "--batch", "4")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    layer = next(x for x in obj["layers"] if x["op"] == "space_to_depth")
    assert layer["output"] == [16, 8, 8] and layer["receptive_field"] == [4, 4]
    # its saved output is the relu's input; relu keeps its own output, a new tensor
    assert layer["saved_bytes"] == 4 * 16 * 8 * 8 * 4
    assert obj["output"] == [5] and obj["memory"]["batch"] == 4

    built = run(
        plugin_dir,
        "-c",
        "import archspec, torch\n"
        "m = archspec.build('net.yaml').eval()\n"
        "mods = dict(m.named_modules())\n"
        "print(type(mods['stem.1']).__name__)\n"
        "x = torch.randn(2, 3, 16, 16)\n"
        "print(list(m.stem(x).shape[1:]), list(m(x).shape[1:]))\n",
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.split("\n")[:2] == ["PixelUnshuffle", "[16, 8, 8] [5]"]

    schema = run(plugin_dir, "-m", "archspec", "schema", "--plugin", "s2d_plugin")
    assert schema.returncode == 0, schema.stderr
    defs = json.loads(schema.stdout)["$defs"]
    assert defs["op.space_to_depth"]["properties"]["factor"]["default"] == 2
    assert defs["op.space_to_depth"]["examples"] == [{"factor": 2}]

    graph = run(plugin_dir, "-m", "archspec", "graph", "net.yaml")
    assert graph.returncode == 0, graph.stderr
    assert re.search(r'label="space_to_depth\\n16x8x8".*fillcolor="#abcdef"', graph.stdout)

    docs = run(
        plugin_dir,
        "-c",
        "import s2d_plugin\nfrom archspec.analysis.docs import op_reference\nprint(op_reference())",
    )
    assert docs.returncode == 0, docs.stderr
    section = docs.stdout.split("### `space_to_depth`", 1)[1].split("### ", 1)[0]
    assert "| `factor` | int (≥ 1, ≤ 64) | `2` | block size folded into channels |" in section
    assert "On a 3x8x8 input: 12x4x4." in section


def test_check_with_a_plugin_does_not_import_torch(plugin_dir: Path) -> None:
    r = run(
        plugin_dir,
        "-c",
        "import sys, archspec\n"
        "report = archspec.check('net.yaml')\n"
        "assert report.ok, report.render_errors()\n"
        "print('space_to_depth' in {n.op for n in report.layers}, 'torch' in sys.modules)\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


def docs_example() -> tuple[str, str]:
    """The first python block of docs/plugins.md and the first yaml block with `plugins:`."""
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    module = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    specs = [s for s in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if "plugins:" in s]
    assert module and specs, "docs/plugins.md needs a python block and a yaml block"
    return module.group(1), specs[0]


def test_the_docs_plugin_example_checks_builds_and_runs(tmp_path: Path) -> None:
    module, spec = docs_example()
    (name,) = re.search(r"plugins: \[(.*?)\]", spec).group(1).split(",")  # type: ignore[union-attr]
    (tmp_path / f"{name.strip()}.py").write_text(module)
    (tmp_path / "spec.yaml").write_text(spec)
    r = run(tmp_path, "-m", "archspec", "check", "spec.yaml", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    se = [x for x in report["layers"] if x["op"] == "se"]
    assert se and se[0]["params"] > 0
    table = run(tmp_path, "-m", "archspec", "check", "spec.yaml")
    assert table.returncode == 0 and re.search(r"\n\S+\s+se\s+", table.stdout)
    built = run(
        tmp_path,
        "-c",
        "import sys, archspec, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_memory import measured_and_estimated\n"
        "m = archspec.build('spec.yaml').eval()\n"
        f"x = torch.randn(2, *{report['input']})\n"
        "print(list(m(x).shape[1:]), sum(p.numel() for p in m.parameters()))\n"
        "print(*measured_and_estimated('spec.yaml', None, 2)[:2])\n",
    )
    assert built.returncode == 0, built.stderr
    shape, params, memory = built.stdout.replace("]", "]\n", 1).splitlines()
    assert json.loads(shape) == report["output"] and int(params) == report["params"]
    measured, estimated = memory.split()
    assert measured == estimated, "the saved-bytes rule of the docs example is not exact"


def test_entry_point_plugins_need_no_plugins_key(plugin_dir: Path) -> None:
    dist = plugin_dir / "s2d_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: s2d-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[archspec.plugins]\ns2d = s2d_plugin\n")
    (plugin_dir / "net.yaml").write_text(SPEC.replace("plugins: [s2d_plugin]\n", ""))
    r = run(plugin_dir, "-m", "archspec", "check", "net.yaml")
    assert r.returncode == 0, r.stderr
    assert "space_to_depth" in r.stdout
    # installed plugins load only for a spec that names an op nothing else knows
    lazy = run(
        plugin_dir,
        "-c",
        "import archspec, archspec.plugins as p\n"
        f"assert archspec.check({str(ROOT / 'specs' / 'lenet.yaml')!r}).ok\n"
        "print(p._entry_points is None, 'space_to_depth' in archspec.ops.OPS)\n"
        "assert archspec.check('net.yaml').ok\n"
        "print(p._entry_points == [], 'space_to_depth' in archspec.ops.OPS)\n",
    )
    assert lazy.returncode == 0, lazy.stderr
    assert lazy.stdout.split() == ["True", "False", "True", "True"]
    # a broken one is reported at the top of such a spec
    (plugin_dir / "s2d_plugin.py").write_text("raise ValueError('broken')\n")
    broken = run(plugin_dir, "-m", "archspec", "check", "net.yaml", "--json")
    errors = json.loads(broken.stdout)["errors"]
    assert (errors[0]["code"], errors[0]["line"]) == ("E-PLUGIN", 1), errors
    assert (
        "entry point `s2d` (archspec.plugins): plugin `s2d_plugin` failed" in errors[0]["message"]
    )
    assert "E-UNKNOWN-OP" in {e["code"] for e in errors}


BAD = {
    "missing": ("no_such_plugin_xyz", "is not installed: no module named `no_such_plugin_xyz`"),
    "raises": ("boom_plugin", "failed on import: RuntimeError: boom"),
    "path": ("./s2d_plugin.py", "is not a module name"),
    "taken": ("taken_plugin", "op `relu` is already registered"),
    "reserved": ("reserved_plugin", "registers op `residual`, a name the language reserves"),
}


def test_a_bad_plugin_is_e_plugin_at_its_entry(plugin_dir: Path) -> None:
    (plugin_dir / "boom_plugin.py").write_text("raise RuntimeError('boom')\n")
    (plugin_dir / "taken_plugin.py").write_text(
        S2D.replace('name = "space_to_depth"', 'name = "relu"')
    )
    (plugin_dir / "reserved_plugin.py").write_text(
        S2D.replace('name = "space_to_depth"', 'name = "residual"')
    )
    entries = [name for name, _ in BAD.values()]
    (plugin_dir / "bad.yaml").write_text(
        SPEC.replace("plugins: [s2d_plugin]", "plugins:\n" + "".join(f"  - {e}\n" for e in entries))
    )
    r = run(plugin_dir, "-m", "archspec", "check", "bad.yaml", "--json")
    assert r.returncode == 1
    errors = json.loads(r.stdout)["errors"]
    assert [e["code"] for e in errors] == ["E-PLUGIN"] * len(BAD)
    for i, (e, (name, message)) in enumerate(zip(errors, BAD.values())):
        assert (e["line"], e["column"]) == (3 + i, 5), e
        assert message in e["message"], e
        assert e["help"]
    assert "boom_plugin.py:1" in errors[1]["help"]
    human = run(plugin_dir, "-m", "archspec", "check", "bad.yaml")
    assert "bad.yaml:4:5: error[E-PLUGIN]: plugin `boom_plugin` failed on import" in human.stderr
    assert "Traceback" not in human.stderr


def test_a_failed_plugin_import_leaves_no_op_registered(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "half_plugin.py").write_text(
        S2D + "\nraise ImportError('a dependency is missing')\n"
    )
    (tmp_path / "net.yaml").write_text(SPEC.replace("s2d_plugin", "half_plugin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = list(OPS)
    for _ in range(2):  # the second import runs the module again: no "already registered"
        report = archspec.check(tmp_path / "net.yaml")
        assert [d.code for d in report.errors] == ["E-PLUGIN"]
        assert "ImportError: a dependency is missing" in report.errors[0].message
    assert list(OPS) == before


def test_register_refuses_a_taken_or_malformed_name_and_a_missing_example() -> None:
    before = dict(OPS)

    class Relu(Op):
        name = "relu"
        doc = "another relu"
        example = ("4", "- relu")

    class Bad(Op):
        name = "Bad-Name"
        doc = "x"
        example = ("4", "- x")

    class NoExample(Op):
        name = "no_example"
        doc = "x"

    for cls, message in (
        (Relu, "already registered"),
        (Bad, "lower-case"),
        (NoExample, "needs `example`"),
    ):
        with pytest.raises(ValueError, match=message):
            register(cls)
    assert OPS == before


def test_a_plugins_key_of_the_wrong_type_is_a_type_error(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(SPEC.replace("plugins: [s2d_plugin]", "plugins: s2d_plugin"))
    report = archspec.check(path)
    assert [(d.code, d.loc.line) for d in report.errors] == [("E-TYPE", 2)]


@pytest.mark.parametrize(
    "snippet",
    [textwrap.dedent(S2D), docs_example()[0]],
    ids=["throw-away", "docs"],
)
def test_plugin_modules_import_without_torch(tmp_path: Path, snippet: str) -> None:
    (tmp_path / "p.py").write_text(snippet)
    r = run(tmp_path, "-c", "import sys, p; print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_a_plugin_bug_is_e_plugin_at_the_layer_and_prints_stay_off_stdout(tmp_path: Path) -> None:
    buggy = S2D.replace("        f = p.factor\n", "        f = p.factor // 0\n")
    (tmp_path / "buggy_plugin.py").write_text("print('hello from a plugin')\n" + buggy)
    (tmp_path / "net.yaml").write_text(SPEC.replace("s2d_plugin", "buggy_plugin"))
    r = run(tmp_path, "-m", "archspec", "check", "net.yaml", "--json")
    assert r.returncode == 1
    (error,) = json.loads(r.stdout)["errors"]  # the print went to stderr
    assert "hello from a plugin" in r.stderr
    assert error["code"] == "E-PLUGIN" and (error["line"], error["column"]) == (6, 40)
    assert "`space_to_depth` (buggy_plugin) raised ZeroDivisionError" in error["message"]
    assert "buggy_plugin.py:" in error["help"]
