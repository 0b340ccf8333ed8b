"""The JSON Schema of the spec format: in sync with the code, takes every spec, refuses typos."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from archspec.analysis.schema import build_schema, schema_text
from archspec.cli import main
from archspec.lower import COMBINATORS, REPEAT_KEYS
from archspec.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "archspec.schema.json"
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
MODELINE = "# yaml-language-server: $schema="


def load(path: Path) -> dict:
    """The spec as a YAML language server sees it: JSON data (mapping keys are strings)."""
    return json.loads(json.dumps(YAML(typ="safe").load(path.read_text())))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = build_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_committed_schema_is_the_generated_one():
    assert COMMITTED.read_text() == schema_text(), (
        "docs/archspec.schema.json is stale: run `archspec schema -o docs/archspec.schema.json`"
    )


def test_schema_command_prints_and_writes_it(tmp_path):
    runner = CliRunner()
    printed = runner.invoke(main, ["schema"])
    assert printed.exit_code == 0
    assert json.loads(printed.output) == build_schema()
    out = tmp_path / "s.json"
    written = runner.invoke(main, ["schema", "-o", str(out)])
    assert written.exit_code == 0 and out.read_text() == schema_text()


def test_there_are_specs_to_check():
    names = {p.name for p in SPECS}
    assert {"lenet.yaml", "googlenet.yaml", "resnet18.yaml", "vgg.yaml"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "specs")))
def test_every_spec_validates(validator, path):
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(load(path))
    ]
    assert not errors, errors


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "specs")))
def test_every_spec_names_the_schema_on_its_first_line(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(MODELINE), f"{path.name}: first line should be {MODELINE}..."
    target = (path.parent / first[len(MODELINE) :].strip()).resolve()
    assert target == COMMITTED, f"{path.name} points at {target}"


def googlenet() -> dict:
    return load(ROOT / "specs" / "googlenet.yaml")


def resnet() -> dict:
    return load(ROOT / "specs" / "resnet18.yaml")


def _typo_top(d):
    d["stagse"] = d.pop("stages")


def _typo_conv_param(d):
    d["stages"]["b1"][0] = {"conv": {"ot": 64, "k": 7}}


def _typo_conv_param_in_template(d):
    d["templates"]["inception"]["parallel"]["branches"]["p1"][0]["conv"]["strde"] = 2


def _typo_parallel_option(d):
    d["templates"]["inception"]["parallel"]["mrege"] = "concat"


def _wrong_type(d):
    d["stages"]["b1"][0] = {"conv": {"out": "sixty-four", "k": 7}}


def _bad_merge(d):
    d["templates"]["inception"]["parallel"]["merge"] = "sum"


def _typo_repeat_key(r):
    r["stages"]["b2"]["wiht"] = r["stages"]["b2"].pop("with")


def _typo_residual_key(r):
    r["templates"]["residual"]["residual"]["shortcutt"] = "auto"


def _typo_variant_key(r):
    r["variants"]["resnet34"]["stagse"] = r["variants"]["resnet34"].pop("stages")


def _unknown_default_op(r):
    r["defaults"] = {"batchnorm": {"eps": 0.001}}


def _template_call_with_list_args(r):
    r["stages"]["b2"] = {"residual": [64]}


@pytest.mark.parametrize(
    "base, mutate",
    [
        (googlenet, _typo_top),
        (googlenet, _typo_conv_param),
        (googlenet, _typo_conv_param_in_template),
        (googlenet, _typo_parallel_option),
        (googlenet, _wrong_type),
        (googlenet, _bad_merge),
        (resnet, _typo_repeat_key),
        (resnet, _typo_residual_key),
        (resnet, _typo_variant_key),
        (resnet, _unknown_default_op),
        (resnet, _template_call_with_list_args),
    ],
    ids=lambda f: f.__name__,
)
def test_a_typo_fails_validation(validator, base, mutate):
    doc = base()
    assert validator.is_valid(doc)
    mutate(doc)
    assert not validator.is_valid(doc)


def test_template_calls_and_expressions_are_allowed(validator):
    doc = googlenet()
    doc["templates"]["pair"] = {
        "params": {"c": "int", "k": {"type": "any", "default": 3}},
        "body": [{"conv": {"out": "$c * 2", "k": ["$k", 1], "pad": "same"}}, "relu"],
    }
    doc["stages"]["b2"] = [
        {"pair": {"c": 32}},
        "pair",
        {"pair": None, "name": "again"},
        {"repeat": "$n", "use": "pair", "at": {"-1": {"c": 8}}, "prefix": "p"},
        {"seq": {"layers": ["relu"], "inline": True}},
        {"dense": {"repeat": 2, "body": ["bn", {"conv": {"out": 4, "k": 1}}]}},
        {"residual": {"main": ["relu"], "shortcut": "identity", "post": None}},
    ]
    assert validator.is_valid(doc), [e.message for e in validator.iter_errors(doc)]


def _walk(node, where="#"):
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            yield f"{where}/properties/{key}", sub
        for key, sub in node.items():
            yield from _walk(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _walk(sub, f"{where}/{i}")


def test_every_field_has_a_description():
    missing = [
        where
        for where, sub in _walk(build_schema())
        if "description" not in sub and "$ref" not in sub
    ]
    assert not missing, missing


def test_every_op_and_combinator_is_described():
    defs = build_schema()["$defs"]
    for op in OPS:
        assert defs[f"op.{op}"]["description"].startswith(f"`{op}`")
        assert defs[f"op.{op}"]["properties"]["name"]
    for comb in COMBINATORS:
        assert "see the language docs" not in defs[f"comb.{comb}"]["description"], (
            f"describe the `{comb}` combinator in archspec/schema.py"
        )
    repeat = defs["repeat"]["properties"]
    assert set(repeat) == REPEAT_KEYS | {"from", "merge"}  # a repeat may read earlier outputs
    assert all("see the language docs" not in v.get("description", "") for v in repeat.values())


def test_examples_are_valid_layers(validator):
    """The examples an editor offers must themselves validate."""
    defs = build_schema()["$defs"]
    for name, d in defs.items():
        for example in d.get("examples", []):
            if name.startswith("op."):
                doc = {"name": "x", "input": [3, 8, 8], "stages": {"s": {name[3:]: example}}}
            elif name.startswith("comb.") or name == "repeat":
                key = name[5:] if name.startswith("comb.") else None
                doc = {
                    "name": "x",
                    "input": [3, 8, 8],
                    "stages": {"s": {key: example} if key else example},
                }
            else:
                continue
            errors = [e.message for e in validator.iter_errors(doc)]
            assert not errors, (name, example, errors)
    top = build_schema()["properties"]
    for key, sub in top.items():
        for example in sub.get("examples", []):
            doc = {"name": "x", "input": [3, 8, 8], "stages": {"s": ["relu"]}, key: example}
            assert validator.is_valid(doc), (
                key,
                example,
                [e.message for e in validator.iter_errors(doc)],
            )


def test_a_typo_in_a_stage_fails_in_a_copy_of_every_spec(validator):
    """Beyond hand-picked cases: misspell `stages` in each real spec; each must then fail."""
    for path in SPECS:
        doc = load(path)
        bad = copy.deepcopy(doc)
        bad["stage"] = bad.pop("stages")
        assert not validator.is_valid(bad), path
