"""Forward+backward time of each compiled spec against its hand-written module (the seed code or
torchvision's builder, see peers.py).

Both models run in one process, interleaved (A, B, B, A, ...) so that machine noise hits both
alike; the figure is the median of per-round ratios archspec / hand-written (1.00 = equal).

    python benchmarks/model_speed.py [--quick] [--device cpu|cuda] [--compile] [--models ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from peers import build_peer

import archspec

# peer -> (spec, variant, batch, input override for speed on a CPU)
CASES = {
    "seed:lenet": ("specs/lenet.yaml", None, 256, None),
    "seed:alexnet": ("specs/alexnet.yaml", None, 8, None),
    "seed:vgg_small": ("specs/vgg.yaml", "small", 4, None),
    "seed:nin": ("specs/nin.yaml", None, 8, None),
    "seed:googlenet": ("specs/googlenet.yaml", None, 16, None),
    "seed:inception_mnist": ("specs/inception_mnist.yaml", None, 128, None),
    "seed:resnet18": ("specs/resnet18.yaml", None, 16, None),
    "seed:densenet": ("specs/densenet.yaml", None, 16, None),
    "torchvision:resnet18": ("specs/torchvision/resnet.yaml", "resnet18", 8, (3, 112, 112)),
    "torchvision:resnet50": ("specs/torchvision/resnet.yaml", "resnet50", 4, (3, 112, 112)),
    "torchvision:densenet121": ("specs/torchvision/densenet.yaml", "densenet121", 4, (3, 112, 112)),
}


def interleaved(
    ours: Callable[[], float], theirs: Callable[[], float], rounds: int
) -> dict[str, float]:
    """Alternate two timed callables (each returns its own seconds) who-goes-first by round, so
    cache, frequency and load drift hit both alike: medians, the median per-round ratio
    archspec / peer, and the median per-round speed-up peer / archspec."""
    a_times: list[float] = []
    b_times: list[float] = []
    ratios: list[float] = []
    for i in range(rounds):
        if i % 2:
            b, a = theirs(), ours()
        else:
            a, b = ours(), theirs()
        a_times.append(a)
        b_times.append(b)
        ratios.append(a / b)
    return {
        "archspec": statistics.median(a_times),
        "peer": statistics.median(b_times),
        "ratio": statistics.median(ratios),
        "speedup": statistics.median(1 / r for r in ratios),
    }


def step_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x).float().sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(peer: str, rounds: int, device: str, compile_: bool) -> dict:
    """Seconds of one forward+backward of the built spec and of its peer, and their ratio."""
    path, variant, batch, override = CASES[peer]
    shape = override or archspec.check(ROOT / path, variant).input
    assert shape is not None
    torch.manual_seed(0)
    ours = archspec.build(ROOT / path, variant, input_shape=override).to(device).train()
    theirs = build_peer(peer).to(device).train()
    if compile_:
        ours, theirs = torch.compile(ours), torch.compile(theirs)  # type: ignore[assignment]
    x = torch.randn(batch, *shape, device=device)
    for _ in range(3):  # warm-up (and compilation)
        step_time(ours, x), step_time(theirs, x)
    times = interleaved(lambda: step_time(ours, x), lambda: step_time(theirs, x), rounds)
    return {"model": peer, "batch": batch, "input": list(shape), **times}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--models", nargs="*", default=list(CASES))
    args = ap.parse_args()
    rounds = 6 if args.quick else 20
    print(
        f"device: {args.device}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  rounds {rounds}"
    )
    print(f"{'model':24} {'batch':>5} {'archspec ms':>12} {'peer ms':>10} {'ratio':>7}")
    for key in args.models:
        r = compare(key, rounds, args.device, args.compile)
        print(
            f"{r['model']:24} {r['batch']:>5} {1000 * r['archspec']:>12.2f} "
            f"{1000 * r['peer']:>10.2f} {r['ratio']:>7.3f}"
        )


if __name__ == "__main__":
    main()
