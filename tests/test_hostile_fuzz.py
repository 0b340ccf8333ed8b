"""Random garbage, structured enough to reach deep into the checker, never crashes it.

Two seeded hypothesis sweeps: token soup for the expression evaluator (only a located Problem
may come out), and random nestings of the spec language's own keywords and odd values for
`check` (a Report always comes back, every error located inside the file, JSON and rendering
never fail). The differential fuzzer checks the *answers*; these check that there always is one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timing import best_of

import archspec
from archspec.lang.errors import Problem
from archspec.lang.expr import Shape, evaluate

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

TOKENS = [
    "$c",
    "$l",
    "$s",
    "$in",
    "$in.c",
    "$in.h",
    "$in.f",
    "$nope",
    "1",
    "0",
    "-1",
    "2.5",
    "1e308",
    "64",
    "'a'",
    "True",
    "None",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "**",
    "<",
    "==",
    "and",
    "or",
    "not",
    "if",
    "else",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    "min",
    "max",
    "int",
    "round",
    "abs",
    "ceil",
    "floor",
    "lambda",
    ":",
    "x",
    "__class__",
    "__import__",
    "[0]",
    "[-1]",
    "[9]",
    "{",
    "}",
    "f'",
    ":=",
]
ENV = {"c": 4, "l": [1, 2, 3], "s": "text", "in": Shape((3, 8, 8))}


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14))
def test_expression_soup_gives_a_value_or_a_problem(tokens: list[str]):
    text = " ".join(tokens)
    if "$" not in text:
        text = "$c + " + text

    def run() -> None:
        try:
            evaluate(text, ENV)
        except Problem as p:
            assert p.code.startswith("E-EXPR-") and p.message

    assert best_of(run, 0.5)[0] < 0.5


KEYS = [
    "conv",
    "maxpool",
    "avgpool",
    "bn",
    "relu",
    "linear",
    "flatten",
    "gap",
    "adaptive_avgpool",
    "dropout",
    "lrn",
    "parallel",
    "residual",
    "dense",
    "seq",
    "repeat",
    "use",
    "body",
    "with",
    "first",
    "at",
    "prefix",
    "start",
    "name",
    "inline",
    "branches",
    "merge",
    "flat",
    "main",
    "shortcut",
    "projection",
    "post",
    "layers",
    "params",
    "out",
    "k",
    "stride",
    "pad",
    "dilation",
    "groups",
    "bias",
    "ceil_mode",
    "t",
    "c",
    "p",
]
SCALARS = st.one_of(
    st.sampled_from(KEYS),
    st.integers(-3, 70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "$c",
            "$in.c",
            "$i",
            "$in.h // 2",
            "same",
            "valid",
            "auto",
            "identity",
            "add",
            "concat",
            "int",
            "list",
            "$nope",
            "$c[0]",
            "$t",
            "",
            "$in",
            "$in < 1",
        ]
    ),
    st.text(max_size=5),
)
DATA = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=30,
)
SPECS = st.fixed_dictionaries(
    {"name": st.just("fuzz"), "input": st.sampled_from([[3, 16, 16], [8], [1, 5, 7]])},
    optional={
        "templates": st.dictionaries(st.sampled_from(["t", "u"]), DATA, max_size=2),
        "stages": st.dictionaries(st.sampled_from(["a", "b", "c"]), DATA, min_size=1, max_size=3),
        "params": st.dictionaries(st.sampled_from(["c", "l"]), DATA, max_size=2),
        "variants": st.dictionaries(st.just("v"), DATA, max_size=1),
        "defaults": st.dictionaries(st.sampled_from(KEYS[:6]), DATA, max_size=2),
    },
)


@SETTINGS
@given(SPECS)
def test_random_spec_structures_always_get_a_report(spec: dict):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        text = json.dumps(spec, indent=1)
        path.write_text(text)
        lines = len(text.splitlines())
        for variant in (None, "v"):
            elapsed, report = best_of(lambda: archspec.check(path, variant=variant), 1.0)  # noqa: B023
            assert elapsed < 1.0
            json.dumps(report.to_json())
            report.render_errors()
            assert report.ok or report.errors
            for e in report.errors:
                assert e.loc.file == str(path) and 1 <= e.loc.line <= lines and e.loc.column >= 1, e
