"""A combinator from a user's plugin module, registered with the public API the built-ins use,
is seen by every part of archspec: check (table, JSON, memory), build, schema, graph and the
generated docs.

The plugin and the spec are the pair docs/plugins.md shows under "A combinator" (`gate`: the
input times what its `by` layers compute from it), written by the test into a throw-away folder
and named by the spec's `plugins:`; the commands run in fresh processes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from test_plugins import run

import archspec
from archspec.analysis.memory import estimate
from archspec.backend.measure import saved_bytes
from archspec.lower import COMBINATORS, Combinator, register_combinator

ROOT = Path(__file__).resolve().parents[1]


def docs_pair() -> tuple[str, str]:
    """The python and yaml blocks of the "A combinator" section of docs/plugins.md."""
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text.split("\n## A combinator\n", 1)[1].split("\n## ", 1)[0]
    module = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    spec = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert module and spec and "plugins: [my_gate]" in spec.group(1)
    return module.group(1), spec.group(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    module, spec = docs_pair()
    (root / "my_gate.py").write_text(module, encoding="utf-8")
    (root / "net.yaml").write_text(spec, encoding="utf-8")
    return root


@pytest.fixture
def importable(folder: Path):
    """The plugin importable in this process; afterwards the registry is as it was."""
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in ("my_gate", "bad_gate"):
            sys.modules.pop(name, None)
        for name in ("gate", "bad_gate"):
            COMBINATORS.pop(name, None)


def test_check_lists_the_gate_layers_and_its_memory(folder: Path) -> None:
    table = run(folder, "-m", "archspec", "check", "net.yaml")
    assert table.returncode == 0, table.stderr
    rows = [ln.split() for ln in table.stdout.splitlines() if ln.startswith("se.")]
    assert [r[:3] for r in rows] == [
        ["se.by.0", "gap", "32x1x1"],
        ["se.by.1", "conv", "8x1x1"],
        ["se.by.2", "relu", "8x1x1"],
        ["se.by.3", "conv", "32x1x1"],
        ["se.by.4", "sigmoid", "32x1x1"],
    ]
    r = run(folder, "-m", "archspec", "check", "net.yaml", "--json", "--batch", "2")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["output"] == [10] and obj["errors"] == []
    assert obj["params"] == (32 * 27 + 32) + 64 + (8 * 32 + 8) + (32 * 8 + 32) + (32 * 10 + 10)
    relu = next(x for x in obj["layers"] if x["path"] == "head.0")
    assert relu["output"] == [32, 32, 32]
    assert obj["memory"]["batch"] == 2 and obj["memory"]["activations_bytes"] > 0


def test_build_runs_the_product_and_matches_a_torch_reference(folder: Path) -> None:
    r = run(
        folder,
        "-c",
        "import archspec, torch, inspect\n"
        "torch.manual_seed(0)\n"
        "m = archspec.build('net.yaml').eval()\n"
        "x = torch.randn(2, 3, 32, 32)\n"
        "with torch.no_grad():\n"
        "    out = m(x)\n"
        "    s = m.stem(x)\n"
        "    ref = m.head(s * m.se.by(s))\n"
        "    plain = m.head(s)\n"
        "print(type(m.se).__name__, list(out.shape), torch.allclose(out, ref),"
        " torch.allclose(out, plain))\n"
        "print(inspect.getsource(type(m.se).forward))\n",
    )
    assert r.returncode == 0, r.stderr
    first, *source = r.stdout.splitlines()
    assert first.split() == ["Gate", "[2,", "10]", "True", "False"]
    assert "x1 = self.by(x)" in source[1] and "x * x1" in source[2]


def test_schema_graph_and_docs_show_the_gate(folder: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    r = run(folder, "-m", "archspec", "schema", "--plugin", "my_gate")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["$defs"]["comb.gate"]["required"] == ["by"]
    validator = jsonschema.Draft7Validator(schema)
    layer = {"gate": {"by": ["gap", "sigmoid"]}}
    assert not list(validator.iter_errors({"name": "n", "input": [3], "stages": {"g": layer}}))
    typo = {"gate": {"bye": ["gap"]}}
    assert list(validator.iter_errors({"name": "n", "input": [3], "stages": {"g": typo}}))

    r = run(folder, "-m", "archspec", "graph", "net.yaml", "-o", "net.dot")
    assert r.returncode == 0, r.stderr
    dot = (folder / "net.dot").read_text()
    assert 'label="se (gate)"' in dot and 'label="mul\\n32x32x32"' in dot

    r = run(
        folder,
        "-c",
        "import my_gate\nfrom archspec.analysis.docs import combinator_reference\n"
        "print(combinator_reference())",
    )
    assert r.returncode == 0, r.stderr
    assert "| `gate` | `by`, `name`, `inline` | the input times a gate its `by` layers" in r.stdout


def test_memory_counts_what_the_product_keeps(importable: Path) -> None:
    report = archspec.check(importable / "net.yaml")
    assert report.ok, report.render_errors()
    est = estimate(report.network, 2)
    torch.manual_seed(0)
    model = archspec.build(importable / "net.yaml")
    assert est.activations_bytes == saved_bytes(model, torch.randn(2, 3, 32, 32), "float32")
    # The product keeps both factors. The sigmoid keeps the gate already; the stem's output,
    # which no layer keeps (bn keeps its input, gap nothing), is counted for the product.
    assert est.saved_by_path["se"] == 2 * 32 * 32 * 32 * 4


def test_a_gate_that_does_not_broadcast_is_a_located_error(importable: Path) -> None:
    spec = importable / "broken.yaml"
    spec.write_text(
        "name: broken\nplugins: [my_gate]\ninput: [8, 4, 4]\nstages:\n"
        "  se:\n    gate: {by: [gap, conv: {out: 3, k: 1}]}\n"
    )
    (err,) = archspec.check(spec).errors
    assert (err.code, err.loc.line, err.loc.column) == ("E-MERGE-MUL", 6, 5)
    assert err.message == "the gate gives 3x1x1, which does not broadcast to 8x4x4"


def test_a_plugin_combinator_that_raises_is_e_plugin_at_its_key(importable: Path) -> None:
    (importable / "bad_gate.py").write_text(
        "from archspec.lower import Combinator, register_combinator\n\n\n"
        "@register_combinator\nclass Bad(Combinator):\n"
        "    name = 'bad_gate'\n    doc = 'divides by zero'\n\n"
        "    def lower(self, lw, body, at):\n        return 1 // 0\n"
    )
    spec = importable / "bad.yaml"
    spec.write_text(
        "name: bad\nplugins: [bad_gate]\ninput: [8]\nstages:\n"
        "  a: {bad_gate: {}}\n  b: [linear: {out: 2}, {linar: {}}]\n"
    )
    first, second = archspec.check(spec).errors
    assert (first.code, first.loc.line, first.loc.column) == ("E-PLUGIN", 5, 7)
    assert "raised ZeroDivisionError" in first.message and "bad_gate.py:10" in first.help
    assert second.code == "E-UNKNOWN-OP"  # the walk went on after it


@pytest.mark.parametrize(
    ("name", "doc", "why"),
    [
        ("conv", "x", "already an op"),
        ("residual", "x", "already an op, a combinator"),
        ("first", "x", "reserved key"),
        ("Gate", "x", "lower-case"),
        ("gate2", "", "needs a `doc`"),
    ],
)
def test_register_refuses_a_taken_or_malformed_combinator(name: str, doc: str, why: str) -> None:
    cls = type("C", (Combinator,), {"name": name, "doc": doc})
    with pytest.raises(ValueError, match=why):
        register_combinator(cls)
    assert COMBINATORS.get(name) is None or type(COMBINATORS[name]) is not cls
