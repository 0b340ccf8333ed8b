"""`archspec train` and `archspec eval`.

Importing this module must stay cheap and torch-free (`archspec check` imports the CLI), so
torch and the runner are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from archspec.cli.common import (
    EXIT_SPEC,
    EXIT_USAGE,
    checked,
    fail,
    finite,
    input_option,
    num_classes_option,
    parse_shape,
    variant_option,
)

MAX_SEED = (1 << 64) - 1  # as run/recipe.py (not imported here: it imports torch)
DATA_HELP = (
    "mnist-mini (embedded, default), mnist, fashion-mnist, cifar10, "
    "a Keras-style .npz, or an image folder with train/ and val/"
)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "none")


def _fail(message: str, code: int = EXIT_SPEC, *, every_rank: bool = False) -> NoReturn:
    """A run's errors exit 1 unless said otherwise (see `common.fail`)."""
    fail(message, None, code, every_rank=every_rank)


def _check_spec(
    spec: str, variant: str | None, input_shape: str | None, num_classes: int | None
) -> Any:
    """The spec's report; errors are printed as the compiler renders them."""
    report = checked(spec, variant, parse_shape(input_shape), num_classes)
    if report.input is None or len(report.input) != 3:
        _fail(f"{spec}: training needs an image input C,H,W (got {report.input})")
    if report.outputs is not None:
        fail(
            f"{spec}: it returns several outputs ({', '.join(report.outputs)}); "
            "train needs one output, the class scores",
            "train the network the outputs are cut from, or a spec with one head",
            EXIT_SPEC,
        )
    return report


def _run_name(name: str, variant: str | None) -> str:
    """The folder name of a run under runs/: the spec's name and variant made safe as one
    path component (a name such as `../../x` or `a/b` must not pick a folder outside runs/)."""
    import re

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._-")[:80] or "spec"

    return f"{safe(name)}-{safe(variant or 'base')}"


def _out_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--out: not empty (that would silently mean the current folder), and a name the
    system can hold."""
    if value is None:
        return value
    if not value.strip():
        raise click.BadParameter("an empty path; pass a folder (or leave --out out for runs/)")
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(".", "PC_NAME_MAX")
    long = [part for part in Path(value).parts if len(os.fsencode(part)) > limit]
    if long or len(os.fsencode(value)) >= 4096:
        what = f"the name {long[0][:40]}... is" if long else "the path is"
        raise click.BadParameter(f"{what} too long for the file system")
    return value


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def _latest_run(name: str) -> Path | None:
    runs = sorted(Path("runs").glob(f"{name}-*/checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def _os_error(e: OSError, run: Path) -> str:
    """One line for a failed write (or read) of a run, and whether its checkpoint survived:
    writes are atomic, so a full disk leaves the last checkpoint as it was."""
    from archspec.run.checkpoint import CheckpointError, load

    text = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    try:
        state = load(run / "checkpoint.pt")
    except CheckpointError:
        return f"{text}; no usable checkpoint in {run}"
    fix = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    return (
        f"{text}; the last checkpoint (epoch {state.get('epoch')} step "
        f"{state.get('step_in_epoch')}) in {run} is intact: {fix} and continue with --resume"
    )


def _data(source: str, root: str | None, download: bool, report: Any) -> Any:
    from archspec.run.data import DataError, load

    try:
        data = load(source, root, download, input_shape=tuple(report.input))
    except DataError as e:
        _fail(str(e))
    if report.num_classes is not None and data.num_classes != report.num_classes:
        _fail(
            f"the spec {report.name} has num_classes {report.num_classes} but the data "
            f"{data.name} has {data.num_classes} classes; pass --num-classes "
            f"{data.num_classes} or use a spec made for this data"
        )
    return data


def _build(report: Any, num_classes: int) -> Any:
    """The model of the checked report (the spec is not read again)."""
    import archspec
    from archspec.backend.compile import build_from_report

    try:
        model = build_from_report(report)
    except archspec.SpecError as e:
        click.echo(str(e), err=True)
        sys.exit(EXIT_SPEC)
    if model.num_classes is None:  # a spec that leaves it to the data
        model.num_classes = num_classes
    return model


def _load_weights(model: Any, path: str) -> dict[str, Any]:
    """`--init` / `--weights`: the one loading path (backend/weights.py), strict."""
    import archspec
    from archspec.backend.weights import load_weights

    try:
        return load_weights(model, path)
    except archspec.SpecError as e:
        click.echo(str(e), err=True)
        sys.exit(EXIT_SPEC)


def _dump_spec(report: Any, spec: str, path: Path) -> None:
    from ruamel.yaml import YAML

    from archspec.run import distributed
    from archspec.run.checkpoint import write_atomic

    if not distributed.world().main:
        return

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(
                f"# resolved from {spec}"
                f"{' --variant ' + report.variant if report.variant else ''}"
                f" (spec hash {report.spec_hash})\n"
            )
            yaml.dump(report.resolved, f)

    write_atomic(path, write)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from archspec.run.checkpoint import CheckpointError
    from archspec.run.data import DataError
    from archspec.run.rundir import TrainError

    return (CheckpointError, DataError, TrainError)


def _oom(e: BaseException, batch_size: int, device: Any) -> NoReturn:
    smaller = max(1, batch_size // 2)
    _fail(
        f"out of memory on {device} at batch size {batch_size}; "
        f"try --batch-size {smaller} ({str(e).splitlines()[0][:120]})",
        every_rank=True,
    )


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


class _BatchSize(click.ParamType):
    """A positive integer, or `auto`."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"expected a positive integer or 'auto', got {value!r}", param, ctx)
        return n


