"""The libyaml fast path of the YAML reader (lang/source.py `_compose_in_c`) gives exactly what
ruamel's pure-Python composer gives: the same located tree, or the same located error, for every
text it accepts; and it leaves every text it should not take (too deep, too many nodes, a
directive, a YAML error) to the pure composer."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from trees import same_tree

from archspec.lang import source
from archspec.lang.source import (
    SourceError,
    _check_flow_depth,
    _compose_in_c,
    _Converter,
    parse_text,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    __import__("ruamel.yaml.main", fromlist=["CParser"]).CParser is None,
    reason="ruamel.yaml.clib (libyaml) is not installed: specs are composed in Python only",
)


def _texts() -> list[str]:
    """Every YAML text the project ships: specs, examples, hostile corpus, docs' yaml blocks."""
    files = [*ROOT.glob("specs/**/*.yaml"), *ROOT.glob("docs/examples/*.yaml")]
    files += ROOT.glob("tests/corpus/**/*.yaml")
    texts = [f.read_bytes().decode("utf-8", "replace") for f in sorted(files)]
    for doc in sorted(ROOT.glob("docs/*.md")):
        texts += re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.DOTALL)
    return texts


TEXTS = _texts()


def _outcome(compose, text: str):
    try:
        return "tree", _Converter("s.yaml").convert(compose(text), 0)
    except SourceError as e:
        return "error", (e.loc, e.problem.code, e.problem.message, e.problem.help)


def _same(text: str) -> bool:
    """Compare the two composers on `text` where the fast path takes it; False where it does
    not (the pure composer alone is used then)."""
    try:
        _check_flow_depth(text, "s.yaml")  # parse_text refuses these before composing
    except SourceError:
        return False
    if _compose_in_c(text) is None:
        return False
    fast = _outcome(_compose_in_c, text)
    pure = _outcome(lambda t: source._compose_in_python(t, "s.yaml"), text)
    assert fast[0] == pure[0], (text[:200], fast, pure)
    if fast[0] == "tree":
        same_tree(fast[1], pure[1])
    else:
        assert fast[1] == pure[1], text[:200]
    return True


def test_every_shipped_text_composes_the_same_in_c():
    taken = sum(_same(t) for t in TEXTS)
    assert taken >= len(TEXTS) // 2  # the fast path is the usual one, not a rare one


@pytest.mark.parametrize(
    "form",
    [
        lambda t: t.replace("\n", "\r\n"),  # Windows line ends
        lambda t: "\ufeff" + t,  # a byte-order mark
        lambda t: t.replace("# ", "# été ☃ 中文 𝔘 ", 3),  # wide characters before columns
        lambda t: t.replace("name: ", "name: 'ünï ☃' # x\n_x: ", 1),
        lambda t: t.replace("\n", "\n\t\n", 2),
        lambda t: t.replace("\n", " \u2028 \n", 1),
        lambda t: t.replace("\n", "\x85", 1),
        lambda t: t + "\n...\n",
        lambda t: t + "\n---\nb: 1\n",
        lambda t: "&a " + t,  # an anchor on the whole document
    ],
)
def test_encodings_line_ends_and_odd_characters_compose_the_same(form):
    for text in TEXTS[:40]:
        _same(form(text))


SNIPPETS = [
    "a: &x [1, 2]\nb: *x\nc: *x\n",
    "a: !!str 3\nb: !!int '4'\nc: !local x\nd: !!python/object:os.system x\n",
    "? [a, b]\n: c\n",
    "a: |\n  text\n   more\nb: >-\n  folded\n  lines\n",
    "a: 'it''s'\nb: \"esc \\t \\u00e9 \\/\"\nc: 0x1F\nd: 0o17\ne: 1_000\nf: .inf\ng: -.nan\n",
    "a: yes\nb: No\nc: ON\nd: ~\ne: null\nf: 1e3\ng: 1.5E-2\nh: 010\ni: +12\n",
    "%YAML 1.1\n---\na: yes\n",
    "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
    "a:\n- 1\n-\n- [ ]\n- { }\n- {a, b: }\n",
    "a: b: c\n",
    "a: [1, 2\nb: 3\n",
    "- - - - - 1\n",
    "a: &x 1\nb: &x 2\nc: *x\n",
    "a: *missing\n",
    "'a': 1\n\"a\": 2\n",
    "{a: 1, a: 1}\n",
    "",
    "# only a comment\n",
]


@pytest.mark.parametrize("text", SNIPPETS)
def test_yaml_corners_compose_the_same(text):
    _same(text)


def test_random_edits_of_real_specs_compose_the_same():
    rng = random.Random(20261203)
    specs = [t for t in TEXTS if len(t) > 50]
    alphabet = [*":-[]{}'\"#&*!|>?,\t\n %@`\\x0é☃=~", ": ", "- ", "? ", "\n  ", "\n- ", " #"]
    alphabet += ["\r\n", "\r", "\ufeff", "\x7f", "\x01", "\x1b", "\x85", "\u2028", "\U0001d518"]
    alphabet += [
        "...",
        "---",
        ".5",
        "1e3",
        "0x",
        "true",
        "null",
        "'x'",
        '"\\',
        "<<: ",
        "!=",
        " !=x",
    ]
    alphabet += ["&a ", "*a", " &b", " *b", "!x ", "!!str ", " * ", "|", "> ", "|-\n  x"]
    taken = 0
    for _ in range(600):
        text = rng.choice(specs)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text))
            r = rng.random()
            if r < 0.4:
                text = text[:i] + rng.choice(alphabet) + text[i:]
            elif r < 0.7:
                text = text[:i] + text[i + rng.randint(1, 8) :]
            else:
                lines = text.split("\n")
                j = rng.randrange(len(lines))
                lines.insert(rng.randrange(len(lines)), lines[j])
                text = "\n".join(lines)
        taken += _same(text)
    assert taken > 50


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000 + "]" * 20_000 + "\n",  # deeper than libyaml's C stack allows
        "? " * 20_000 + "a\n",
        "a: [" + "[" * 70 + "]" * 70 + "]\n",  # deeper than MAX_DEPTH
        "- [" + ", ".join(["1"] * (source.MAX_YAML_NODES + 10)) + "]\n",  # too many nodes
    ],
)
def test_what_the_pure_composer_must_refuse_never_takes_the_fast_path(text):
    assert _compose_in_c(text) is None
    with pytest.raises(SourceError) as e:
        parse_text(text, "s.yaml")
    assert e.value.problem.code in ("E-YAML-DEPTH", "E-YAML-SIZE")
