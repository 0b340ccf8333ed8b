"""The `archspec` command line (click). `check` never imports torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from archspec.analysis.report import Report, check
from archspec.analysis.table import human_number, render_table

EXIT_OK, EXIT_SPEC, EXIT_USAGE = 0, 1, 2
USAGE_CODES = {"E-VARIANT", "E-IO"}


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"expected C,H,W (e.g. 3,224,224), got {value!r}") from None
    if len(dims) not in (1, 3) or any(d < 1 or d > 65536 for d in dims):
        raise click.BadParameter(f"expected C,H,W with sizes 1..65536, got {value!r}")
    return dims


class Group(click.Group):
    """Turns any unexpected exception into a one-line error instead of a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001  # last line of defence: never a traceback for a user
            click.echo(f"error: internal error: {type(e).__name__}: {e}", err=True)
            click.echo("help: please report this with the spec that caused it", err=True)
            sys.exit(EXIT_SPEC)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archspec")
def main() -> None:
    """Declarative architecture specs for PyTorch: check, build, train."""


@main.command("check")
@click.argument("spec")
@click.option("--variant", help="named variant of the spec")
@click.option("--input", "input_shape", metavar="C,H,W", help="override the input shape")
@click.option("--num-classes", type=click.IntRange(1, 1 << 20), help="override num_classes")
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
def check_cmd(
    spec: str,
    variant: str | None,
    input_shape: str | None,
    num_classes: int | None,
    as_json: bool,
    batch: int | None,
    dtype: str,
    optimizer: str,
) -> None:
    """Check SPEC statically: shapes, parameters, MACs, receptive field, errors."""
    shape = parse_shape(input_shape)
    if not Path(spec).is_file():
        _usage_failure(spec, variant, shape, as_json, f"no such spec file: {spec}")
    report = check(spec, variant=variant, input_shape=shape, num_classes=num_classes)
    if batch is not None and report.ok and report.network is not None:
        from archspec.analysis.memory import estimate

        report.memory = estimate(report.network, batch, dtype, optimizer)
    code = EXIT_OK if report.ok else EXIT_SPEC
    if any(d.code in USAGE_CODES for d in report.errors):
        code = EXIT_USAGE
    if as_json:
        click.echo(json.dumps(report.to_json()))
    elif report.ok:
        click.echo(render_table(report))
    if not report.ok and not as_json:
        click.echo(report.render_errors(), err=True)
        n = len(report.errors)
        click.echo(f"\n{n} error{'s' if n != 1 else ''} in {spec}", err=True)
    sys.exit(code)


def _usage_failure(spec: str, variant: str | None, shape, as_json: bool, message: str) -> None:
    if as_json:
        report = Report(spec, variant, requested_input=shape)
        from archspec.lang.errors import Diagnostic, Loc

        report.errors = [Diagnostic(Loc(spec), "E-IO", message, None)]
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _register_commands() -> None:
    """The other commands live in modules of their own; importing them stays torch-free (torch
    is imported inside the commands that need it), so `archspec check` stays light."""
    from archspec.cli import importer as import_cli
    from archspec.cli import tools as tools_cli
    from archspec.cli import train as train_cli

    for cmd in (
        train_cli.train,
        train_cli.eval_cmd,
        tools_cli.schema_cmd,
        tools_cli.graph_cmd,
        tools_cli.export_cmd,
        tools_cli.list_cmd,
        tools_cli.diff_cmd,
        import_cli.import_cmd,
    ):
        main.add_command(cmd)


_register_commands()
__all__ = ["human_number", "main"]