def _plan_batch(
    report: Any, recipe: Any, dev: Any, loaded: Any, auto: bool, ranks: int = 1, bf16: bool = False
) -> Any:
    """`--batch-size auto` from the static memory estimate (docs/memory.md), or a warning before
    the first step when the given batch size is estimated not to fit. Under torchrun the
    estimate is per process, and the global batch is ``ranks`` times its share."""
    import dataclasses

    from archspec.analysis.memory import DEFAULT_MARGIN, auto_batch_size, available_bytes, estimate
    from archspec.analysis.table import human_bytes
    from archspec.run.loop import _budget

    # the runner's step: bf16 autocast where `uses_bf16` says so, else float32; SGD has momentum
    dtype = "bfloat16" if bf16 else "float32"
    optimizer = "adamw" if recipe.optimizer == "adamw" else "momentum"
    free = available_bytes(str(dev))
    # the runner keeps the data set resident on the device when it fits its budget
    data = sum(s.x.nbytes for s in (loaded.train, loaded.test) if getattr(s, "x", None) is not None)
    free = max(0, free - min(data, _budget(dev)))
    where = f"{human_bytes(free)} free on {dev}"
    if auto:
        limit = max(1, len(loaded.train) // ranks)  # no bigger than the data set
        bs = auto_batch_size(report.network, free, dtype, optimizer, device=dev.type, limit=limit)
        if bs == 0:
            _fail(f"--batch-size auto: not even batch size 1 is estimated to fit in {where}")
        peak = estimate(report.network, bs, dtype, optimizer, dev.type).peak_bytes
        each = f" ({bs} per process)" if ranks > 1 else ""
        click.echo(
            f"--batch-size auto: {bs * ranks}{each} (estimated peak {human_bytes(peak)} of {where})",
            err=True,
        )
        return dataclasses.replace(recipe, batch_size=bs * ranks)
    share = max(1, recipe.batch_size // ranks)
    peak = estimate(report.network, share, dtype, optimizer, dev.type).peak_bytes
    if peak > DEFAULT_MARGIN * free:
        click.echo(
            f"warning: batch size {share} is estimated to need {human_bytes(peak)} "
            f"per training step, more than {DEFAULT_MARGIN:.0%} of the {where}; it may run out "
            "of memory (try --batch-size auto)",
            err=True,
        )
    return recipe


def _data_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("--data", default=None, metavar="NAME|PATH", help=f"{DATA_HELP}."),
            click.option(
                "--data-root",
                type=click.Path(file_okay=False),
                default=None,
                help="where torchvision data sets live "
                "[default: $ARCHSPEC_DATA_ROOT or ~/.cache/archspec/data]",
            ),
            click.option("--download", is_flag=True, help="fetch a torchvision data set if absent"),
            click.option(
                "--device",
                type=click.Choice(["auto", "cpu", "cuda"]),
                default="auto",
                show_default=True,
            ),
            variant_option,
            input_option,
            num_classes_option,
        ]
    ):
        f = opt(f)
    return f


