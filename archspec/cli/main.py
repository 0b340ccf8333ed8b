"""The `archspec` command group. Each command lives in a module of its own under `cli/`, imports
only `cli.common` of the CLI (no cycles) and no torch at import time (torch is imported inside
the commands that need it, so `archspec check` stays light). Adding a command is one line in
COMMANDS below."""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from archspec.cli import check, importer, lsp, tools, train
from archspec.cli.common import EXIT_SPEC

COMMANDS: list[click.Command] = [
    check.check_cmd,
    train.train,
    train.eval_cmd,
    tools.schema_cmd,
    tools.graph_cmd,
    tools.export_cmd,
    tools.list_cmd,
    tools.diff_cmd,
    importer.import_cmd,
    lsp.lsp_cmd,
]


class Group(click.Group):
    """Turns any unexpected exception into a one-line error instead of a traceback, and a
    failed write to stdout (a full device, a closed pipe) into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            if _stdout_failed(e):
                _stdout_error(e)
            raise_internal(e)
        except Exception as e:  # noqa: BLE001  # last line of defence: never a traceback for a user
            raise_internal(e)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        finally:  # what click.echo left buffered is written here, not at interpreter exit
            try:
                sys.stdout.flush()
            except OSError as e:
                _stdout_error(e)


def raise_internal(e: BaseException) -> None:
    click.echo(f"error: internal error: {type(e).__name__}: {e}", err=True)
    click.echo("help: please report this with the spec that caused it", err=True)
    sys.exit(EXIT_SPEC)


def _stdout_failed(e: OSError) -> bool:
    return e.filename is None and e.errno in (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EDQUOT)


def _stdout_error(e: OSError) -> None:
    """stdout cannot be written: say so on stderr and exit 1 (a closed pipe, as `head` does,
    exits quietly). stdout is pointed at /dev/null first so the interpreter's own final flush
    does not fail again."""
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), sys.stdout.fileno())
    if e.errno != errno.EPIPE:
        click.echo(f"error: cannot write to standard output: {e.strerror or e}", err=True)
    os._exit(EXIT_SPEC)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archspec")
def main() -> None:
    """Declarative architecture specs for PyTorch: check, build, train."""


for command in COMMANDS:
    main.add_command(command)
