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
import json
import math
import os
import re
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
from archspec.run import checkpoint, distributed
from archspec.run.data import Adapter, Data, Feed, channel_stats, decode, epoch_order, materialise

# Defaults chosen so every seed spec trains: AdamW is insensitive to the sigmoid LeNet's
# vanishing gradients that stall plain SGD, and one-cycle warm-up keeps the deeper ReLU
# nets without BatchNorm (AlexNet, VGG) from diverging at this learning rate.
DEFAULT_LR = {"adamw": 5e-3, "sgd": 0.1}  # sgd: at batch 64, scaled with the batch
SGD_REFERENCE_BATCH = 64
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 5e-4}
OPTIMIZERS = tuple(DEFAULT_LR)
SCHEDULES = ("onecycle", "cosine", "none")
CHECKPOINT_EVERY_S = 600.0  # mid-epoch checkpoints for long epochs
PLAIN_PROGRESS_EVERY_S = 30.0  # off a terminal (a log file): a progress line this often
SMALL_MODEL_FLOPS = 20e6  # per image forward; below it a CPU run uses one thread


class TrainError(RuntimeError):
    """A run that cannot go on (non-finite loss, checkpoint from another spec, ...)."""


def default_lr(optimizer: str, batch_size: int) -> float:
    """The peak learning rate when none is given. SGD's follows the linear scaling rule (Goyal
    et al. 2017: the step is a mean over the batch, so a batch k times larger takes a step k
    times larger): 0.1 at batch 64, 0.4 at d2l's 256, where the sigmoid LeNet needs it (at
    0.05 it stays at chance for 10 epochs). AdamW normalises its steps: one rate fits all."""
    if optimizer == "sgd":
        return DEFAULT_LR["sgd"] * batch_size / SGD_REFERENCE_BATCH
    return DEFAULT_LR[optimizer]


@dataclass
class Recipe:
    """Everything that decides the numbers a run produces; a resumed run must match it."""

    data: str = "mnist-mini"
    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None  # None: default_lr(optimizer, batch_size)
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]
    schedule: str = "onecycle"
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps; the schedule spans them

    def resolved(self) -> Recipe:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: {', '.join(SCHEDULES)}")
        return dataclasses.replace(
            self,
            lr=default_lr(self.optimizer, self.batch_size) if self.lr is None else self.lr,
            weight_decay=(
                DEFAULT_WEIGHT_DECAY[self.optimizer]
                if self.weight_decay is None
                else self.weight_decay
            ),
        )


@dataclass
class Result:
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


# ---------------------------------------------------------------- recipe


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only, not on biases or norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    assert recipe.lr is not None
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, fused=device.type == "cuda")
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (a pure function, so
    the schedule's whole state is the step count)."""
    if schedule == "none" or total <= 1:
        return 1.0
    if schedule == "cosine":
        warm = max(1, total // 50)
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    # one-cycle as torch's OneCycleLR: cosine from lr/25 up to lr over 25%, down to lr/1e4
    warm = max(1, int(0.25 * total))
    if step < warm:
        return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / warm))
    t = (step - warm) / max(1, total - warm - 1)
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


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


