"""`archspec check`: the static check, as a table or one JSON object. Never imports torch."""

from __future__ import annotations

import sys

import click

from archspec.analysis.report import Report, check
from archspec.analysis.table import render_table
from archspec.cli.common import (
    EXIT_USAGE,
    exit_code,
    input_option,
    num_classes_option,
    parse_shape,
    print_errors,
    spec_problem,
    variant_option,
)


@click.command("check")
@click.argument("spec")
@variant_option
@input_option
@num_classes_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
@click.option(
    "--batch", type=click.IntRange(1, 1 << 20), help="add training memory at this batch size"
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="activation dtype for the memory estimate",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "momentum", "adamw"]),
    default="sgd",
    show_default=True,
    help="optimizer whose state the memory estimate counts",
)
@click.option(
    "--outputs",
    "outputs",
    metavar="NAME,NAME,...",
    help="check a feature extractor cut from SPEC: these layers or stages as outputs "
    "(as `build(outputs=...)`)",
)
def check_cmd(
    spec: str,
    variant: str | None,
    input_shape: str | None,
    num_classes: int | None,
    as_json: bool,
    batch: int | None,
    dtype: str,
    optimizer: str,
    outputs: str | None,
) -> None:
    """Check SPEC statically: shapes, parameters, MACs, receptive field, errors."""
    shape = parse_shape(input_shape)
    names = None
    if outputs is not None:
        names = [n.strip() for n in outputs.split(",")]
        if not all(names):
            raise click.BadParameter(
                "give layer or stage names, comma-separated", param_hint="--outputs"
            )
    problem = spec_problem(spec)
    if problem:
        _usage_failure(spec, variant, shape, as_json, problem)
    report = check(spec, variant, shape, num_classes, outputs=names)
    if batch is not None and report.ok and report.network is not None:
        from archspec.analysis.memory import estimate

        report.memory = estimate(report.network, batch, dtype, optimizer)
    if as_json:
        _echo_json(report)
    elif report.ok:
        click.echo(render_table(report))
    if not report.ok and not as_json:
        print_errors(report, spec)
    sys.exit(exit_code(report))


def _usage_failure(
    spec: str, variant: str | None, shape: tuple[int, ...] | None, as_json: bool, message: str
) -> None:
    if as_json:
        from archspec.lang.errors import Diagnostic, Loc

        report = Report(spec, variant, requested_input=shape)
        report.errors = [Diagnostic(Loc(spec), "E-IO", message, None)]
        _echo_json(report)
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _echo_json(report: Report) -> None:
    import json  # here: the table, the usual output, does not need it

    click.echo(json.dumps(report.to_json()))
