"""E-INPLACE: an in-place layer that overwrites a tensor another reader needs afterwards is
refused at that layer; the same network without `inplace` builds and computes what the spec
says (compared with torch written out by hand)."""

from __future__ import annotations

import textwrap

import pytest
import torch

import archspec

CASES = {
    "residual shortcut": (
        """
        s:
          - residual:
              main: [relu: {inplace: true}, conv: {out: 4, k: 3, pad: 1}]
        """,
        6,
        "the network's input, which the residual `s.0` reads",
    ),
    "output read by name": (
        """
        enc: [conv: {out: 4, k: 3, pad: 1, name: c1}, relu: {inplace: true}]
        dec: [{from: [enc.c1, in], merge: concat}]
        """,
        4,
        "the output of `enc.c1`, which the merge at line 5 reads",
    ),
    "sibling branch": (
        """
        p:
          - parallel:
              branches:
                - [dropout: {p: 0.5, inplace: true}, conv: {out: 4, k: 1}]
                - [conv: {out: 4, k: 1}]
        """,
        7,
        "the network's input, which",
    ),
    "requested output": (
        """
        a: [conv: {out: 4, k: 3, pad: 1}]
        b: [hardswish: {inplace: true}, conv: {out: 4, k: 1}]
        """,
        5,
        "the output of `a.0`, which the output `a` reads",
    ),
}


def spec(tmp_path, stages: str, outputs: str = "") -> str:
    text = "name: n\ninput: [4, 8, 8]\nstages:\n" + textwrap.indent(
        textwrap.dedent(stages).strip("\n"), "  "
    )
    path = tmp_path / "n.yaml"
    path.write_text(text + "\n" + outputs)
    return str(path)


@pytest.mark.parametrize("case", CASES)
def test_an_in_place_layer_others_read_past_is_refused_at_that_layer(tmp_path, case):
    stages, line, words = CASES[case]
    outputs = "outputs: [a, b]\n" if case == "requested output" else ""
    report = archspec.check(spec(tmp_path, stages, outputs))
    (err,) = report.errors
    assert err.code == "E-INPLACE" and err.loc.line == line, report.render_errors()
    assert words in err.message, err.message
    assert "drop `inplace: true`" in (err.help or "")


def test_in_place_after_a_layer_nobody_else_reads_is_fine(tmp_path):
    report = archspec.check(
        spec(
            tmp_path,
            """
            s:
              - residual:
                  main: [conv: {out: 4, k: 3, pad: 1}, bn, relu: {inplace: true}, conv: {out: 4, k: 1}]
                  post: [relu: {inplace: true}]
            """,
        )
    )
    assert report.ok, report.render_errors()


def test_without_inplace_the_network_is_what_the_spec_says(tmp_path):
    stages = CASES["residual shortcut"][0].replace("relu: {inplace: true}", "relu")
    model = archspec.build(spec(tmp_path, stages)).eval()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x.clone()), x + conv(torch.relu(x)), atol=1e-6)
