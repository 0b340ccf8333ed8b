"""What every command shares: exit codes, how an error is printed, the spec argument and the
options several commands take. Imports no torch and nothing else of the CLI, so any command
module can import it (and only it) without a cycle.

Exit status, for every command (docs/cli.md): 0 success, 1 the spec or the result has
errors, 2 a usage error (a missing or unreadable file, an unknown variant, a bad option).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from archspec.analysis.report import Report

EXIT_OK, EXIT_SPEC, EXIT_USAGE = 0, 1, 2
USAGE_CODES = frozenset({"E-VARIANT", "E-IO"})  # spec diagnostics that are usage errors


def fail(
    message: str, help: str | None = None, code: int = EXIT_USAGE, *, every_rank: bool = False
) -> NoReturn:
    """Print ``error: message`` (and ``help: ...``) on stderr and exit with ``code``.

    Under torchrun an error that every rank meets alike (the spec, the data, a diverged run) is
    printed by rank 0 alone; pass ``every_rank`` for one of a rank's own, which that rank
    prints under its name."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or every_rank:
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        name = f"rank {rank}: " if several and (rank or every_rank) else ""
        click.echo(f"error: {name}{message}", err=True)
        if help:
            click.echo(f"help: {help}", err=True)
    sys.exit(code)


def spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot be read as a spec file, or None: it must be an existing regular file
    (a directory or a FIFO is said to be one, not "no such file"; a FIFO would block)."""
    try:
        mode = os.stat(spec).st_mode
    except FileNotFoundError:
        return f"no such spec file: {spec}"
    except OSError as e:
        return f"cannot read spec {spec}: {e.strerror or e}"
    if stat.S_ISDIR(mode):
        return f"{spec} is a directory, not a spec file"
    if not stat.S_ISREG(mode):
        return f"{spec} is not a regular file (a FIFO, socket or device); pass a spec file"
    return None


def require_spec(spec: str) -> None:
    problem = spec_problem(spec)
    if problem:
        fail(problem)


def print_errors(report: Report, spec: str) -> None:
    click.echo(report.render_errors(), err=True)
    n = len(report.errors)
    click.echo(f"\n{n} error{'s' if n != 1 else ''} in {spec}", err=True)


def exit_code(report: Report) -> int:
    if report.ok:
        return EXIT_OK
    return EXIT_USAGE if any(d.code in USAGE_CODES for d in report.errors) else EXIT_SPEC


def checked(
    spec: str,
    variant: str | None = None,
    shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> Report:
    """Check a spec; on errors print them the way `check` does and exit (1, or 2 for usage)."""
    from archspec.analysis.report import check

    require_spec(spec)
    report = check(spec, variant=variant, input_shape=shape, num_classes=num_classes)
    if not report.ok:
        if int(os.environ.get("RANK", "0")) == 0:
            print_errors(report, spec)
        sys.exit(exit_code(report))
    return report


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"expected C,H,W (e.g. 3,224,224), got {value!r}") from None
    if len(dims) not in (1, 2, 3) or any(d < 1 or d > 65536 for d in dims):
        raise click.BadParameter(f"expected C,H,W (or L,D or F) with sizes 1..65536, got {value!r}")
    return dims


def finite(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: refuse NaN and infinity (click's FloatRange lets NaN through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"expected a finite number, got {value}")
    return value


def write_output(path: str, write: Callable[[Path], object]) -> None:
    """Write a command's output file through ``write(tmp)`` atomically (`archspec.files`): the
    previous file is kept if anything fails. A missing folder or a failed write is one line
    naming the file, exit 2."""
    from archspec.files import atomic_path

    check_output_path(path)
    try:
        with atomic_path(path, suffix=Path(path).suffix or ".tmp") as tmp:
            write(tmp)
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror or e}", code=write_failure_code(e))


# a path the user chose that cannot be written is a usage error; a full disk, an I/O error is not
_PATH_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
        errno.EROFS,
        errno.ELOOP,
    }
)


def write_failure_code(e: OSError) -> int:
    return EXIT_USAGE if e.errno in _PATH_ERRNOS else EXIT_SPEC


def check_output_path(path: str) -> None:
    """Refuse (exit 2) an output file in a folder that does not exist, or that is a folder."""
    target = Path(path)
    try:
        if target.is_dir():
            fail(f"cannot write {path}: it is a directory")
        if not target.parent.is_dir():
            what = "does not exist" if not target.parent.exists() else "is not a directory"
            fail(f"cannot write {path}: the directory {target.parent} {what}")
    except OSError as e:  # a name too long, a loop of links
        fail(f"cannot write {path}: {e.strerror or e}")


MAX_CLASSES = 1 << 20
variant_option = click.option("--variant", help="named variant of the spec")
input_option = click.option(
    "--input", "input_shape", metavar="C,H,W", help="override the input shape"
)
num_classes_option = click.option(
    "--num-classes", type=click.IntRange(1, MAX_CLASSES), help="override num_classes"
)