@click.command("train")
@click.argument("spec")
@_data_options
@click.option("--epochs", type=click.IntRange(1), help="[default: 20]")
@click.option(
    "--batch-size",
    type=_BatchSize(),
    help="images per step, or `auto`: the largest power of two whose estimated "
    "training memory fits the device [default: 64]",
)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    callback=finite,
    help="peak learning rate [default: 5e-3 adamw; sgd 0.1 at batch 64, scaled with the batch size]",
)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="[default: adamw]")
@click.option(
    "--weight-decay",
    type=click.FloatRange(0),
    callback=finite,
    help="[default: 0.05 adamw, 5e-4 sgd; never on biases and norms]",
)
@click.option("--schedule", type=click.Choice(SCHEDULES), help="[default: onecycle]")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="[default: 0]")
@click.option(
    "--max-steps",
    type=click.IntRange(1),
    help="train this many steps in all (the schedule spans them)",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    callback=_out_option,
    help="run directory [default: runs/<spec>-<variant>-<time>]",
)
@click.option(
    "--resume",
    is_flag=True,
    help="continue the run in --out (default: the latest run of this spec) from its checkpoint; "
    "a run killed before its first checkpoint starts over with the recipe in its config.json",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    help="start from the weights in a state_dict file (a torchvision .pth), loaded strictly",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model")
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "float32"]),
    default="auto",
    show_default=True,
    help="auto: bf16 autocast on CUDA, float32 on a CPU (bf16 pays on CPUs with AMX: "
    "1.2-1.8x); weights and optimizer state stay float32",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1 << 16),
    default=None,
    help="torch threads on a CPU [default: all; for a small model the faster of 1 and all, "
    "timed at the start; OMP_NUM_THREADS when set]",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="no progress output (else: a bar per epoch on a terminal; in a log, a line per epoch "
    "and one every 30 s within it)",
)
@click.option(
    "--nproc",
    type=click.IntRange(1, 1 << 12),
    default=1,
    show_default=True,
    help="train data-parallel on N processes of this machine (one per GPU; gloo on CPU) by "
    "starting torchrun; --batch-size stays the global batch",
)
@click.option(
    "--sync-bn",
    is_flag=True,
    help="with several processes on CUDA: BatchNorm normalises with the global batch's statistics",
)
@click.option(
    "--dist-timeout",
    type=click.IntRange(1, 1 << 31),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="with several processes: how long a rank waits for the others before failing",
)
def train(nproc: int, sync_bn: bool, dist_timeout: int, **options: Any) -> None:
    """Train SPEC (on CUDA when there is one) and write the run to --out.

    Writes metrics.jsonl, curves.png, model.safetensors, checkpoint.pt, spec.yaml and
    config.json. SIGINT / SIGTERM save a checkpoint and stop; --resume continues exactly.
    Under torchrun, or with --nproc, trains on several processes (docs/distributed.md)."""
    dev = _device(options.pop("device"))
    if sync_bn and dev.type != "cuda":
        raise click.UsageError("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernels)")
    if nproc > 1:
        _launch(nproc, dev, options)

    from archspec.run import distributed

    try:
        try:
            with distributed.session(dev, dist_timeout) as rank_device:
                status = _train(dev=rank_device, sync_bn=sync_bn, **options)
        except distributed.DistributedError as e:
            _fail(str(e))
        except RuntimeError as e:
            if not distributed.lost_peer(e):
                raise
            _fail(
                f"lost contact with the other processes ({str(e).strip().splitlines()[0][:160]}); "
                "another rank failed or was killed: its message says why",
                every_rank=True,
            )
    except SystemExit as e:
        if distributed.launched():
            _worker_exit(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
        raise
    if distributed.launched():
        _worker_exit(status)
    if status:
        sys.exit(status)


def _worker_exit(code: int) -> NoReturn:
    """A torchrun worker ends with os._exit once its files are written and closed: gloo's
    threads can still be joinable when the interpreter tears down its C++ objects, and the
    process then aborts ("terminate called without an active exception"), failing a run that
    has finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _given_args() -> list[str]:
    """This `archspec train` command line as the user gave it (defaults left out), less
    --nproc: what each worker runs."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    args: list[str] = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name or "")
        if p.name == "nproc" or source in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[p.name or ""]
        if isinstance(p, click.Argument):
            args.insert(0, str(value))
        elif isinstance(p, click.Option) and p.is_flag:
            args += [p.opts[0]] if value else []
        else:
            args += [p.opts[0], str(value)]
    return args


def _cause(failure: tuple[int, Any]) -> tuple[int, float]:
    """Sort key of torchrun's failed ranks, the cause first: a rank killed from outside, then
    one that exited with an error, last those ended by SIGTERM (how torchrun stops the rest)."""
    code = failure[1].exitcode
    order = 0 if code < 0 and code != -signal.SIGTERM else 1 if code > 0 else 2
    return order, failure[1].timestamp


def _launch(nproc: int, dev: Any, options: dict[str, Any]) -> NoReturn:
    """`--nproc N`: this command as N workers of torchrun on this machine. torchrun runs in
    this process, so a failed or killed worker becomes one line and an exit status."""
    import torch
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from archspec.run import distributed

    if distributed.launched():
        raise click.UsageError("--nproc starts torchrun: under torchrun, leave it out")
    if dev.type == "cuda" and nproc > torch.cuda.device_count():
        raise click.UsageError(
            f"--nproc {nproc}: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    bs = options.get("batch_size")
    if isinstance(bs, int) and bs % nproc:
        raise click.UsageError(
            f"--batch-size {bs} is the global batch: it must split evenly over --nproc {nproc}"
        )
    _check_spec(options["spec"], options["variant"], options["input_shape"], options["num_classes"])
    # torchrun would set 1 (and say so); the machine's cores shared out is what it means
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "archspec", "train"]
        + _given_args()
    )
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        rank, f = min(e.failures.items(), key=_cause)
        how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with {f.exitcode}"
        _fail(
            f"rank {rank} (pid {f.pid}) {how}; the run is stopped (the other ranks were ended)",
            f.exitcode if f.exitcode > 0 else 1,
        )
    except SignalException as e:  # forwarded to the workers, which saved a checkpoint
        sys.exit(128 + int(e.sigval))
    sys.exit(0)


