"""The language server's cached re-check gives exactly what a fresh check gives, and its
answers (hover, completion, definition, rename) on the shipped specs."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from trees import same_tree

import archspec
from archspec.analysis.report import check, check_text
from archspec.lang.source import LMap, LSeq, SourceError, parse_text
from archspec.lsp import features as F
from archspec.lsp.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").rglob("*.yaml"))
RESNET = "specs/torchvision/resnet.yaml"


@pytest.fixture(scope="module", autouse=True)
def at_root(request):
    import os

    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


def test_cached_check_is_the_fresh_check_for_every_shipped_spec_and_variant():
    engine = Engine()
    for spec in SPECS:
        text = Path(spec).read_text()
        assert engine._from_pieces(text, spec) is not None, spec  # the fast path is taken
        same_tree(engine.parse(text, spec).root, parse_text(text, spec).root)
        for variant in [None, *archspec.variants(spec)]:
            for _ in range(2):  # cold, then every stage reused
                got = engine.check(text, spec, variant).report.to_json()
                assert got == check(spec, variant).to_json(), (spec, variant)


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    kind = rng.randrange(6)
    if kind == 0:
        j = rng.randrange(len(text))
        return text[:j] + text[j + 1 :]
    if kind == 1:
        j = rng.randrange(len(text) + 1)
        return text[:j] + rng.choice(" -:#[]{}'\"\t\n&*!|>?%,0123456789k$") + text[j:]
    if kind == 2:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif kind == 3:
        del lines[i]
    elif kind == 4:
        lines[i] = " " + lines[i]
    else:
        old, new = rng.choice([("64", "65"), ("3", "1"), ("relu", "bn"), ("k: 3", "k: 5")])
        return text.replace(old, new, 1)
    return "\n".join(lines)


def test_random_edits_give_the_fresh_check_exactly():
    """Edits as typing makes them (broken YAML, duplicate keys, bad values...), each checked by
    one warm engine and by a fresh check_text: same tree or same parse error, same report."""
    rng = random.Random(21)
    engine = Engine()
    for _ in range(25):
        spec = rng.choice(SPECS)
        text = Path(spec).read_text()
        for _ in range(rng.randrange(1, 4)):
            text = _mutate(text, rng)
        variant = rng.choice([None, *archspec.variants(spec)])
        try:
            want, want_err = parse_text(text, spec), None
        except SourceError as e:
            want, want_err = None, (e.loc, e.problem.code, e.problem.message)
        try:
            got, got_err = engine.parse(text, spec), None
        except SourceError as e:
            got, got_err = None, (e.loc, e.problem.code, e.problem.message)
        assert got_err == want_err
        if want is not None:
            same_tree(got.root, want.root)
        fresh = check_text(text, spec, variant).to_json()
        assert engine.check(text, spec, variant).report.to_json() == fresh


def test_an_edit_in_one_stage_relowers_that_stage_only():
    engine = Engine()
    text = Path(RESNET).read_text()
    before = engine.check(text, RESNET, "resnet152").report.network
    edited = text.replace("fc: {linear: {out: $num_classes}}", "fc: {linear: {out: 10}}")
    after = engine.check(edited, RESNET, "resnet152").report.network
    assert before is not None and after is not None
    old, new = before.root.children, after.root.children
    assert [a is b for a, b in zip(old, new)] == [True] * (len(old) - 1) + [False]
    assert new[-1].out_shape == (10,)


def test_an_edit_in_a_template_relowers_the_stages_that_use_it():
    spec = "specs/torchvision/inception_v3.yaml"
    engine = Engine()
    text = Path(spec).read_text()
    before = engine.check(text, spec).report.network
    old = "- basic_conv: {c: 448, name: branch3x3dbl_1}"  # in inception_e: Mixed_7b and 7c
    edited = text.replace(old, old.replace("448", "440"))
    got = engine.check(edited, spec)
    assert got.report.to_json() == check_text(edited, spec).to_json()
    stages = dict(zip([s.name for s in before.root.children], before.root.children))
    for stage in got.report.network.root.children:
        reused = stage is stages[stage.name]
        assert reused == (stage.name not in ("Mixed_7b", "Mixed_7c")), stage.name


def test_checking_text_never_reads_the_file(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("name: x\n")  # not what is checked
    text = Path("specs/lenet.yaml").read_text()
    assert Engine().check(text, str(spec)).report.to_json()["errors"] == []
    assert check_text(text, str(spec)).ok


def test_import_archspec_and_check_stay_free_of_pygls():
    code = (
        "import sys, archspec, archspec.cli; archspec.check('specs/lenet.yaml');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pygls', 'lsprotocol', 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- answers


@pytest.fixture(scope="module")
def resnet():
    text = Path(RESNET).read_text()
    analysis = Engine().check(text, RESNET, "resnet152")
    return analysis, text.split("\n")


def _at(lines, needle, offset=0):
    for i, line in enumerate(lines):
        if needle in line:
            return i, line.index(needle) + offset
    raise AssertionError(needle)


def test_hover_on_a_stage_and_on_a_template_use(resnet):
    analysis, lines = resnet
    index = F.Index.build(analysis)
    layer3 = analysis.report.network.root.children[6]
    text = F.hover(index, *_at(lines, "layer3:"))
    assert layer3.path == "layer3" and "256" not in text.split("\n")[0]
    assert "`1024x14x14`" in text.split("\n")[0]  # bottleneck: 4 x 256 channels
    params = sum(n.inferred.params for n in layer3.leaves())
    assert f"{params:,}" in text
    use = F.hover(index, *_at(lines, "use: $block, with: {planes: 256}", len("use: ")))
    assert "36 uses" in use  # resnet152's layer3 has 36 bottlenecks
    assert "... and 28 more uses" in use


def test_hover_on_a_composite_shows_the_receptive_field_as_check_does():
    # none on tokens; after an op that mixes every position, the whole input (not 2^40)
    text = (
        "name: rf\ninput: [3, 16, 12]\nstages:\n"
        "  enc: [conv: {out: 8, k: 4, stride: 4}, to_tokens, residual: {main: [attention: {heads: 2}]}]\n"
        "  after: [to_image: {h: 4, w: 3}, conv: {out: 8, k: 1}]\n"
        "  pool: [to_tokens, mean_tokens, linear: {out: 2}]\n"
    )
    index = F.Index.build(Engine().check(text, "rf.yaml"))
    lines = text.splitlines()

    def rf(needle, path):
        hovered = F.hover(index, *_at(lines, needle)).split("\n")
        return next(ln for ln in hovered if ln.startswith(path + " ")).split()[-1]

    assert rf("residual", "enc.2") == "-" and rf("enc:", "enc") == "-"
    assert rf("pool:", "pool") == "16x12" and rf("mean_tokens", "pool.1") == "16x12"
    assert rf("after:", "after") == "16x12"  # a conv after them still sees it all


def labels(got):
    return {c.label for c in got}


def test_completion_contexts(resnet):
    analysis, lines = resnet
    src = analysis.source
    assert {"conv", "bn", "residual", "basic", "bottleneck"} <= labels(
        F.complete(src, ["stages:", "  x:", "    - co"], 2, 8)
    )
    assert labels(F.complete(src, ["  l: {repeat: 2, use: bo"], 0, 24)) == {"basic", "bottleneck"}
    line, col = _at(lines, "use: $block, with: {planes: 128}", len("use: $block, with: {"))
    assert labels(F.complete(src, lines, line, col)) == {"planes", "stride", "mid"}
    got = F.complete(src, ["stages:", "  x:", "    - conv:", "      k: 3", "      "], 4, 6)
    assert {"out", "k", "stride", "dilation"} <= labels(got)
    line, col = _at(lines, "k: 1, bias: false, name: conv1", 0)  # in the bottleneck template
    dollar = labels(F.complete(src, [*lines[:line], lines[line][:col] + "$"], line, col + 1))
    assert {"planes", "stride", "mid", "layers", "groups", "in", "num_classes"} <= dollar
    assert labels(F.complete(src, ["    - conv: {out: $in."], 0, 22)) == {"c", "h", "w", "f"}


def test_definition_of_a_template_and_of_a_parameter(resnet):
    analysis, lines = resnet
    src = analysis.source
    loc = F.definition(src, lines, *_at(lines, "projection: {name: downsample}"))
    assert loc is None
    line, col = _at(lines, "use: $block", len("use: $b"))
    assert F.definition(src, lines, line, col) == src.root["params"].key_locs["block"]
    line, col = _at(lines, "stride: $stride", len("stride: $s"))
    decl = _at(lines, "params: {planes: int, stride: 1}", len("params: {planes: int, "))
    got = F.definition(src, lines, line, col)  # basic's `stride`, declared in its params
    assert (got.line - 1, got.column - 1) == decl


def test_rename_a_template_everywhere_it_is_named(resnet):
    analysis, lines = resnet
    src = analysis.source
    spans = F.rename(src, lines, *_at(lines, "  bottleneck:", 3), "bneck")
    # The definition, and the eight variants choosing it through `params: {block: ...}`.
    assert len(spans) == 1 + 8
    renamed = list(lines)
    for s in sorted(spans, key=lambda s: (s.line, s.start), reverse=True):
        assert renamed[s.line][s.start : s.end] == "bottleneck"
        renamed[s.line] = renamed[s.line][: s.start] + "bneck" + renamed[s.line][s.end :]
    text = "\n".join(renamed)
    assert "bottleneck" not in text.replace("# bottleneck", "").split("templates:")[1]
    for variant in ("resnet50", "resnext50_32x4d"):
        got = check_text(text, RESNET, variant).to_json()
        assert got["errors"] == [] and got["params"] == check(RESNET, variant).params


def test_a_diagnostic_spans_its_node():
    text = "name: n\ninput: [3, 8, 8]\nstages:\n  a: [conv: {out: 4, k: 3}, relux]\n"
    analysis = Engine().check(text, "n.yaml")
    ((span, d),) = F.diagnostics(analysis)
    assert d.code == "E-UNKNOWN-OP"
    assert text.split("\n")[span.line][span.start : span.end] == "relux"
    assert isinstance(analysis.source.root, LMap) and isinstance(
        analysis.source.root["stages"]["a"], LSeq
    )


def test_expression_results_are_kept_per_value_and_type():
    """evaluate keeps scalar results (the re-check evaluates a template's expressions at every
    use): the same text over a value of another type or size is evaluated again."""
    from archspec.lang.errors import Problem
    from archspec.lang.expr import Shape, evaluate

    assert evaluate("$a * 2", {"a": 3}) == 6
    assert evaluate("$a * 2", {"a": 3}) == 6
    assert evaluate("$a * 2", {"a": 4}) == 8
    got = evaluate("$a * 2", {"a": 3.0})
    assert got == 6.0 and isinstance(got, float)
    with pytest.raises(Problem, match="expected a number"):
        evaluate("$a * 2", {"a": True})  # True == 1, but a boolean is no number here
    assert evaluate("$in.c // 2", {"in": Shape((64, 8, 8))}) == 32
    assert evaluate("$in.c // 2", {"in": Shape((32, 8, 8))}) == 16
    with pytest.raises(Problem, match="unknown name"):
        evaluate("$in.c // 2", {})
    assert evaluate("$l[1] + 1", {"l": [1, 2]}) == 3
    assert evaluate("$l[1] + 1", {"l": [1, 5]}) == 6  # lists are not kept: read again


def test_inlay_hints_only_where_every_use_agrees(resnet):
    analysis, lines = resnet
    hints = {line: label for line, _, label in F.inlay_hints(F.Index.build(analysis), lines)}
    assert hints[_at(lines, "conv1: {conv")[0]] == "→ 64x112x112"
    assert hints[_at(lines, "layer3:")[0]] == "→ 1024x14x14"
    assert _at(lines, "- conv: {out: $mid, k: 1")[0] not in hints  # four widths, four sizes


def test_the_server_checks_the_configured_variant_where_the_spec_has_it(tmp_path):
    pytest.importorskip("pygls")
    from archspec.lsp.server import ArchspecServer

    server = ArchspecServer()
    server.variant = "resnet152"
    text = Path(RESNET).read_text()
    assert server.check(text, RESNET).report.variant == "resnet152"
    lenet = Path("specs/lenet.yaml").read_text()  # no such variant: the base spec, no error
    got = server.check(lenet, "specs/lenet.yaml").report
    assert got.variant is None and got.ok


def test_variant_names_after_extends_complete_and_lead_to_their_definition():
    path = "specs/torchvision/mobilenet.yaml"
    text = Path(ROOT / path).read_text()
    lines = text.splitlines()
    src = parse_text(text, path)
    line, col = _at(lines, "extends: mobilenet_v3_large", len("extends: mobilenet_v3_"))
    got = labels(F.complete(src, [*lines[:line], lines[line][:col]], line, col))
    assert got == {"mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"}
    target = F.definition(src, lines, line, col)
    assert target == src.root["variants"].key_locs["mobilenet_v3_large"]
    assert lines[target.line - 1].strip() == "mobilenet_v3_large:"


def test_a_token_stage_is_relowered_when_only_its_grid_changes():
    # The tokens reaching `back` are 8 x 16 either way; their grid (2x4 or 4x2) decides what
    # to_image gives, so the cached stage must not be the answer for the other input.
    text = (
        "name: g\ninput: [16, {h}, {w}]\nstages:\n  tokens: [to_tokens, layernorm]\n"
        "  back: [linear: {{out: 16}}, to_image]\n"
    )
    engine = Engine()
    for h, w in [(2, 4), (4, 2), (2, 4)]:
        source = text.format(h=h, w=w)
        got = engine.check(source, "g.yaml").report
        assert got.output == (16, h, w)
        assert got.to_json() == check_text(source, "g.yaml").to_json()


def test_a_reused_stage_and_a_reused_layer_keep_the_notes_of_their_uses(tmp_path):
    """The notes that name a template's failing uses: a stage the engine reuses says its own
    uses again, a layer's cached result is said in the use being lowered."""
    spec = str(tmp_path / "notes.yaml")
    text = (
        "name: notes\ninput: [3, 8, 8]\ntemplates:\n"
        "  typo: {body: [conv: {out: 8, k: 1, strid: 2}]}\n"
        "stages:\n  a: typo\n  b: [relu, typo]\n  c: [conv: {out: 4, k: 1}]\n"
    )
    engine = Engine()
    first = engine.check(text, spec).report.to_json()
    assert first == check_text(text, spec).to_json()
    assert first["errors"][0]["note"] == "in the uses at `a` (line 6) and `b.1` (line 7)"
    edited = text.replace("out: 4", "out: 5")  # `a` and `b` are reused
    assert engine.check(edited, spec).report.to_json() == check_text(edited, spec).to_json()
    moved = text.replace("  a: typo", "  a: [relu, typo]")  # `a` again, its conv's rule reused
    got = engine.check(moved, spec).report.to_json()
    assert got == check_text(moved, spec).to_json()
    assert got["errors"][0]["note"] == "in the uses at `a.1` (line 6) and `b.1` (line 7)"