PRECISIONS = ("auto", "bf16", "float32")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether a run on ``device`` computes under bf16 autocast (weights and optimizer stay
    float32). ``auto``: on CUDA only. A CPU stays in float32 unless asked: on one with AMX
    tile units (Intel Sapphire Rapids and later) bf16 steps are 1.2x (LeNet) to 1.8x
    (ResNet-18) faster, but bf16 rounding makes runs on different process counts differ in
    the fifth digit, and CPUs without AMX emulate bf16 and are slower."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda"


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


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """model.safetensors with the run's input normalisation etc. as string metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    meta = {k: json.dumps(v) for k, v in metadata.items()}

    def write(tmp: Path) -> None:
        try:
            save_model(model, str(tmp), metadata=meta)
        except SafetensorError as e:  # Rust's io::Error as text: "... (os error 28)"
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e

    checkpoint.write_atomic(path, write)


def write_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss and accuracy against epoch (matplotlib, Agg: no display needed)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(ep, [h["test_loss"] for h in history], "o-", label="test")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(ep, [h["test_acc"] for h in history], "o-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    checkpoint.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    checkpoint.write_atomic(path, write)


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


def fit(
    model: nn.Module,
    data: Data,
    recipe: Recipe,
    out: str | Path,
    *,
    input_shape: tuple[int, int, int],
    spec_hash: str,
    device: str | torch.device = "cpu",
    compile: bool = False,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    initialise: bool = True,
    sync_bn: bool = False,
    threads: int | None = None,
    precision: str = "auto",
) -> Result:
    """Train ``model`` (already built and seeded) on ``data`` and write the run to ``out``.

    ``on_step(global_step)`` is called after every step (tests use it to interrupt).
    ``initialise=False`` keeps the model's weights (``archspec train --init FILE``).

    In a process group (``archspec.run.distributed.session`` under torchrun) the model is wrapped
    in DistributedDataParallel and each rank trains on its slice of every global batch of
    ``recipe.batch_size``, so the numbers mean what they mean in one process; rank 0 alone
    reads and writes files. ``sync_bn`` makes BatchNorm use the statistics of the global
    batch (CUDA only). ``threads``: torch's intra-op threads on a CPU (None: chosen here, and
    kept by a resumed run). ``precision``: one of PRECISIONS (see ``uses_bf16``)."""
    recipe = recipe.resolved()
    w = distributed.world()
    out = Path(out)
    if w.main:
        out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    cuda = device.type == "cuda"
    log = _Log(progress and w.main)
    ckpt_path = out / "checkpoint.pt"
    if recipe.batch_size % w.size:
        raise TrainError(
            f"--batch-size {recipe.batch_size} (the global batch) does not split evenly over "
            f"{w.size} processes; use a multiple of {w.size}"
        )

    state = (
        distributed.from_main(lambda: _load_resume(ckpt_path, spec_hash, recipe))
        if resume
        else None
    )
    if state is None:
        torch.manual_seed(recipe.seed)
        if initialise:
            init_weights(model)
        if w.rank:  # the ranks' dropout masks must differ, as the images' of one batch do
            torch.manual_seed(recipe.seed + 1_000_003 * w.rank)
    if sync_bn and w.size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cuda:
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
    train_feed, test_feed, adapter = prepare_data(data, input_shape, device, channels_last, norm)
    norm = (adapter.mean, adapter.std)
    flops = _check_outputs(model, train_feed, adapter, data)
    bf16 = uses_bf16(device, precision)
    if device.type != "cpu":
        threads = torch.get_num_threads()
    elif threads is None:  # a resumed run keeps the count its first part timed
        threads = (state or {}).get("threads") or _cpu_threads(
            model, train_feed, adapter, recipe.batch_size // w.size, flops, bf16
        )

    bs = recipe.batch_size
    n = len(train_feed)
    if n == 0:
        raise TrainError(f"the data {data.name} has no training images")
    if n < w.size:
        raise TrainError(f"the data {data.name} has {n} training images, fewer than {w.size} ranks")
    spe = n // bs if n >= bs else 1  # the last partial batch is dropped (BatchNorm, timing)
    total = recipe.max_steps if recipe.max_steps else recipe.epochs * spe
    epochs = math.ceil(total / spe)

    history: list[dict[str, float]] = []
    epoch, k, step = 0, 0, 0
    prog = _Progress.zeros(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(_rank_rng(state, w), device)
        history = list(state["history"])
        epoch, k, step = state["epoch"], state["step_in_epoch"], state["scheduler"]["step"]
        p = state["partial"]
        prog = dataclasses.replace(prog, seconds=p["seconds"])
        if w.main:  # the saved sums are all ranks': counted once, by rank 0
            prog = _Progress(
                torch.tensor(p["loss"], device=device),
                torch.tensor(p["correct"], device=device),
                p["seen"],
                p["seconds"],
            )

    core: nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
    net = _data_parallel(core, device) if w.size > 1 else core
    weights_meta = {
        "spec_hash": spec_hash,
        "input": list(input_shape),
        "num_classes": data.num_classes,
        "mean": norm[0],
        "std": norm[1],
    }
    config = {
        **(meta or {}),
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
    if w.main:
        _write_text(out / "config.json", json.dumps(config, indent=2) + "\n")

    def save(e: int, k_: int, p: _Progress) -> None:
        """Collective: rank 0 writes, with every rank's generator. ``p``: all ranks' sums."""
        rngs = distributed.gather(_rng_state(device))
        if not w.main:
            return
        checkpoint.save(
            {
                "spec_hash": spec_hash,
                "recipe": dataclasses.asdict(recipe),
                "model": model.state_dict(),  # the bare module's keys: no DDP `module.`
                "optimizer": optimizer.state_dict(),
                "scheduler": {"name": recipe.schedule, "step": step, "total": total},
                "rng": rngs[0],
                **({"rng_ranks": rngs} if w.size > 1 else {}),
                "epoch": e,
                "step_in_epoch": k_,
                "partial": p.state(),
                "history": history,
                "norm": {"mean": norm[0], "std": norm[1]},
                "threads": threads,
            },
            ckpt_path,
        )

    def finish() -> None:
        save_weights(model, out / "model.safetensors", weights_meta)
        write_curves(history, out / "curves.png", meta.get("title", "") if meta else "")

    def diverged(where: str) -> TrainError:
        # Nothing is saved: the metrics and checkpoint on disk are from the last good epoch.
        last = (
            f"the last good checkpoint (epoch {history[-1]['epoch'] if history else 0}) "
            f"is {ckpt_path}"
            if ckpt_path.exists()
            else "no checkpoint was written"
        )
        return TrainError(
            f"the loss became NaN or infinite {where}; stopped, {last}. "
            f"Try a lower --lr (now {recipe.lr:g})."
        )

    if step >= total:
        log.line(f"{out}: the run is already complete ({len(history)} epochs)")
        if w.main:
            finish()
        return Result(out, history)
    where = f"{w.size} processes on {device.type}" if w.size > 1 else str(device)
    log.line(
        f"training {meta.get('title', 'model') if meta else 'model'} on {where}: "
        f"{data.name} {n} train / {len(test_feed)} test images, {epochs} epochs x {spe} steps, "
        f"batch {bs}{f' ({bs // w.size} per process)' if w.size > 1 else ''}, "
        f"{recipe.optimizer} lr {recipe.lr:g} wd {recipe.weight_decay:g} {recipe.schedule}"
        + (f", resuming at epoch {epoch + 1} step {k}" if state else "")
        + f" -> {out}"
    )

    base_lr = float(recipe.lr or 0.0)
    local_bs = bs // w.size
    stopped_by: int | None = None  # the signal all ranks agreed to stop on
    net.train()
    with _Stop() as stop, _num_threads(threads):
        looks = _Cadence(device, w)
        while epoch < epochs:
            steps_here = min(spe, total - epoch * spe)
            t0 = time.perf_counter()
            last_save = last_line = time.monotonic()
            order = distributed.shard(epoch_order(n, recipe.seed, epoch), bs, w)
            desc = f"epoch {epoch + 1}/{epochs}"
            with log.bar(desc, steps_here * min(bs, n), k * min(bs, n)) as bar:
                for x, y in train_feed.batches(order, local_bs, start=k, stop=steps_here):
                    lr = base_lr * lr_factor(step, total, recipe.schedule)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    with _autocast(device, bf16):
                        logits, loss = _loss(net(adapter(x)), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        prog.loss += loss.detach().float() * len(y)
                        prog.correct += (logits.argmax(1) == y).sum()
                    prog.seen += len(y)
                    step += 1
                    k += 1
                    if bar is not None:
                        bar.update(len(y) * w.size)
                    if on_step is not None:
                        on_step(step)
                    # one process stops at once; several only together, at a look
                    stopped_by = stop.signum if w.size == 1 else None
                    if looks.due(step):  # the only host syncs inside an epoch
                        loss_sum = float(prog.loss)
                        signum, bad, save_due = looks.agree(
                            step,
                            stop.signum or 0,
                            not math.isfinite(loss_sum),
                            time.monotonic() - last_save > CHECKPOINT_EVERY_S,
                        )
                        if bad:
                            raise diverged(f"in epoch {epoch + 1} (by step {step})")
                        if bar is not None:
                            bar.set_postfix(
                                loss=f"{loss_sum / prog.seen:.4f}",
                                acc=f"{int(prog.correct) / prog.seen:.4f}",
                            )
                        elif time.monotonic() - last_line > PLAIN_PROGRESS_EVERY_S:
                            last_line = time.monotonic()  # a long epoch in a log file
                            rate = prog.seen * w.size / (prog.seconds + time.perf_counter() - t0)
                            log.line(
                                f"{desc}  step {k}/{steps_here}  "
                                f"loss {loss_sum / prog.seen:.4f}  "
                                f"acc {int(prog.correct) / prog.seen:.4f}  {rate:.0f} img/s"
                            )
                        if save_due and _finite(model):  # same params, same answer on all ranks
                            last_save = time.monotonic()
                            seconds = prog.seconds + time.perf_counter() - t0
                            save(epoch, k, _total(dataclasses.replace(prog, seconds=seconds)))
                        stopped_by = stopped_by or signum or None
                    if stopped_by is not None:
                        break
                if cuda:
                    torch.cuda.synchronize(device)
                train_seconds = prog.seconds + time.perf_counter() - t0
                tot = _total(dataclasses.replace(prog, seconds=train_seconds))
                loss_sum = float(tot.loss)
                if not math.isfinite(loss_sum) or not _finite(model):
                    raise diverged(f"in epoch {epoch + 1}")
                if k < steps_here:  # stopped by a signal inside the epoch
                    save(epoch, k, tot)
                    break
                t_eval = time.perf_counter()
                test = evaluate(core, test_feed, adapter, 2 * local_bs, device, bf16)
                eval_seconds = time.perf_counter() - t_eval
                row = {
                    "epoch": epoch + 1,
                    "train_loss": round(loss_sum / max(1, tot.seen), 6),
                    "train_acc": round(int(tot.correct) / max(1, tot.seen), 6),
                    "test_loss": round(test["loss"], 6),
                    "test_acc": round(test["accuracy"], 6),
                    "examples_per_sec": round(tot.seen / max(train_seconds, 1e-9), 1),
                    "seconds": round(train_seconds + eval_seconds, 3),
                }
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{row['train_loss']:.4f}",
                        acc=f"{row['train_acc']:.4f}",
                        test=f"{row['test_acc']:.4f}",
                    )
            history.append(row)
            if not log.tty:
                log.line(
                    f"{desc}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
                    f"test {row['test_acc']:.4f}  {row['examples_per_sec']:.0f} img/s  "
                    f"{row['seconds']:.1f}s"
                )
            if w.main:
                _write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            epoch, k = epoch + 1, 0
            prog = _Progress.zeros(device)
            save(epoch, 0, prog)
            stopped_by = int(distributed.all_max([stop.signum or 0], device)[0]) or None
            if stopped_by is not None:
                break
    if w.main:
        finish()
    if stopped_by is not None:
        where = f"epoch {epoch + 1} step {k}" if k else f"the end of epoch {epoch}"
        log.line(
            f"stopped by {signal.Signals(stopped_by).name} at {where}; "
            f"checkpoint saved to {ckpt_path}"
        )
        return Result(out, history, signal=stopped_by, done=False)
    return Result(out, history)


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


# What a resumed run reads from a checkpoint, by type: a file that loads but lacks one is
# refused here rather than failing with a KeyError halfway through restoring the run.
_RESUME_KEYS = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "epoch": int,
    "step_in_epoch": int,
    "partial": dict,
    "history": list,
    "norm": dict,
}


def _load_resume(path: Path, spec_hash: str, recipe: Recipe) -> dict[str, Any] | None:
    state = checkpoint.load(path)
    bad = [k for k, t in _RESUME_KEYS.items() if not isinstance(state.get(k), t)]
    if bad:
        raise checkpoint.CheckpointError(
            f"{path}: incomplete checkpoint (no valid {', '.join(bad)}); cannot resume from it"
        )
    if state.get("spec_hash") != spec_hash:
        raise TrainError(
            f"{path} was written for a different spec (hash {state.get('spec_hash')}, this spec "
            f"is {spec_hash}); use a new --out or the spec it was trained with"
        )
    saved = state.get("recipe", {})
    diff = [
        f"--{k.replace('_', '-')} {saved.get(k)} (now {v})"
        for k, v in dataclasses.asdict(recipe).items()
        if saved.get(k) != v
    ]
    if diff:
        raise TrainError(
            f"{path} was trained with {', '.join(diff)}; resume with the same "
            "settings or start a new run"
        )
    return state


def saved_recipe(out: str | Path) -> Recipe | None:
    """The recipe of the run in ``out`` (for ``--resume``), or None if it has no checkpoint."""
    path = Path(out) / "checkpoint.pt"
    if not path.exists():
        return None
    saved = checkpoint.load(path).get("recipe", {})
    names = {f.name for f in dataclasses.fields(Recipe)}
    return Recipe(**{k: v for k, v in saved.items() if k in names})