def _run_directory(out: str | None, resume: bool, run_name: str) -> tuple[Any, bool, Any]:
    """Where the run goes, whether it resumes, and the recipe it starts from (before the
    options given): --out, or with --resume and no --out the latest run of this spec, or a
    new folder under runs/. A run killed before its first checkpoint starts over with the
    recipe in its config.json, so one command line (`--resume --out DIR`) both starts and
    continues a preemptible run. The folder is checked before any data is read."""
    from archspec.run import distributed
    from archspec.run.recipe import Recipe
    from archspec.run.rundir import RunDir, RunDirError, saved_recipe

    restart = bool(resume and out and not (Path(out) / "checkpoint.pt").exists())
    if restart:
        run = Path(str(out))
    elif resume:
        latest = Path(out) if out else _latest_run(run_name)
        if latest is None or not (latest / "checkpoint.pt").exists():
            raise click.UsageError(f"--resume: no checkpoint in {latest or f'runs/{run_name}-*'}")
        run = latest
    else:
        stamp = distributed.from_main(lambda: time.strftime("%Y%m%d-%H%M%S"))  # one for all ranks
        run = Path(out) if out else Path("runs") / f"{run_name}-{stamp}"
        if (run / "checkpoint.pt").exists():
            raise click.UsageError(
                f"{run} already holds a run: pass --resume to continue it or choose another --out"
            )
    rundir = RunDir(run)
    try:
        rundir.check()  # a refused --out fails fast, before the data is read
    except RunDirError as e:
        _fail(str(e), EXIT_USAGE)
    if restart:
        click.echo(
            f"--resume: no checkpoint in {run} yet; starting the run from the beginning", err=True
        )
        return rundir, False, rundir.started_recipe()
    if not resume:
        return rundir, False, Recipe()
    try:
        saved = saved_recipe(run)
    except _runtime_errors() as e:
        _fail(str(e))
    return rundir, True, saved or Recipe()


