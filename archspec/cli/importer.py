"""`archspec import MODULE:CALLABLE`: a PyTorch model -> a spec (imports torch when run)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import click

from archspec.cli.common import EXIT_OK, EXIT_SPEC, fail, parse_shape, write_output

_usage = fail  # every failure before the import itself is a usage error (exit 2)


def load_model(target: str, kwargs_json: str | None):
    """MODULE:CALLABLE (+ JSON kwargs) -> the model; every failure is a usage error (exit 2)."""
    if ":" not in target:
        _usage(f"expected MODULE:CALLABLE (e.g. torchvision.models:resnet50), got {target!r}")
    mod_name, _, attr = target.partition(":")
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        _usage(f"--kwargs is not valid JSON: {e.msg} (column {e.colno})")
    if not isinstance(kwargs, dict):
        _usage("--kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001  # any import failure is the user's target
        _usage(f"cannot import module {mod_name!r}: {type(e).__name__}: {e}")
    finally:
        sys.path.pop(0)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            _usage(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    from torch import nn

    if isinstance(obj, nn.Module):
        if kwargs:
            _usage(f"{target} is a module instance: --kwargs cannot be applied")
        return obj
    if not callable(obj):
        _usage(f"{target} is not callable")
    try:
        model = obj(**kwargs)
    except TypeError as e:
        _usage(f"calling {target} failed: {e}")
    except Exception as e:  # noqa: BLE001
        _usage(f"calling {target} failed: {type(e).__name__}: {e}")
    if not isinstance(model, nn.Module):
        _usage(f"{target} returned {type(model).__name__}, not an nn.Module")
    return model


def guess_input(model) -> tuple[int, ...] | None:
    """[C, 224, 224] from the first convolution's input channels (or [F] from a first linear)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (m.in_channels, 224, 224)
        if isinstance(m, nn.Linear):
            return (m.in_features,)
    return None


@click.command("import")
@click.argument("target", metavar="MODULE:CALLABLE")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="keyword arguments for CALLABLE")
@click.option(
    "--input", "input_shape", metavar="C,H,W", help="input shape to trace with [C,224,224]"
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write the spec here")
@click.option("--name", help="the spec's name [the model's class name]")
@click.option(
    "--partial", is_flag=True, help="write what can be expressed, the rest marked as comments"
)
def import_cmd(
    target: str,
    kwargs_json: str | None,
    input_shape: str | None,
    output: str | None,
    name: str | None,
    partial: bool,
) -> None:
    """Import a PyTorch model as a spec: MODULE:CALLABLE is a class, builder function or
    module instance (torchvision.models:resnet50, mypkg.nets:Net). The spec keeps the model's
    module paths, so its state_dict loads strictly into the built spec."""
    try:
        shape = parse_shape(input_shape)
    except click.BadParameter as e:
        _usage(f"--input: {e.message}")
    model = load_model(target, kwargs_json)
    if shape is None:
        shape = guess_input(model)
        if shape is None:
            _usage("cannot tell the input shape: pass --input C,H,W")
    from archspec.importer import _import

    source = target + (f" with {kwargs_json}" if kwargs_json else "")
    schema = "archspec.schema.json"
    local = Path("docs/archspec.schema.json")
    if local.is_file():  # inside an archspec checkout: the schema the shipped specs use
        start = Path(output).absolute().parent if output else Path.cwd()
        schema = os.path.relpath(local.absolute(), start)
    text, problems = _import(model, shape, name, source, schema)
    for p in problems:
        why = f": {p.why}" if p.why else ""
        click.echo(f"error: cannot express {p.path} ({p.what}){why}", err=True)
    if problems and not partial:
        click.echo("help: --partial writes the rest of the spec with these places marked", err=True)
        sys.exit(EXIT_SPEC)
    if output:
        write_output(output, lambda tmp: tmp.write_text(text))
        click.echo(f"wrote {output}" + (" (partial)" if problems else ""), err=True)
    else:
        click.echo(text, nl=False)
    sys.exit(EXIT_SPEC if problems else EXIT_OK)
