"""`when:` beside `from:` and references around items it leaves out, a template body naming its
own input, and the errors a reference or a merge inside a template gives (the new user's trial,
2026-12-03). Outputs are held against a hand-written forward over the built modules."""

from __future__ import annotations

from pathlib import Path

import torch
from spec_files import write

import archspec

PREACT = """\
name: preact
input: [8, 8, 8]
params: {t: 1}
stages:
  a:
    - conv: {out: 8, k: 3, pad: 1, name: c2}
    - {when: "$t == 1", conv: {out: 8, k: 1, name: sc}}
    - {when: "$t == 1", from: [c2, sc], merge: add}
    - {when: "$t == 2", from: [in, c2], merge: concat}
"""


def built(path: Path, **kw) -> torch.nn.Module:
    report = archspec.check(path, **kw)
    assert report.ok, [(e.code, e.message) for e in report.errors]
    return archspec.build(path, **kw).eval()


def test_a_false_when_leaves_out_an_item_with_from_and_a_merge_only_item(tmp_path):
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        for t in (0, 1, 2):  # 0: both left out, 1: sc and the sum, 2: the concat alone
            m = built(write(tmp_path, PREACT.replace("t: 1", f"t: {t}"), f"t{t}.yaml"))
            c2 = m.a.c2(x)
            want = {0: c2, 1: c2 + m.a.sc(c2) if t == 1 else None, 2: torch.cat([c2, c2], 1)}[t]
            assert hasattr(m.a, "sc") == (t == 1)
            assert (m(x) - want).abs().max().item() <= 1e-6


def test_a_reference_to_an_item_left_out_says_which_when_left_it_out(tmp_path):
    spec = write(
        tmp_path,
        """\
        name: gone
        input: [8, 8, 8]
        stages:
          a:
            - conv: {out: 8, k: 3, pad: 1, name: c2}
            - {when: false, conv: {out: 8, k: 1, name: sc}}
            - {from: [c2, sc], merge: add}
        """,
    )
    (err,) = archspec.check(spec).errors
    assert (err.code, err.loc.line, err.loc.column) == ("E-REF-UNKNOWN", 7, 19)
    assert "no output named `sc` here: its `when` (line 6) is false" in err.message
    assert "`when`" in (err.help or "")


PREACT_BLOCK = """\
name: preact_block
input: [8, 8, 8]
templates:
  preact:
    params: {c: int, stride: 1, proj: false}
    body:
      - {from: in, name: x}
      - bn
      - relu: {name: relu1}
      - conv: {out: $c, k: 3, stride: $stride, pad: 1, bias: false}
      - {when: $proj, from: relu1, conv: {out: $c, k: 1, stride: $stride, name: shortcut}}
      - {when: $proj, from: ['2', shortcut], merge: add}
      - {when: "not $proj", from: ['2', x], merge: add}
stages:
  l1: {repeat: 2, use: preact, with: {c: 8}}
  l2: {repeat: 1, use: preact, with: {c: 16, stride: 2, proj: true}}
"""


def test_a_template_body_names_its_own_input_with_a_merge_of_one(tmp_path):
    m = built(write(tmp_path, PREACT_BLOCK))
    # `{from: in, name: x}` is no module and takes no position: bn is 0, the conv 2
    sub = getattr  # a block of a repeat, or a layer of a block, by its module name
    assert [n for n, _ in sub(m.l1, "0").named_children()] == ["0", "relu1", "2"]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        y = x
        for b in (sub(m.l1, "0"), sub(m.l1, "1")):
            y = y + sub(b, "2")(b.relu1(sub(b, "0")(y)))
        b = sub(m.l2, "0")
        r = b.relu1(sub(b, "0")(y))
        want = sub(b, "2")(r) + b.shortcut(r)
        assert (m(x) - want).abs().max().item() <= 1e-5


def test_an_error_inside_a_template_names_the_uses_that_fail(tmp_path):
    spec = write(
        tmp_path,
        """\
        name: uses
        input: [3, 32, 32]
        templates:
          blk:
            params: {c: int, stride: 1}
            body:
              - {from: in, name: x}
              - conv: {out: $c, k: 3, stride: $stride, pad: 1, name: conv}
              - {from: [conv, x], merge: add}
          typo:
            body: [conv: {out: 8, k: 1, strid: 2}]
        stages:
          stem: {conv: {out: 16, k: 3, pad: 1}}
          l1: {repeat: 2, use: blk, with: {c: 16}}
          l2: {repeat: 2, use: blk, with: {c: 32}, first: {stride: 2}}
          t1: typo
          t2: [relu, typo]
        """,
    )
    add, k1 = archspec.check(spec).errors
    # located in the body, where the mistake is written; the note names the use
    assert (add.code, add.loc.line) == ("E-MERGE-ADD", 9)
    assert add.note == "in the use at `l2.0` (line 15)"
    assert add.help == "give both the same shape: a 1x1 conv with 32 channels and stride 2 on `x`"
    # one mistake made by two uses is said once, with both
    assert (k1.code, k1.loc.line, k1.note) == (
        "E-UNKNOWN-KEY",
        11,
        "in the uses at `t1` (line 16) and `t2.1` (line 17)",
    )
    assert "note: in the use at `l2.0` (line 15)" in add.render()
    assert archspec.check(spec).to_json()["errors"][0]["note"] == add.note


