"""The `archspec` command group. Each command lives in a module of its own under `cli/`, imports
only `cli.common` of the CLI (no cycles) and no torch at import time (torch is imported inside
the commands that need it, so `archspec check` stays light). A command's module is imported only
when that command runs (or `--help` lists it): every command is a fresh process, and `check`
should not pay for loading `train`. Adding a command is one line in COMMANDS below."""

from __future__ import annotations

import errno
import os
import sys
from importlib import import_module
from typing import Any

import click

from archspec.cli.common import EXIT_SPEC

# name -> "module:attribute" of its click command, in the order `--help` lists them
COMMANDS: dict[str, str] = {
    "check": "archspec.cli.check:check_cmd",
    "train": "archspec.cli.train:train",
    "eval": "archspec.cli.train:eval_cmd",
    "schema": "archspec.cli.tools:schema_cmd",
    "graph": "archspec.cli.tools:graph_cmd",
    "export": "archspec.cli.tools:export_cmd",
    "list": "archspec.cli.tools:list_cmd",
    "diff": "archspec.cli.tools:diff_cmd",
    "import": "archspec.cli.importer:import_cmd",
    "lsp": "archspec.cli.lsp:lsp_cmd",
}


class Group(click.Group):
    """Loads each command's module on first use (click's lazy-group pattern), turns any
    unexpected exception into a one-line error instead of a traceback, and a failed write to
    stdout (a full device, a closed pipe) into one line and exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in self.commands:
            module, attr = COMMANDS[cmd_name].split(":")
            command = getattr(import_module(module), attr)
            assert command.name == cmd_name, (cmd_name, command.name)
            self.commands[cmd_name] = command
        return self.commands[cmd_name]

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


def commands() -> dict[str, click.Command]:
    """Every command, loaded (for the generated CLI reference)."""
    ctx = click.Context(main, info_name="archspec")
    return {name: cmd for name in main.list_commands(ctx) if (cmd := main.get_command(ctx, name))}
