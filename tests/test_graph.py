"""`archspec graph`: DOT written from the IR, pictures through Graphviz when it is installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import archspec
from archspec.analysis import graph
from archspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
HAS_DOT = shutil.which("dot") is not None


def dot_of(name: str, variant: str | None = None) -> tuple[str, archspec.Report]:
    report = archspec.check(SPECS / name, variant=variant)
    assert report.ok
    return graph.to_dot(report.network), report


def layer_nodes(dot: str) -> list[str]:
    """Layer nodes carry their module path as tooltip."""
    return re.findall(r'tooltip="([^"]*)"', dot)


def clusters(dot: str) -> list[str]:
    return re.findall(r'subgraph "cluster_([^"]+)" \{\s*label="([^"]*)"', dot)


def edges(dot: str) -> list[tuple[str, str]]:
    return re.findall(r"^\s*(n\d+) -> (n\d+)", dot, re.MULTILINE)


def test_one_node_per_layer_in_forward_order():
    dot, report = dot_of("googlenet.yaml")
    assert layer_nodes(dot) == [n.path for n in report.layers]
    assert 'label="conv 7x7/2\\n64x48x48"' in dot  # op description and output shape


def test_every_stage_is_a_cluster():
    dot, _report = dot_of("resnet18.yaml")
    labels = [label for _, label in clusters(dot)]
    for stage in ("b1", "b2", "b3", "b4", "b5", "head"):
        assert stage in labels
    assert "b3.0 (residual)" in labels  # nested composites are boxes too


def test_inception_branches_hang_side_by_side_from_ranked_labels():
    dot, _ = dot_of("googlenet.yaml")
    # Nine Inception blocks, each with one label node per branch on one rank, in spec order.
    ranks = re.findall(r"\{rank=same; (n\d+) -> (n\d+) -> (n\d+) -> (n\d+) \[style=invis\];\}", dot)
    assert len(ranks) == 9
    label = dict(re.findall(r'^\s*(n\d+) \[label="([^"\\]*)', dot, re.MULTILINE))  # first line
    assert all([label[n] for n in r] == ["p1", "p2", "p3", "p4"] for r in ranks)
    # Each branch label feeds exactly its branch: four edges in, and each concat has four inputs.
    out_edges = edges(dot)
    concats = [n for n, text in label.items() if text == "concat"]
    assert len(concats) == 9
    assert all(sum(1 for _, dst in out_edges if dst == c) == 4 for c in concats)


def test_residual_shortcut_and_projection_are_drawn():
    dot, _report = dot_of("resnet18.yaml")
    assert dot.count('label="identity"') == 5  # b2.0, b2.1, b3.1, b4.1, b5.1
    assert 'tooltip="b3.0.conv3"' in dot  # the 1x1 projection of the first block of b3
    adds = re.findall(r'(n\d+) \[label="add\\n', dot)
    assert len(adds) == 8
    into = edges(dot)
    assert all(sum(1 for _, dst in into if dst == a) == 2 for a in adds)  # main path + shortcut


def test_dense_block_concatenates_each_layer():
    dot, _ = dot_of("densenet.yaml")
    # 4 dense blocks x 4 layers, each followed by a concat of its input and output
    assert len(re.findall(r'label="concat\\n', dot)) == 16
    assert 'label="concat\\n192x24x24"' in dot  # 64 + 4 * 32


def test_graph_is_connected_from_input_to_output():
    dot, _ = dot_of("inception_mnist.yaml")
    succ: dict[str, list[str]] = {}
    for a, b in edges(dot):
        succ.setdefault(a, []).append(b)
    start = re.search(r'(n\d+) \[label="input', dot).group(1)
    end = re.search(r'(n\d+) \[label="output\\n10"', dot).group(1)
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += succ.get(n, [])
    nodes = set(re.findall(r"^\s*(n\d+) \[", dot, re.MULTILINE))
    assert end in seen and seen == nodes


def test_labels_are_escaped():
    assert graph._q('a "b"\\c\nd') == '"a \\"b\\"\\\\c\\nd"'


def test_cli_writes_dot_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "g.dot"
    result = CliRunner().invoke(main, ["graph", str(SPECS / "lenet.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("digraph archspec {")


def test_cli_prints_dot_without_output():
    result = CliRunner().invoke(main, ["graph", str(SPECS / "lenet.yaml"), "--variant", "bn"])
    assert result.exit_code == 0
    assert result.output.startswith("digraph archspec {") and 'label="lenet (bn)"' in result.output


def test_cli_names_the_package_when_dot_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = CliRunner().invoke(
        main, ["graph", str(SPECS / "lenet.yaml"), "-o", str(tmp_path / "g.svg")]
    )
    assert result.exit_code == 2
    assert "Graphviz" in result.output and "apt-get install graphviz" in result.output
    assert "-o FILE.dot" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "g.svg").exists()


def test_cli_refuses_unknown_suffix_and_reports_spec_errors(tmp_path):
    r1 = CliRunner().invoke(
        main, ["graph", str(SPECS / "lenet.yaml"), "-o", str(tmp_path / "g.jpg")]
    )
    assert r1.exit_code == 2 and ".svg" in r1.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: [1, 8, 8]\nstages:\n  s: [conv: {out: 4, k: 9}]\n")
    r2 = CliRunner().invoke(main, ["graph", str(bad), "-o", str(tmp_path / "g.dot")])
    assert r2.exit_code == 1 and "E-SHAPE-COLLAPSE" in r2.output


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")
def test_cli_renders_svg_and_png(tmp_path):
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    for out in (svg, png):
        result = CliRunner().invoke(main, ["graph", str(SPECS / "googlenet.yaml"), "-o", str(out)])
        assert result.exit_code == 0, result.output
    text = svg.read_text()
    assert "<svg" in text and text.count('class="node"') > 130
    # In the picture the four branch labels of the first Inception block sit on one row, left
    # to right in spec order.
    xy = {}
    for title, x, y in re.findall(
        r"<title>(n\d+)</title>\s*<text[^>]*x=\"([\d.-]+)\" y=\"([\d.-]+)\"", text
    ):
        xy[title] = (float(x), float(y))
    dot, _ = dot_of("googlenet.yaml")
    first = re.search(r"\{rank=same; (n\d+) -> (n\d+) -> (n\d+) -> (n\d+)", dot).groups()
    xs, ys = [xy[n][0] for n in first], [xy[n][1] for n in first]
    assert xs == sorted(xs) and len(set(ys)) == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