def _train(
    spec: str,
    data: str | None,
    data_root: str | None,
    download: bool,
    dev: Any,
    variant: str | None,
    input_shape: str | None,
    num_classes: int | None,
    out: str | None,
    resume: bool,
    init: str | None,
    compile_: bool,
    quiet: bool,
    sync_bn: bool,
    threads: int | None,
    precision: str,
    **recipe_options: Any,
) -> int:
    """The run; its exit status (128 + the signal that stopped it), returned rather than
    exited with so that all ranks leave the process group together."""
    report = _check_spec(spec, variant, input_shape, num_classes)
    if init is not None and resume:
        raise click.UsageError(
            "--init starts a new run from weights, --resume continues one: pass one"
        )
    run_name = _run_name(report.name, report.variant)

    import torch

    from archspec.run import distributed
    from archspec.run.data import DataError
    from archspec.run.loop import Settings, fit
    from archspec.run.recipe import Recipe, uses_bf16
    from archspec.run.rundir import RunDirError

    errors = _runtime_errors()
    given = {k: v for k, v in {**recipe_options, "data": data}.items() if v is not None}
    rundir, resume, base = _run_directory(out, resume, run_name)
    run = rundir.path
    auto_batch = given.get("batch_size") == "auto"
    if auto_batch:  # sized below, once the device and the data set are known
        del given["batch_size"]
    recipe = Recipe(**{**base.__dict__, **given})
    try:
        recipe.validate()
    except ValueError as e:  # e.g. a hand-edited config.json of a run to restart
        _fail(f"invalid recipe: {e}", EXIT_USAGE)

    load = distributed.main_first if download else lambda fn: fn()
    loaded = load(lambda: _data(recipe.data, data_root, download, report))
    torch.manual_seed(recipe.seed)
    model = _build(report, report.num_classes or loaded.num_classes)
    if init is not None:
        _load_weights(model, init)
    w = distributed.world()
    recipe = distributed.from_main(
        lambda: _plan_batch(
            report,
            recipe,
            dev,
            loaded,
            auto_batch and not resume,
            w.size,
            uses_bf16(dev, precision),
        )
    )
    try:
        if w.main:  # locked for the whole run: a second run into this --out is refused
            rundir.claim(command=" ".join(["archspec", "train", *_given_args()]))
            click.get_current_context().call_on_close(rundir.release)  # also in-process
        _dump_spec(report, spec, run / "spec.yaml")
    except RunDirError as e:
        _fail(str(e), EXIT_USAGE)
    except OSError as e:
        _fail(_os_error(e, run))
    title = f"{report.name}" + (f" ({report.variant})" if report.variant else "")
    meta = {
        "spec": spec,
        "name": report.name,
        "variant": report.variant,
        "title": title,
        "params": report.params,
    }
    try:
        result = fit(
            model,
            loaded,
            recipe,
            rundir,
            input_shape=tuple(report.input),
            spec_hash=report.spec_hash,
            resume=resume,
            meta=meta,
            settings=Settings(
                device=dev,
                compile=compile_,
                progress=not quiet,
                initialise=init is None,
                sync_bn=sync_bn,
                threads=threads,
                precision=precision,
            ),
        )
    except errors as e:  # a diverged run, a checkpoint: every rank's alike; a file: one rank's
        _fail(str(e), every_rank=isinstance(e, DataError))
    except OSError as e:  # a failed write: a full disk, a quota, a read-only directory
        _fail(_os_error(e, run))
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or _is_oom(e):
            _oom(e, recipe.batch_size, dev)
        raise
    if result.signal is not None:
        if w.main:
            click.echo(
                f"resume with: archspec train {spec}"
                f"{' --variant ' + report.variant if report.variant else ''}"
                f" --resume --out {run}",
                err=True,
            )
        return 128 + result.signal
    if result.history and w.main:
        last = result.history[-1]
        total = sum(h["seconds"] for h in result.history)
        tested = (
            "no test split" if last["test_acc"] is None else f"test accuracy {last['test_acc']:.4f}"
        )
        click.echo(
            f"{title}: {tested} after {last['epoch']} epochs ({total:.1f} s training) -> {run}"
        )
    return 0


