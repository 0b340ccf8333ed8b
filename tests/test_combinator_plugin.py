"""A combinator from a user's plugin module, registered with the public API the built-ins use,
is seen by every part of archspec: check (table, JSON, memory), build, schema and graph.

The plugin is a throw-away module written into tmp_path: a squeeze-and-excitation style
`gate` whose output is its input times what its `by` layers compute from it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import archspec
from archspec.analysis.graph import to_dot
from archspec.analysis.memory import estimate
from archspec.analysis.schema import build_schema
from archspec.backend.measure import saved_bytes
from archspec.cli import main
from archspec.lower import COMBINATORS

PLUGIN = """
from archspec.lower import (
    INLINE, NAME, REF_ITEM, UNKNOWN, Combinator, State, after, described, finish,
    register_combinator,
)
from archspec.ops import fmt


@register_combinator
class Gate(Combinator):
    name = "gate"
    doc = "the input times a gate its `by` layers compute from it (squeeze-and-excitation)"

    def lower(self, lw, body, at):
        lw.options(body, at.body_loc, ("by", "name", "inline"), self.name)
        node, inner = self.opened(lw, body, at)
        if "by" not in body:
            lw.error(at.key_loc, "E-MISSING-KEY", "`gate` needs `by`: the layers of the gate")
            return node
        by = self.part(lw, body, "by", at, inner)
        node.children.append(by)
        x, g = at.state, after(by)
        if x.shape is None or g.shape is None:
            return finish(node, UNKNOWN)
        if len(g.shape) != len(x.shape) or any(a not in (1, b) for a, b in zip(g.shape, x.shape)):
            lw.error(
                at.key_loc,
                "E-MERGE-MUL",
                f"the gate gives {fmt(g.shape)}, which does not broadcast to {fmt(x.shape)}",
                "end `by` with as many channels as its input, or with 1",
            )
            return finish(node, UNKNOWN)
        rf = tuple(max(a, b) for a, b in zip(x.rf, g.rf))
        return finish(node, State(x.shape, rf, x.jump))

    def forward(self, node, x, flow):
        return flow.join("mul", [x, flow.child(node.children[0], x)], node)

    def draw(self, g, node, preds, key):
        gate = g.walk(node.children[0], preds, key + "_0")
        mul = g.merge_node("mul", node.out_shape)
        g.edges(preds, mul, style="dashed")
        g.edges(gate, mul)
        return [mul]

    def schema(self):
        return {
            "type": "object",
            "description": self.doc,
            "required": ["by"],
            "properties": {
                "by": described("the layers computing the gate", REF_ITEM),
                "name": NAME,
                "inline": INLINE,
            },
            "additionalProperties": False,
        }
"""

SPEC = """\
name: se_net
input: [3, 12, 12]
num_classes: 5
stages:
  stem: [conv: {out: 8, k: 3, pad: 1}, bn]
  se:
    gate:
      by: [gap, conv: {out: 2, k: 1}, relu, conv: {out: $gate_c, k: 1}, sigmoid]
  head: [relu, gap, flatten, linear: {out: $num_classes}]
params: {gate_c: 8}
variants:
  broken: {params: {gate_c: 3}}
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory):
    """The spec, with the plugin imported; afterwards the registry is as it was."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "gate_plugin.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    (root / "se.yaml").write_text(SPEC, encoding="utf-8")
    sys.path.insert(0, str(root))
    try:
        import gate_plugin  # noqa: F401  # registers `gate`

        yield root / "se.yaml"
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("gate_plugin", None)
        COMBINATORS.pop("gate", None)


def test_check_infers_through_the_plugin_combinator(spec: Path) -> None:
    report = archspec.check(spec)
    assert report.ok, report.render_errors()
    paths = [layer.path for layer in report.layers]
    assert paths[2:7] == ["se.by.0", "se.by.1", "se.by.2", "se.by.3", "se.by.4"]
    gate_out = next(layer for layer in report.layers if layer.path == "se.by.4").out_shape
    assert gate_out == (8, 1, 1)
    assert report.output == (5,)
    assert report.params == (8 * 27 + 8) + 16 + (2 * 8 + 2) + (8 * 2 + 8) + (8 * 5 + 5)


def test_check_cli_table_json_and_memory(spec: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["check", str(spec)])
    assert table.exit_code == 0, table.output
    assert "se.by.1" in table.output and "conv" in table.output
    obj = json.loads(runner.invoke(main, ["check", str(spec), "--json"]).output)
    assert obj["output"] == [5] and obj["errors"] == []
    assert [layer["output"] for layer in obj["layers"] if layer["path"] == "se.by.4"] == [[8, 1, 1]]
    mem = runner.invoke(main, ["check", str(spec), "--json", "--batch", "4"])
    memory = json.loads(mem.output)["memory"]
    assert memory["batch"] == 4 and memory["activations_bytes"] > 0


def test_memory_estimate_counts_what_the_product_keeps(spec: Path) -> None:
    report = archspec.check(spec)
    est = estimate(report.network, 2)
    torch.manual_seed(0)
    model = archspec.build(spec)
    assert est.activations_bytes == saved_bytes(model, torch.randn(2, 3, 12, 12), "float32")
    # The product keeps both factors. The sigmoid keeps the gate already; the stem's output,
    # which no layer keeps (bn keeps its input, gap nothing), is counted for the product.
    assert est.saved_by_path["se"] == 2 * 8 * 12 * 12 * 4


def test_build_runs_the_product_and_matches_a_torch_reference(spec: Path) -> None:
    torch.manual_seed(0)
    model = archspec.build(spec).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        out = model(x)
        s = model.stem(x)
        ref = model.head(s * model.se.by(s))
    assert tuple(out.shape[1:]) == archspec.check(spec).output
    torch.testing.assert_close(out, ref)
    assert type(model.se).__name__ == "Gate"
    assert not torch.equal(out, model.head(s))  # the gate changes the result


def test_a_gate_that_does_not_broadcast_is_a_located_error(spec: Path) -> None:
    report = archspec.check(spec, "broken")
    (err,) = report.errors
    assert (err.code, err.loc.line, err.loc.column) == ("E-MERGE-MUL", 7, 5)
    assert "3x1x1, which does not broadcast to 8x12x12" in err.message


def test_schema_describes_the_plugin_combinator(spec: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = build_schema()
    assert schema["$defs"]["comb.gate"]["required"] == ["by"]
    validator = jsonschema.Draft7Validator(schema)
    good = {"name": "n", "input": [3, 8, 8], "stages": {"se": {"gate": {"by": ["gap"]}}}}
    assert not list(validator.iter_errors(good))
    bad = {"name": "n", "input": [3, 8, 8], "stages": {"se": {"gate": {"bye": ["gap"]}}}}
    assert list(validator.iter_errors(bad))
    out = CliRunner().invoke(main, ["schema"]).output
    assert '"comb.gate"' in out


def test_graph_draws_the_plugin_combinator(spec: Path, tmp_path: Path) -> None:
    dot = to_dot(archspec.check(spec).network)
    assert 'label="se (gate)"' in dot
    assert 'label="mul\\n8x12x12"' in dot
    out = tmp_path / "se.dot"
    result = CliRunner().invoke(main, ["graph", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == dot


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
    from archspec.lower import Combinator, register_combinator

    cls = type("C", (Combinator,), {"name": name, "doc": doc})
    with pytest.raises(ValueError, match=why):
        register_combinator(cls)
    assert COMBINATORS.get(name) is None or type(COMBINATORS[name]) is not cls
