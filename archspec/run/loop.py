"""The training runner: recipe, loop, metrics, checkpoints, signals.

The loop is built for throughput: the data set sits on the device as uint8 when it fits,
batches are index ops, bf16 autocast and channels_last on CUDA, and nothing in the hot loop
waits for the device — running loss and accuracy are summed on the device and read only
about once a second for the progress bar and at the end of each epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archspec.backend.init import init_weights
from archspec.run import distributed
from archspec.run.data import Adapter, Data, Feed, channel_stats, decode, epoch_order, materialise
from archspec.run.recipe import Recipe, lr_factor, make_optimizer, uses_bf16
from archspec.run.rundir import RunDir, TrainError

CHECKPOINT_EVERY_S = 600.0  # mid-epoch checkpoints for long epochs
PLAIN_PROGRESS_EVERY_S = 30.0  # off a terminal (a log file): a progress line this often
SMALL_MODEL_FLOPS = 20e6  # per image forward; below it a CPU run uses one thread


@dataclass
class Result:
    """How a training run ended: its run directory, per-epoch history, and the signal that
    stopped it, if one did."""

    out: Path
    history: list[dict[str, float]]
    signal: int | None = None  # set when a signal stopped the run
    done: bool = True


@dataclass
class _Progress:
    """Sums of the current epoch, kept on the device until read."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0  # training time spent in this epoch by earlier processes

    @classmethod
    def zeros(cls, device: torch.device) -> _Progress:
        return cls(
            torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device)
        )

    def state(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "correct": int(self.correct),
            "seen": self.seen,
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------- signals


class _Stop:
    """SIGINT / SIGTERM set ``signum``; the loop saves and stops at the next step boundary.
    A second signal interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _Stop:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _budget(device: torch.device) -> int:
    """Bytes of uint8 images we are willing to keep resident on ``device`` (on a CPU, this
    process's share: each of torchrun's workers on the machine holds its own copy)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(avail * 0.25) // distributed.local_size()


def _workers() -> int:
    """DataLoader workers of this process: the machine's cores shared by its ranks."""
    return max(1, min(8, (os.cpu_count() or 2) // distributed.local_size() - 1))


def _finite(model: nn.Module) -> bool:
    flags = [p.detach().isfinite().all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rng_state(device: torch.device) -> dict[str, Any]:
    # CUDA: the training device's generator only; reading every GPU's would open a context on
    # each of them from every rank.
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # older checkpoints: one state per visible GPU
        cuda = cuda[0] if cuda else None
    if device.type == "cuda" and cuda is not None:
        with contextlib.suppress(RuntimeError):  # a state from another torch build
            torch.cuda.set_rng_state(cuda, device)


def _rank_rng(state: dict[str, Any], w: distributed.World) -> dict[str, Any]:
    """This rank's saved generator state: its own when the run had as many ranks, else rank
    0's (then dropout masks differ from the uninterrupted run; the batches do not)."""
    ranks = state.get("rng_ranks") or []
    return ranks[w.rank] if len(ranks) == w.size else state["rng"]


def prepare_data(
    data: Data,
    target: tuple[int, int, int],
    device: torch.device,
    channels_last: bool,
    norm: tuple[list[float], list[float]] | None = None,
) -> tuple[Feed, Feed, Adapter]:
    """Feeds for both splits and the adapter from stored images to the model's input."""
    budget = _budget(device)
    materialise(data, budget)
    train = Feed(data.train, data.shape, device, budget, _workers())
    test = Feed(
        data.test,
        data.shape,
        device,
        budget - train.x.numel() if train.resident else budget,
        _workers(),
    )
    if norm is None:
        sample = data.train.x
        if sample is None:  # streamed folder: statistics of a few hundred decoded files
            files = data.train.files or []
            sample = decode(files[:: max(1, len(files) // 512)], data.shape)
        norm = channel_stats(sample, target[0])
    return train, test, Adapter(data.shape, target, *norm, channels_last=channels_last)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    feed: Feed,
    adapter: Adapter,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split, in order. Under torchrun every
    rank takes every ``size``-th image and the sums are added up: the same numbers, 1/size of
    the time. ``model`` must be the bare module: a DDP wrapper would sync buffers at every
    forward, and the ranks' batch counts may differ by one."""
    w = distributed.world()
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for x, y in feed.batches(torch.arange(w.rank, len(feed), w.size), batch_size):
        with _autocast(device, bf16):
            logits = model(adapter(x))
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    loss_sum, right = distributed.all_sum([float(loss), float(correct)], device)
    n = max(1, len(feed))
    return {"loss": loss_sum / n, "accuracy": int(right) / n, "examples": len(feed)}


class _Log:
    """Progress: a tqdm bar per epoch on a terminal, one plain line per epoch otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def bar(self, desc: str, total: int, initial: int) -> Iterator[Any]:
        if not self.tty:
            yield None
            return
        from tqdm import tqdm  # type: ignore[import-untyped]

        size = shutil.get_terminal_size((100, 24))

        with tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="img",
            unit_scale=True,
            file=sys.stderr,
            # explicit: a pty that reports 0x0 (CI, `script`) makes tqdm print nothing
            ncols=min(120, size.columns),
            nrows=max(2, size.lines),
            mininterval=0.5,
            leave=True,
        ) as b:
            yield b


# ---------------------------------------------------------------- the loop


@dataclass
class Settings:
    """How a run executes, as opposed to the recipe (what it computes). ``on_step(step)`` is
    called after every step (tests use it to interrupt); ``initialise=False`` keeps the
    model's weights (``archspec train --init FILE``); ``sync_bn`` makes BatchNorm use the
    statistics of the global batch (several CUDA processes); ``threads``: torch's intra-op
    threads on a CPU (None: chosen at the start, and kept by a resumed run); ``precision``:
    one of PRECISIONS (see ``uses_bf16``; a resumed run keeps the precision it started with,
    and refuses another one asked for)."""

    device: str | torch.device = "cpu"
    compile: bool = False
    progress: bool = True
    on_step: Callable[[int], None] | None = None
    initialise: bool = True
    sync_bn: bool = False
    threads: int | None = None
    precision: str = "auto"


def fit(
    model: nn.Module,
    data: Data,
    recipe: Recipe,
    out: str | Path | RunDir,
    *,
    input_shape: tuple[int, int, int],
    spec_hash: str,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> Result:
    """Train ``model`` (already built and seeded) on ``data`` and write the run to ``out``
    (a folder, or a `RunDir` the caller has claimed; a folder is claimed here: created,
    locked for the run, refused if it holds files that are not an archspec run's).
    ``settings`` (or its fields as keyword ``options``) say how the run executes.

    In a process group (``archspec.run.distributed.session`` under torchrun) the model is wrapped
    in DistributedDataParallel and each rank trains on its slice of every global batch of
    ``recipe.batch_size``, so the numbers mean what they mean in one process; rank 0 alone
    reads and writes files."""
    settings = dataclasses.replace(settings or Settings(), **options)
    try:
        recipe = recipe.resolved()
    except ValueError as e:
        raise TrainError(f"invalid recipe: {e}") from None
    w = distributed.world()
    run = out if isinstance(out, RunDir) else RunDir(out)
    claimed_here = w.main and not run.claimed
    if claimed_here:
        run.claim()
    try:
        loop = _Loop.start(
            model, data, recipe, run, input_shape, spec_hash, resume, meta or {}, settings
        )
        return loop.run(settings.on_step)
    finally:
        if claimed_here:
            run.release()


@dataclass
class _Loop:
    """One run, set up: the model and its optimizer on the device, the feeds, the schedule's
    length, and where the run stands (epoch, step in it, global step, history)."""

    model: nn.Module  # the bare module: its state_dict has no DDP `module.` prefix
    core: nn.Module  # what evaluates: the model, or its torch.compile wrapper
    net: nn.Module  # what trains: ``core``, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    rundir: RunDir
    data: Data
    train_feed: Feed
    test_feed: Feed
    adapter: Adapter
    device: torch.device
    bf16: bool
    threads: int
    spec_hash: str
    meta: dict[str, Any]
    log: _Log
    steps_per_epoch: int
    total: int
    epochs: int
    weights_meta: dict[str, Any]
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epoch: int = 0
    k: int = 0  # steps done in this epoch
    step: int = 0  # global step: the schedule's whole state
    prog: _Progress | None = None

    @classmethod
    def start(
        cls,
        model: nn.Module,
        data: Data,
        recipe: Recipe,
        run: RunDir,
        input_shape: tuple[int, int, int],
        spec_hash: str,
        resume: bool,
        meta: dict[str, Any],
        settings: Settings,
    ) -> _Loop:
        """Restore or initialise the model, place it, make the optimizer and the feeds, and
        write config.json (rank 0)."""
        device, precision, threads = (
            torch.device(settings.device),
            settings.precision,
            settings.threads,
        )
        compile, sync_bn = settings.compile, settings.sync_bn
        w = distributed.world()
        if recipe.batch_size % w.size:
            raise TrainError(
                f"--batch-size {recipe.batch_size} (the global batch) does not split evenly "
                f"over {w.size} processes; use a multiple of {w.size}"
            )
        state = (
            distributed.from_main(lambda: run.resume_state(spec_hash, recipe, precision))
            if resume
            else None
        )
        if state is None:
            torch.manual_seed(recipe.seed)
            if settings.initialise:
                init_weights(model)
            if w.rank:  # the ranks' dropout masks must differ, as the images' of one batch do
                torch.manual_seed((recipe.seed + 1_000_003 * w.rank) % (1 << 64))
        if sync_bn and w.size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # channels_last on the CPU too: oneDNN's convolutions and pools run faster on it (LeNet
        # 1.4-1.7x, GoogLeNet 1.3x, DenseNet 1.2x; ResNet-18 even) and the numbers are the same
        channels_last = len(input_shape) == 3
        if channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, recipe, device)
        norm = (state["norm"]["mean"], state["norm"]["std"]) if state else None
        train_feed, test_feed, adapter = prepare_data(
            data, input_shape, device, channels_last, norm
        )
        norm = (adapter.mean, adapter.std)
        flops = _check_outputs(model, train_feed, adapter, data)
        if state is not None and precision == "auto" and state.get("precision"):
            bf16 = state["precision"] == "bf16"  # a resumed run keeps its precision
        else:
            bf16 = uses_bf16(device, precision)
        if device.type != "cpu":
            threads = torch.get_num_threads()
        elif threads is None:  # a resumed run keeps the count its first part timed
            threads = (state or {}).get("threads") or _cpu_threads(
                model, train_feed, adapter, recipe.batch_size // w.size, flops, bf16
            )

        n = len(train_feed)
        if n == 0:
            raise TrainError(f"the data {data.name} has no training images")
        if n < w.size:
            raise TrainError(
                f"the data {data.name} has {n} training images, fewer than {w.size} ranks"
            )
        spe = n // recipe.batch_size if n >= recipe.batch_size else 1  # last partial batch dropped
        total = recipe.max_steps if recipe.max_steps else recipe.epochs * spe
        core: nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
        loop = cls(
            model=model,
            core=core,
            net=core,  # wrapped in DDP below, once the state is restored
            optimizer=optimizer,
            recipe=recipe,
            rundir=run,
            data=data,
            train_feed=train_feed,
            test_feed=test_feed,
            adapter=adapter,
            device=device,
            bf16=bf16,
            threads=threads,
            spec_hash=spec_hash,
            meta=meta,
            log=_Log(settings.progress and w.main),
            steps_per_epoch=spe,
            total=total,
            epochs=math.ceil(total / spe),
            weights_meta={
                "spec_hash": spec_hash,
                "input": list(input_shape),
                "num_classes": data.num_classes,
                "mean": norm[0],
                "std": norm[1],
            },
        )
        loop.prog = _Progress.zeros(device)
        if state is not None:
            loop.restore(state)
        if w.size > 1:  # DDP broadcasts rank 0's (restored) weights as it wraps
            loop.net = _data_parallel(core, device)
        if w.main:
            run.write_config(
                {
                    **meta,
                    "recipe": dataclasses.asdict(recipe),
                    "data": {
                        "name": data.name,
                        "train": len(train_feed),
                        "test": len(test_feed),
                        "stored_shape": list(data.shape),
                        "num_classes": data.num_classes,
                        "resident": train_feed.resident,
                        "mean": norm[0],
                        "std": norm[1],
                    },
                    "input": list(input_shape),
                    "spec_hash": spec_hash,
                    "device": str(device),
                    "compile": compile,
                    "precision": "bf16" if bf16 else "float32",
                    "steps_per_epoch": spe,
                    "total_steps": total,
                    "torch": torch.__version__,
                    "threads": threads if device.type == "cpu" else None,
                    "flops_per_image": flops,
                    "world_size": w.size,
                    "sync_bn": sync_bn and w.size > 1,
                }
            )
        return loop

    def restore(self, state: dict[str, Any]) -> None:
        w = distributed.world()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(_rank_rng(state, w), self.device)
        self.history = list(state["history"])
        self.epoch, self.k, self.step = (
            state["epoch"],
            state["step_in_epoch"],
            state["scheduler"]["step"],
        )
        p = state["partial"]
        self.prog = _Progress.zeros(self.device)
        self.prog.seconds = p["seconds"]
        if w.main:  # the saved sums are all ranks': counted once, by rank 0
            self.prog = _Progress(
                torch.tensor(p["loss"], device=self.device),
                torch.tensor(p["correct"], device=self.device),
                p["seen"],
                p["seconds"],
            )

    def save(self, e: int, k_: int, p: _Progress) -> None:
        """Collective: rank 0 writes, with every rank's generator. ``p``: all ranks' sums."""
        w = distributed.world()
        rngs = distributed.gather(_rng_state(self.device))
        if not w.main:
            return
        self.rundir.save_checkpoint(
            {
                "spec_hash": self.spec_hash,
                "recipe": dataclasses.asdict(self.recipe),
                "precision": "bf16" if self.bf16 else "float32",
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": self.recipe.schedule, "step": self.step, "total": self.total},
                "rng": rngs[0],
                **({"rng_ranks": rngs} if w.size > 1 else {}),
                "epoch": e,
                "step_in_epoch": k_,
                "partial": p.state(),
                "history": self.history,
                "norm": {"mean": self.adapter.mean, "std": self.adapter.std},
                "threads": self.threads,
            }
        )

    def finish(self) -> None:
        self.rundir.finish(self.model, self.weights_meta, self.history, self.meta.get("title", ""))

    def diverged(self, where: str) -> TrainError:
        # Nothing is saved: the metrics and checkpoint on disk are from the last good epoch.
        ckpt = self.rundir.checkpoint
        last = (
            f"the last good checkpoint (epoch {self.history[-1]['epoch'] if self.history else 0})"
            f" is {ckpt}"
            if ckpt.exists()
            else "no checkpoint was written"
        )
        r = self.recipe
        decay = f" or --weight-decay (now {r.weight_decay:g})" if (r.weight_decay or 0) > 1 else ""
        return TrainError(
            f"the loss became NaN or infinite {where}; stopped, {last}. "
            f"Try a lower --lr (now {r.lr:g}){decay}."
        )

    def evaluate_test(self, local_bs: int) -> dict[str, Any]:
        """The test split's loss and accuracy; None for both when there is no test split (an
        empty split has no accuracy, not an accuracy of 0)."""
        if len(self.test_feed) == 0:
            return {"loss": None, "accuracy": None}
        return evaluate(
            self.core, self.test_feed, self.adapter, 2 * local_bs, self.device, self.bf16
        )

    def run(self, on_step: Callable[[int], None] | None) -> Result:
        w = distributed.world()
        log, recipe, device, out = self.log, self.recipe, self.device, self.rundir.path
        bs, n, spe, total, epochs = (
            recipe.batch_size,
            len(self.train_feed),
            self.steps_per_epoch,
            self.total,
            self.epochs,
        )
        if self.step >= total:
            log.line(f"{out}: the run is already complete ({len(self.history)} epochs)")
            if w.main:
                self.finish()
            return Result(out, self.history)
        where = f"{w.size} processes on {device.type}" if w.size > 1 else str(device)
        tests = len(self.test_feed)
        log.line(
            f"training {self.meta.get('title', 'model')} on {where}: "
            f"{self.data.name} {n} train / {tests or 'no'} test images, "
            f"{epochs} epochs x {spe} steps, "
            f"batch {bs}{f' ({bs // w.size} per process)' if w.size > 1 else ''}, "
            f"{recipe.optimizer} lr {recipe.lr:g} wd {recipe.weight_decay:g} {recipe.schedule}"
            + (f", resuming at epoch {self.epoch + 1} step {self.k}" if self.step else "")
            + f" -> {out}"
        )
        stopped_by: int | None = None  # the signal all ranks agreed to stop on
        self.net.train()
        with _Stop() as stop, _num_threads(self.threads):
            looks = _Cadence(device, w)
            while self.epoch < epochs:
                stopped_by, row = self.one_epoch(stop, looks, on_step)
                if row is None:  # stopped by a signal inside the epoch (saved)
                    break
                self.history.append(row)
                if not log.tty:
                    test = "-" if row["test_acc"] is None else f"{row['test_acc']:.4f}"
                    log.line(
                        f"epoch {self.epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  "
                        f"acc {row['train_acc']:.4f}  test {test}  "
                        f"{row['examples_per_sec']:.0f} img/s  {row['seconds']:.1f}s"
                    )
                if w.main:
                    self.rundir.write_metrics(self.history)
                self.epoch, self.k = self.epoch + 1, 0
                self.prog = _Progress.zeros(device)
                self.save(self.epoch, 0, self.prog)
                stopped_by = int(distributed.all_max([stop.signum or 0], device)[0]) or None
                if stopped_by is not None:
                    break
        if w.main:
            self.finish()
        if stopped_by is not None:
            at = (
                f"epoch {self.epoch + 1} step {self.k}"
                if self.k
                else f"the end of epoch {self.epoch}"
            )
            log.line(
                f"stopped by {signal.Signals(stopped_by).name} at {at}; "
                f"checkpoint saved to {self.rundir.checkpoint}"
            )
            return Result(out, self.history, signal=stopped_by, done=False)
        return Result(out, self.history)

    def one_epoch(
        self, stop: _Stop, looks: _Cadence, on_step: Callable[[int], None] | None
    ) -> tuple[int | None, dict[str, Any] | None]:
        """Train (the rest of) one epoch and test. Returns the signal that stopped it, if
        any, and its metrics row (None when a signal stopped it mid-epoch: it is saved)."""
        w = distributed.world()
        recipe, device, log = self.recipe, self.device, self.log
        bs, n, epoch = recipe.batch_size, len(self.train_feed), self.epoch
        local_bs = bs // w.size
        base_lr = float(recipe.lr or 0.0)
        prog = self.prog
        assert prog is not None
        stopped_by: int | None = None
        steps_here = min(self.steps_per_epoch, self.total - epoch * self.steps_per_epoch)
        t0 = time.perf_counter()
        last_save = last_line = time.monotonic()
        order = distributed.shard(epoch_order(n, recipe.seed, epoch), bs, w)
        desc = f"epoch {epoch + 1}/{self.epochs}"
        with log.bar(desc, steps_here * min(bs, n), self.k * min(bs, n)) as bar:
            for x, y in self.train_feed.batches(order, local_bs, start=self.k, stop=steps_here):
                lr = base_lr * lr_factor(self.step, self.total, recipe.schedule)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with _autocast(device, self.bf16):
                    logits, loss = _loss(self.net(self.adapter(x)), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                with torch.no_grad():
                    prog.loss += loss.detach().float() * len(y)
                    prog.correct += (logits.argmax(1) == y).sum()
                prog.seen += len(y)
                self.step += 1
                self.k += 1
                if bar is not None:
                    bar.update(len(y) * w.size)
                if on_step is not None:
                    on_step(self.step)
                # one process stops at once; several only together, at a look
                stopped_by = stop.signum if w.size == 1 else None
                if looks.due(self.step):  # the only host syncs inside an epoch
                    loss_sum = float(prog.loss)
                    signum, bad, save_due = looks.agree(
                        self.step,
                        stop.signum or 0,
                        not math.isfinite(loss_sum),
                        time.monotonic() - last_save > CHECKPOINT_EVERY_S,
                    )
                    if bad:
                        raise self.diverged(f"in epoch {epoch + 1} (by step {self.step})")
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{loss_sum / prog.seen:.4f}",
                            acc=f"{int(prog.correct) / prog.seen:.4f}",
                        )
                    elif time.monotonic() - last_line > PLAIN_PROGRESS_EVERY_S:
                        last_line = time.monotonic()  # a long epoch in a log file
                        rate = prog.seen * w.size / (prog.seconds + time.perf_counter() - t0)
                        log.line(
                            f"{desc}  step {self.k}/{steps_here}  "
                            f"loss {loss_sum / prog.seen:.4f}  "
                            f"acc {int(prog.correct) / prog.seen:.4f}  {rate:.0f} img/s"
                        )
                    if save_due and _finite(self.model):  # same params, same answer on all ranks
                        last_save = time.monotonic()
                        seconds = prog.seconds + time.perf_counter() - t0
                        self.save(epoch, self.k, _total(dataclasses.replace(prog, seconds=seconds)))
                    stopped_by = stopped_by or signum or None
                if stopped_by is not None:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds = prog.seconds + time.perf_counter() - t0
            tot = _total(dataclasses.replace(prog, seconds=train_seconds))
            loss_sum = float(tot.loss)
            if not math.isfinite(loss_sum) or not _finite(self.model):
                raise self.diverged(f"in epoch {epoch + 1}")
            if self.k < steps_here:  # stopped by a signal inside the epoch
                self.save(epoch, self.k, tot)
                return stopped_by, None
            t_eval = time.perf_counter()
            test = self.evaluate_test(local_bs)
            eval_seconds = time.perf_counter() - t_eval
            row = {
                "epoch": epoch + 1,
                "train_loss": round(loss_sum / max(1, tot.seen), 6),
                "train_acc": round(int(tot.correct) / max(1, tot.seen), 6),
                "test_loss": _rounded(test["loss"]),
                "test_acc": _rounded(test["accuracy"]),
                "examples_per_sec": round(tot.seen / max(train_seconds, 1e-9), 1),
                "seconds": round(train_seconds + eval_seconds, 3),
            }
            if bar is not None:
                bar.set_postfix(
                    loss=f"{row['train_loss']:.4f}",
                    acc=f"{row['train_acc']:.4f}",
                    **({} if row["test_acc"] is None else {"test": f"{row['test_acc']:.4f}"}),
                )
        return stopped_by, row


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def _total(p: _Progress) -> _Progress:
    """The epoch's sums over all ranks (one process: its own)."""
    loss, correct, seen = distributed.all_sum(
        [float(p.loss), float(p.correct), float(p.seen)], p.loss.device
    )
    return _Progress(
        torch.tensor(loss, dtype=p.loss.dtype, device=p.loss.device),
        torch.tensor(int(correct), dtype=p.correct.dtype, device=p.correct.device),
        int(seen),
        p.seconds,
    )


class _Cadence:
    """The steps at which the loop reads its running sums (a host sync) and the ranks agree
    on stopping, diverging and saving: about once a second. Ranks must look at the same
    steps, so the gap in steps comes from rank 0's clock and travels with the agreement."""

    PERIOD_S = 1.0

    def __init__(self, device: torch.device, w: distributed.World) -> None:
        self.device, self.w = device, w
        self.next, self.last, self.t = 1, 0, time.monotonic()

    def due(self, step: int) -> bool:
        return step >= self.next

    def agree(self, step: int, signum: int, bad: bool, save_due: bool) -> tuple[int, bool, bool]:
        """The largest pending signal number and whether any rank diverged, over all ranks;
        whether rank 0 wants a checkpoint."""
        now = time.monotonic()
        gap = 0
        if self.w.main:
            rate = (step - self.last) / max(now - self.t, 1e-6)
            gap = max(1, int(rate * self.PERIOD_S))
        got = distributed.all_max([signum, bad, save_due and self.w.main, gap], self.device)
        self.next, self.last, self.t = step + int(got[3]), step, now
        return int(got[0]), bool(got[1]), bool(got[2])


def _data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP: rank 0's weights are broadcast at the start, gradients averaged at each step."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


AUX_WEIGHT = 0.3  # weight of each auxiliary head's loss (GoogLeNet, Szegedy et al. 2014)


def _loss(out: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Main logits and the training loss. A spec with `aux` heads returns (main, *aux) in
    training mode (docs/language-aux.md): each head adds AUX_WEIGHT times its own loss."""
    if isinstance(out, tuple):
        main, aux = out[0], out[1:]
        return main, F.cross_entropy(main, y) + AUX_WEIGHT * sum(F.cross_entropy(a, y) for a in aux)
    return out, F.cross_entropy(out, y)


@torch.no_grad()
def _check_outputs(model: nn.Module, feed: Feed, adapter: Adapter, data: Data) -> float:
    """Refuse a spec whose class count disagrees with the data before any training (one
    forward pass in eval mode on two images: no RNG draws, no BatchNorm updates).
    Returns the forward FLOPs per image."""
    from torch.utils.flop_counter import FlopCounterMode

    x, _ = next(feed.batches(torch.arange(min(2, len(feed))), 2))
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        out = model(adapter(x))
    model.train(was_training)
    if out.ndim != 2:
        raise TrainError(
            f"the model's output has shape {tuple(out.shape[1:])} per image; "
            "a classifier must end in N class scores (add flatten/linear)"
        )
    if data.num_classes and out.shape[1] != data.num_classes:
        raise TrainError(
            f"the spec outputs {out.shape[1]} classes but {data.name} has "
            f"{data.num_classes}; use --num-classes {data.num_classes} or a "
            "spec made for this data"
        )
    return counter.get_total_flops() / len(x)


def _cpu_threads(
    model: nn.Module, feed: Feed, adapter: Adapter, batch: int, flops_per_image: float, bf16: bool
) -> int:
    """Intra-op threads for a CPU run (OMP_NUM_THREADS, when set, wins; so does --threads).

    Big models keep all threads. For a small one (LeNet: 0.8 MFLOP per image) it depends on
    the machine: on two idle cores two threads are twice as fast as one, but every parallel op
    ends in a barrier, and while another process holds a core each barrier waits a scheduler
    slice (measured 5,500 img/s on one thread against 300-900 on two on a busy 2-core box).
    So a small model times a few forward+backward passes of a throwaway copy both ways."""
    every = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or every == 1 or flops_per_image >= SMALL_MODEL_FLOPS:
        return every
    probe = copy.deepcopy(model).train()
    x, y = next(feed.batches(torch.arange(min(batch, len(feed))), batch))
    x = adapter(x)

    def seconds(threads: int) -> float:
        with _num_threads(threads):
            t0 = time.perf_counter()
            for _ in range(3):
                with _autocast(x.device, bf16):
                    loss = _loss(probe(x), y)[1]
                loss.backward()
            return time.perf_counter() - t0

    seconds(every)  # warm-up: first calls allocate and pick kernels
    one = min(seconds(1), seconds(1))
    many = min(seconds(every), seconds(every))
    return every if many < 0.8 * one else 1
