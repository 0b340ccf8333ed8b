"""Variants: overlays deep-merged onto the spec, and `extends:` (a variant overlaid on another):
the merged result, the order (the extending variant's keys win, its nulls delete), and located
errors for a missing base or a circle, found whichever variant is checked."""

from __future__ import annotations

import pytest
from spec_files import write

import archspec

SPEC = """\
name: family
input: [1, 16, 16]
num_classes: 10
params: {c: 8}
stages:
  features: [conv: {out: $c, k: 3, pad: 1}, relu]
  extra: [conv: {out: $c, k: 1}]
  head: [gap, flatten, linear: {out: $num_classes}]
variants:
  wide: {params: {c: 32}}
  wide_rgb:
    extends: wide
    input: [3, 16, 16]
  wide_rgb_lean:
    extends: wide_rgb
    stages: {extra: null}
  narrow_rgb:
    extends: wide_rgb
    params: {c: 4}
"""


def layer(report, name: str):
    return next(r for r in report.layers if r.path == name)


def test_extends_overlays_the_named_variant_first(tmp_path):
    path = write(tmp_path, SPEC)
    rgb = archspec.check(path, "wide_rgb")
    assert rgb.ok, rgb.render_errors()
    assert rgb.input == (3, 16, 16)  # its own key
    assert layer(rgb, "features.0").out_shape == (32, 16, 16)  # wide's c
    lean = archspec.check(path, "wide_rgb_lean")  # a chain of two; its null deletes a stage
    assert lean.ok and lean.input == (3, 16, 16)
    assert not any(r.path.startswith("extra") for r in lean.layers)
    assert layer(lean, "features.0").out_shape == (32, 16, 16)
    narrow = archspec.check(path, "narrow_rgb")  # the extending variant's value wins
    assert layer(narrow, "features.0").out_shape == (4, 16, 16)
    assert narrow.input == (3, 16, 16)
    assert archspec.check(path).input == (1, 16, 16)  # the spec itself unchanged


def test_extends_builds_the_same_module_as_the_variant_written_out(tmp_path):
    path = write(tmp_path, SPEC)
    flat = write(
        tmp_path, SPEC.replace("    extends: wide\n", "    params: {c: 32}\n"), "flat.yaml"
    )
    a = archspec.build(path, "wide_rgb", device="meta")
    b = archspec.build(flat, "wide_rgb", device="meta")
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


@pytest.mark.parametrize("variant", [None, "wide", "broken"])
def test_a_missing_base_is_a_located_spec_error_whichever_variant_is_checked(tmp_path, variant):
    path = write(tmp_path, SPEC + "  broken:\n    extends: wide_rbg\n")
    report = archspec.check(path, variant)
    (err,) = report.errors
    assert err.code == "E-EXTENDS"
    assert (err.loc.line, err.loc.column) == (21, 14)
    assert "`wide_rbg`" in err.message
    assert err.help == "did you mean `wide_rgb`?"


def test_a_circle_is_one_error(tmp_path):
    text = SPEC + "  a: {extends: b}\n  b: {extends: c}\n  c: {extends: a}\n"
    path = write(tmp_path, text)
    report = archspec.check(path, "b")
    (err,) = report.errors
    assert err.code == "E-EXTENDS"
    assert "a -> b -> c -> a" in err.message
    assert err.loc.line == 22  # c's `extends: a`, where the walk from a comes back


def test_extends_must_name_a_variant(tmp_path):
    path = write(tmp_path, SPEC + "  odd: {extends: [wide]}\n")
    (err,) = archspec.check(path, "odd").errors
    assert err.code == "E-EXTENDS" and err.loc.line == 20


def test_shipped_families_use_it():
    a = archspec.check("specs/torchvision/mobilenet.yaml", "mobilenet_v3_small")
    assert a.ok and a.params == 2_542_856  # torchvision.models.mobilenet_v3_small