@click.command("eval")
@click.argument("spec")
@click.option(
    "--weights",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="model.safetensors or checkpoint.pt of a run",
)
@_data_options
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1 << 31), default=256, show_default=True)
def eval_cmd(
    spec: str,
    weights: str,
    data: str | None,
    data_root: str | None,
    download: bool,
    device: str,
    variant: str | None,
    input_shape: str | None,
    num_classes: int | None,
    split: str,
    batch_size: int,
) -> None:
    """Evaluate SPEC with trained --weights; print one JSON object (loss, accuracy, examples)."""
    report = _check_spec(spec, variant, input_shape, num_classes)
    dev = _device(device)
    from archspec.run.loop import evaluate, prepare_data
    from archspec.run.recipe import uses_bf16

    errors = _runtime_errors()
    loaded = _data(data or "mnist-mini", data_root, download, report)
    model = _build(report, report.num_classes or loaded.num_classes)
    meta = _load_weights(model, weights)
    try:
        if meta.get("spec_hash") not in (None, report.spec_hash):
            click.echo(
                f"warning: {weights} was trained from a different spec or variant "
                f"(hash {meta['spec_hash']}, this is {report.spec_hash})",
                err=True,
            )
        norm = (meta["mean"], meta["std"]) if "mean" in meta and "std" in meta else None
        model.to(dev)
        train_feed, test_feed, adapter = prepare_data(loaded, tuple(report.input), dev, False, norm)
        feed = test_feed if split == "test" else train_feed
        if len(feed) == 0:
            _fail(f"the {split} split of {loaded.name} is empty: there is nothing to evaluate")
        # the precision the run trained and tested in, so eval repeats its test figures
        result = evaluate(model, feed, adapter, batch_size, dev, uses_bf16(dev))
    except errors as e:
        _fail(str(e))
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or _is_oom(e):
            _oom(e, batch_size, dev)
        raise
    if not math.isfinite(result["loss"]):
        _fail(
            f"the loss on the {split} split is NaN or infinite: the weights in {weights} "
            "hold NaN or infinite values, or overflow on this data"
        )
    click.echo(json.dumps({k: result[k] for k in ("loss", "accuracy", "examples")}))
