"""Training throughput: archspec's runner against the seeds' recipe, same spec, same data.

Both sides train the same spec on the embedded MNIST split (8,000 train / 2,000 test) for
the same epochs and batch size with the same optimizer class (torch.optim.SGD):

- seed recipe: a torchvision-style data set that turns each image into a PIL image and runs
  per-image transforms (``Resize`` when the spec's size differs, ``ToTensor``), a
  ``DataLoader`` (shuffle, d2l's 4 workers), and d2l's ``train_ch6`` loop (Xavier init,
  plain SGD at d2l's learning rate, an ``Accumulator`` read with ``float()`` every step,
  ``evaluate_accuracy_gpu`` per epoch), copied from /work/shared/seeds/000_*.txt;
- archspec: ``archspec.run.loop.fit`` with ``--optimizer sgd`` as archspec's recipe uses it (its
  default learning rate as the peak of a one-cycle schedule, Nesterov momentum 0.9, weight
  decay 5e-4 on weights, inputs normalised with the data's mean and std; d2l's lr of 0.9 is
  for plain SGD and diverges with momentum).

Throughput is training images per second of wall time spent in the training loop, data
loading included, evaluation excluded, on both sides. d2l's own figure (its timer skips the
time spent waiting for data) is printed too.

On CUDA (``--device cuda``) the seed recipe runs its forward pass under bf16 autocast, as
archspec's runner does there, and ``--compile`` wraps both models in ``torch.compile``.

    python benchmarks/train_vs_seed_recipe.py [--spec specs/lenet.yaml] [--epochs 10]
        [--batch-size 256] [--lr 0.9] [--repeats 1] [--seed-threads N]
        [--device cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import archspec
from archspec.run.data import load
from archspec.run.loop import fit
from archspec.run.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ the seeds' recipe (d2l)


class MNISTLike(Dataset):
    """What torchvision.datasets.MNIST does per item: uint8 array → PIL image → transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: transforms.Compose) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.x[i], mode="L")
        return self.transform(img), int(self.y[i])