UNET = """\
name: unet
input: [1, 60, 60]
templates:
  up:
    params: {c: int, skip: str}
    body:
      - convtranspose: {out: $c, k: 2, stride: 2, name: up}
      - from: [$skip, in]
      - conv: {out: $c, k: 3, pad: 1}
stages:
  inc: [conv: {out: 8, k: 3, pad: 1}]
  down1: [maxpool: {k: 2}, conv: {out: 16, k: 3, pad: 1}]
  down2: [maxpool: {k: 2}, conv: {out: 32, k: 3, pad: 1}]
  down3: [maxpool: {k: 2}, conv: {out: 64, k: 3, pad: 1}]
  up1: {up: {c: 32, skip: down2}}
  up2: {up: {c: 16, skip: down1}}
"""


def test_a_merge_size_mismatch_names_the_resolved_source_and_a_fix_that_works(tmp_path):
    (err,) = archspec.check(write(tmp_path, UNET)).errors
    assert err.code == "E-MERGE-CONCAT" and err.loc.line == 8
    assert "down2 gives 15x15 but the incoming tensor gives 14x14" in err.message
    assert err.note == "in the use at `up1` (line 15)"
    fix = "put `upsample: {size_of: $skip}` or `pad: {to: $skip}` (`down2` here) before this item"
    assert err.help is not None and err.help.endswith(fix)
    for line in ("upsample: {size_of: $skip}", "pad: {to: $skip}"):  # what the help says works
        fixed = UNET.replace(
            "      - from: [$skip, in]", f"      - {line}\n      - from: [$skip, in]"
        )
        m = built(write(tmp_path, fixed, "fixed.yaml"))
        assert m(torch.randn(1, 1, 60, 60)).shape == (1, 16, 30, 30)


def test_an_unknown_reference_lists_only_the_outputs_the_item_can_read(tmp_path):
    spec = write(
        tmp_path,
        """\
        name: seen
        input: [8, 8, 8]
        templates:
          blk:
            body:
              - {from: in, name: x}
              - bn: {name: bn1}
              - conv: {out: 8, k: 3, pad: 1, name: conv1}
              - {from: [conv1, "'sc' + str($i)"], merge: add}
        stages:
          conv1: {conv: {out: 8, k: 1}}
          layer1: {repeat: 2, use: blk}
          later: relu
        """,
    )
    first, second = archspec.check(spec).errors
    # not the enclosing repetition or stage, nothing computed later; the stage `conv1` is
    # hidden by the block's own `conv1`
    assert first.message == "no output named `sc0`"
    assert first.help == "expected one of: bn1, conv1, x"
    assert first.note == "in the use at `layer1.0` (line 12)"
    assert second.help == "expected one of: 0, 0.bn1, 0.conv1, 0.x, bn1, conv1, x"
    assert second.note == "in the use at `layer1.1` (line 12)"
    spec.write_text(spec.read_text().replace("\"'sc' + str($i)\"", "sc"))
    (both,) = archspec.check(spec).errors  # one mistake of two uses: said once, with both
    assert both.note == "in the uses at `layer1.0` (line 12) and `layer1.1` (line 12)"


def test_an_inline_seq_shortcut_puts_its_layers_on_the_block(tmp_path):
    """docs/language.md's residual section: Xception's `block1.skip`, `block1.skipbn`."""
    m = built(
        write(
            tmp_path,
            """\
            name: xception_block
            input: [8, 16, 16]
            stages:
              block1:
                residual:
                  main:
                    - seq: {name: rep, layers: [conv: {out: 16, k: 3, pad: 1}, maxpool: {k: 2}]}
                  shortcut:
                    seq:
                      inline: true
                      layers: [conv: {out: 16, k: 1, stride: 2, name: skip}, bn: {name: skipbn}]
            """,
        )
    )
    assert sorted({k.rsplit(".", 1)[0] for k in m.state_dict()}) == [
        "block1.rep.0",
        "block1.skip",
        "block1.skipbn",
    ]
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        want = m.block1.rep(x) + m.block1.skipbn(m.block1.skip(x))
        assert (m(x) - want).abs().max().item() <= 1e-6


def test_a_stage_left_out_by_when_builds_without_it(tmp_path):
    text = """\
    name: stages
    input: [3, 8, 8]
    stages:
      a: [conv: {out: 4, k: 1}]
      b: {when: false, conv: {out: 4, k: 1}}
      c: {when: false, from: [a, in], merge: add}
      d: relu
    """
    m = built(write(tmp_path, text))
    assert [n for n, _ in m.named_children()] == ["a", "d"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(x), torch.relu(m.a(x)))
    reader = text.replace("      d: relu", "      d: [{from: [a, b]}]")
    (err,) = archspec.check(write(tmp_path, reader, "reader.yaml")).errors
    assert err.code == "E-REF-UNKNOWN" and "its `when` (line 5) is false" in err.message
