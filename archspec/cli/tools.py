"""Commands around a spec: `schema`, `graph`, `export`, `list`, `diff`.

Only `export` imports torch, and only when it runs; the others are as light as `check`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from archspec.cli.common import (
    EXIT_OK,
    EXIT_SPEC,
    check_output_path,
    checked,
    fail,
    finite,
    input_option,
    num_classes_option,
    parse_shape,
    variant_option,
    write_output,
)

# --------------------------------------------------------------------------- schema


@click.command("schema")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="write the schema to this file instead of printing it",
)
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="import this plugin module first, so its ops are in the schema (repeatable)",
)
def schema_cmd(output: str | None, plugins: tuple[str, ...]) -> None:
    """Print the JSON Schema of the spec format (for editors and `jsonschema`).

    Put `# yaml-language-server: $schema=PATH/archspec.schema.json` on a spec's first line and
    VS Code (YAML extension) completes and validates it while you type. Ops of installed plugins
    (the `archspec.plugins` entry points) and of each `--plugin` module are included.
    """
    from archspec.analysis.schema import schema_text
    from archspec.plugins import entry_point_problems, import_plugin

    for problem in [*entry_point_problems(), *map(import_plugin, plugins)]:
        if problem is not None:
            fail(problem.message, problem.help)
    text = schema_text()
    if output is None:
        click.echo(text, nl=False)
        return
    write_output(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    click.echo(f"wrote {output}", err=True)


# --------------------------------------------------------------------------- graph


@click.command("graph")
@click.argument("spec")
@variant_option
@input_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="FILE.dot, .svg, .png or .pdf (pictures need Graphviz); default: DOT on stdout",
)
def graph_cmd(spec: str, variant: str | None, input_shape: str | None, output: str | None) -> None:
    """Draw SPEC: stages as boxes, parallel branches side by side, each layer with its shape."""
    from archspec.analysis import graph

    if output is not None:
        try:
            graph.output_format(output)
        except ValueError as e:
            fail(str(e))
    report = checked(spec, variant, parse_shape(input_shape))
    assert report.network is not None
    dot = graph.to_dot(report.network)
    if output is None:
        click.echo(dot, nl=False)
        return

    def draw(tmp: Path) -> None:
        try:
            graph.write(dot, tmp)
        except graph.GraphvizMissing as e:
            fail(str(e), graph.INSTALL_HINT)
        except RuntimeError as e:  # `dot` failed: its message
            fail(f"cannot write {output}: {e}", code=EXIT_SPEC)

    write_output(output, draw)
    kind = graph.output_format(output)
    click.echo(f"wrote {output} ({kind}, {len(report.layers)} layers)", err=True)


# --------------------------------------------------------------------------- export


@click.command("export")
@click.argument("spec")
@variant_option
@input_option
@num_classes_option
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="load these weights first: model.safetensors, or a .pt state_dict",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript"]),
    default=None,
    help="default: from the output suffix (.onnx, .pt/.ts/.torchscript)",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="file to write"
)
@click.option("--opset", type=click.IntRange(7, 30), help="ONNX opset (default: the exporter's)")
@click.option(
    "--onnx-exporter",
    "exporter",
    type=click.Choice(["dynamo", "legacy"]),
    default="dynamo",
    show_default=True,
    help="torch.export-based exporter, or the older TorchScript-based one",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0),
    callback=finite,
    default=1e-4,
    show_default=True,
    help="largest allowed |difference| between the file's output and PyTorch's",
)
@click.option("--no-verify", is_flag=True, help="skip running the file against PyTorch")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def export_cmd(
    spec: str,
    variant: str | None,
    input_shape: str | None,
    num_classes: int | None,
    weights: str | None,
    fmt: str | None,
    output: str,
    opset: int | None,
    exporter: str,
    tolerance: float,
    no_verify: bool,
    as_json: bool,
) -> None:
    """Export SPEC as ONNX (dynamic batch; checked in onnxruntime) or TorchScript (checked after
    reloading). Exits 1 if the exported file's output differs from PyTorch's by more than
    --tolerance."""
    fmt = fmt or _format_from_suffix(output)
    check_output_path(output)
    shape = parse_shape(input_shape)
    report = checked(spec, variant, shape, num_classes)  # errors printed like `check` does
    from archspec.backend.compile import build_from_report
    from archspec.backend.export import ExportError, export
    from archspec.lang.errors import SpecError

    try:
        model = build_from_report(report, weights=weights)
        result = export(
            model,
            output,
            fmt,
            exporter=exporter,
            opset=opset,
            verify=not no_verify,
            tolerance=tolerance,
        )
    except SpecError as e:  # over the parameter limit, weights that do not fit
        click.echo(e.render(), err=True)
        sys.exit(EXIT_SPEC)
    except ExportError as e:
        fail(e.message, e.help, code=EXIT_SPEC)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    size = f"{result.bytes / 1e6:.1f} MB"
    click.echo(
        f"wrote {output} ({result.format} via {result.method}, {size}, {result.seconds:.1f}s)"
    )
    if result.max_diff is not None:
        runner = "onnxruntime" if result.format == "onnx" else "reloaded TorchScript"
        click.echo(
            f"verified: {runner} vs PyTorch, max |diff| = {result.max_diff:.2e} "
            f"(tolerance {tolerance:g})"
        )


def _format_from_suffix(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".ts", ".torchscript", ".jit"):
        return "torchscript"
    fail(
        f"cannot tell the export format from `{path}`", "pass --format onnx or --format torchscript"
    )


# --------------------------------------------------------------------------- list


@click.command("list")
@click.argument("folder", default="specs", required=False)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def list_cmd(folder: str, as_json: bool) -> None:
    """List the specs under FOLDER (default: specs/) with every variant: params, MACs, status.
    Exits 1 if any spec or variant has errors."""
    from archspec.analysis.catalog import catalog
    from archspec.analysis.diff import columns
    from archspec.analysis.table import human_number

    try:
        exists = Path(folder).exists()
    except OSError as err:  # a name too long
        fail(f"cannot read {folder}: {err.strerror or err}")
    if not exists:
        fail(f"no such folder: {folder}")
    found = catalog(folder)
    bad = sum(1 for e in found if not e.ok)
    if as_json:
        click.echo(json.dumps({"folder": folder, "specs": [e.to_json() for e in found]}))
        sys.exit(EXIT_SPEC if bad else EXIT_OK)
    if not found:
        click.echo(f"no specs (*.yaml) under {folder}")
        return
    base = Path(folder) if Path(folder).is_dir() else Path(folder).parent
    rows = []
    for e in found:
        status = (
            "ok"
            if e.ok
            else f"{len(e.errors)} error{'s' if len(e.errors) > 1 else ''}: {e.errors[0]}"
        )
        rows.append(
            [
                _relative(e.spec, base),
                e.variant or "-",
                e.name,
                "x".join(map(str, e.input or ())) or "?",
                f"{e.params:,}" if e.params is not None else "-",
                human_number(e.macs) if e.macs is not None else "-",
                status[:90],
            ]
        )
    click.echo(
        columns(
            ["spec", "variant", "name", "input", "params", "MACs", "status"], rows, right={4, 5}
        )
    )
    n_specs = len({e.spec for e in found})
    click.echo(
        f"\n{n_specs} spec{'s' if n_specs != 1 else ''}, {len(found)} networks"
        + (f", {bad} with errors" if bad else "")
    )
    sys.exit(EXIT_SPEC if bad else EXIT_OK)


def _relative(path: str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


# --------------------------------------------------------------------------- diff


@click.command("diff")
@click.argument("specs", nargs=-1, required=True)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="with one SPEC: the variant(s) to compare (one: the default against it); "
    "with two: once for both files, or twice, one per file",
)
@input_option
@click.option("--all", "everything", is_flag=True, help="list unchanged layers too")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def diff_cmd(
    specs: tuple[str, ...],
    variants: tuple[str, ...],
    input_shape: str | None,
    everything: bool,
    as_json: bool,
) -> None:
    """Layer-by-layer differences: `diff SPEC --variant A --variant B` or `diff A.yaml B.yaml`.

    Layers are matched by module path and op kind; shows added, removed and changed layers
    (op, output shape, params) and the change in total params and MACs. Exits 0 whatever
    differs."""
    from archspec.analysis.diff import diff_json, diff_layers, layers_of, render

    if len(specs) > 2:
        fail("give one spec (with --variant) or two specs to compare")
    if len(variants) > 2:
        fail("give --variant at most twice")
    if len(specs) == 1:
        if not variants:
            fail(
                "comparing a spec with itself",
                "add --variant A (default vs A) or --variant A --variant B",
            )
        pair = (
            [(specs[0], None), (specs[0], variants[0])]
            if len(variants) == 1
            else [(specs[0], variants[0]), (specs[0], variants[1])]
        )
    else:
        # --variant once: for both files; twice: one per file; never: the defaults.
        vs: list[str | None] = [*variants] * (2 if len(variants) == 1 else 1) or [None, None]
        pair = [(specs[0], vs[0]), (specs[1], vs[1])]
    shape = parse_shape(input_shape)
    ra, rb = (checked(s, v, shape) for s, v in pair)
    rows = diff_layers(layers_of(ra), layers_of(rb))
    if as_json:
        click.echo(json.dumps(diff_json(ra, rb, rows, everything)))
    else:
        click.echo(render(ra, rb, rows, everything))