class Accumulator:
    """d2l.Accumulator: sums n running values as Python floats."""

    def __init__(self, n: int) -> None:
        self.data = [0.0] * n

    def add(self, *args: float) -> None:
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def __getitem__(self, i: int) -> float:
        return self.data[i]


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """d2l.accuracy: number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net: nn.Module, data_iter: DataLoader, device=None) -> float:
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device, compile_=False, warmup=0):
    """d2l's train_ch6 without the plot; returns (train wall s, d2l timer s, test acc), the
    times summed over the epochs after the first ``warmup`` ones. On CUDA the forward pass runs
    under bf16 autocast; ``compile_`` wraps net in torch.compile."""

    def init_weights(m: nn.Module) -> None:
        if type(m) == nn.Linear or type(m) == nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)

    net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    if compile_:
        net = torch.compile(net)
    cuda = torch.device(device).type == "cuda"

    def autocast():
        return torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()

    loss = nn.CrossEntropyLoss()
    wall = timer = 0.0
    test_acc = 0.0
    for epoch in range(num_epochs):
        if epoch == warmup:
            wall = timer = 0.0
        metric = Accumulator(3)
        net.train()
        t_epoch = time.perf_counter()
        for X, y in train_iter:
            t = time.perf_counter()  # d2l's timer starts after the batch has been fetched
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            with autocast():
                y_hat = net(X)
                l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
            timer += time.perf_counter() - t
        wall += time.perf_counter() - t_epoch
        test_acc = evaluate_accuracy_gpu(net, test_iter)
    return wall, timer, test_acc


@dataclass
class Setup:
    """What both sides share: spec, data size, schedule, device; `warmup` epochs are left out
    of the images/s (they pay for compilation)."""

    spec: Path
    variant: str | None = None
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.9
    device: str = "cpu"
    compile_: bool = False
    warmup: int = 0


def seed_run(setup: Setup, workers: int):
    spec, variant, batch_size = setup.spec, setup.variant, setup.batch_size
    data = load("mnist-mini")
    report = archspec.check(spec, variant)
    c, h, w = report.input
    trans = [transforms.ToTensor()]
    if (h, w) != (28, 28):
        trans.insert(0, transforms.Resize((h, w)))
    if c == 3:
        trans.insert(0, transforms.Grayscale(3))
    trans = transforms.Compose(trans)

    def split(s):
        return MNISTLike(s.x[:, 0].numpy(), s.y.numpy(), trans)

    train_iter = DataLoader(split(data.train), batch_size, shuffle=True, num_workers=workers)
    test_iter = DataLoader(split(data.test), batch_size, shuffle=False, num_workers=workers)
    torch.manual_seed(0)
    net = archspec.build(spec, variant)
    wall, timer, acc = train_ch6(
        net,
        train_iter,
        test_iter,
        setup.epochs,
        setup.lr,
        torch.device(setup.device),
        setup.compile_,
        setup.warmup,
    )
    n = len(data.train) * (setup.epochs - setup.warmup)
    return {"ips": n / wall, "d2l_ips": n / timer, "acc": acc}


# ------------------------------------------------------------ archspec


def archspec_run(setup: Setup):
    report = archspec.check(setup.spec, setup.variant)
    torch.manual_seed(0)
    model = archspec.build(setup.spec, setup.variant)
    batch_size = setup.batch_size
    # archspec's own recipe for SGD: its learning rate and one-cycle schedule (d2l's lr 0.9 is
    # for plain SGD; with momentum 0.9 it is ten times that and diverges)
    recipe = Recipe(epochs=setup.epochs, batch_size=batch_size, optimizer="sgd")
    with tempfile.TemporaryDirectory() as out:
        result = fit(
            model,
            load("mnist-mini"),
            recipe,
            out,
            input_shape=report.input,
            spec_hash=report.spec_hash,
            device=setup.device,
            compile=setup.compile_,
            progress=False,
        )
    hist = result.history
    seen = [h["examples_per_sec"] for h in hist[setup.warmup :]]
    images = (8000 // batch_size) * batch_size
    train_s = sum(images / eps for eps in seen)
    return {"ips": images * len(seen) / train_s, "acc": hist[-1]["test_acc"]}


def compare(
    spec: Path,
    variant: str | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 0.9,
    workers: int = 4,
    repeats: int = 1,
    seed_threads: int | None = None,
    device: str = "cpu",
    compile_: bool = False,
    warmup: int = 0,
    log=print,
) -> dict:
    """Alternate `repeats` archspec and seed-recipe runs; medians of images/s (over the epochs
    after the first `warmup`, which pay for compilation) and accuracy, and the median of the
    per-repeat ratios archspec / seed."""
    setup = Setup(spec, variant, epochs, batch_size, lr, device, compile_, warmup)
    default_threads = torch.get_num_threads()
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(archspec_run(setup))
        torch.set_num_threads(seed_threads or default_threads)
        try:
            theirs.append(seed_run(setup, workers))
        finally:
            torch.set_num_threads(default_threads)
        log(
            f"  run: archspec {ours[-1]['ips']:.0f} img/s acc {ours[-1]['acc']:.4f} | "
            f"seed {theirs[-1]['ips']:.0f} img/s (d2l timer {theirs[-1]['d2l_ips']:.0f}) "
            f"acc {theirs[-1]['acc']:.4f}"
        )

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    ratios = [a["ips"] / b["ips"] for a, b in zip(ours, theirs)]
    return {
        "archspec_ips": med(ours, "ips"),
        "archspec_acc": med(ours, "acc"),
        "seed_ips": med(theirs, "ips"),
        "seed_d2l_ips": med(theirs, "d2l_ips"),
        "seed_acc": med(theirs, "acc"),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "seed_threads": seed_threads or default_threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "lenet.yaml"))
    ap.add_argument("--variant", default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument(
        "--lr", type=float, default=0.9, help="the seed recipe's lr: d2l's for LeNet (1.0 with BN)"
    )
    ap.add_argument("--workers", type=int, default=4, help="d2l's get_dataloader_workers()")
    ap.add_argument(
        "--seed-threads",
        type=int,
        default=None,
        help="torch threads for the seed recipe (default: torch's own)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="alternate runs, report medians")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--warmup", type=int, default=0, help="epochs left out of the images/s")
    args = ap.parse_args()
    spec = Path(args.spec)
    r = compare(
        spec,
        args.variant,
        args.epochs,
        args.batch_size,
        args.lr,
        args.workers,
        args.repeats,
        args.seed_threads,
        args.device,
        args.compile,
        args.warmup,
        log=lambda line: print(line, flush=True),
    )
    print(
        f"spec {spec.name}{' --variant ' + args.variant if args.variant else ''}, "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD (seed lr {args.lr:g}), "
        f"embedded MNIST 8000/2000, on {args.device}{' compiled' if args.compile else ''}, "
        f"seed recipe on {r['seed_threads']} torch threads and "
        f"{args.workers} DataLoader workers, "
        f"{args.repeats} run(s)"
    )
    print("| | images/s (training wall time) | test accuracy |")
    print("| --- | ---: | ---: |")
    print(f"| archspec | {r['archspec_ips']:.0f} | {r['archspec_acc']:.4f} |")
    print(
        f"| seed recipe (d2l train_ch6) | {r['seed_ips']:.0f} "
        f"(d2l's timer: {r['seed_d2l_ips']:.0f}) | {r['seed_acc']:.4f} |"
    )
    print(
        f"ratio (archspec / seed): {r['ratio']:.1f}x "
        f"(runs: {', '.join(f'{x:.1f}' for x in r['ratios'])})"
    )


if __name__ == "__main__":
    main()
