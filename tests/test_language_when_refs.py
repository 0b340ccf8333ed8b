"""`when:` beside `from:` and references around items it leaves out, a template body naming its
own input, and the errors a reference or a merge inside a template gives (the new user's trial,
2026-12-03). Outputs are held against a hand-written forward over the built modules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

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


def write(tmp_path: Path, text: str, name: str = "net.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


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
