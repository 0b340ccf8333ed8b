"""Forward+backward time of each compiled spec against the seed's hand-written module.

Both models run in one process, interleaved (A, B, A, B, ...) so that machine noise hits both
alike; the figure is the median of per-round ratios archspec / hand-written (1.00 = equal).

    python benchmarks/model_speed.py [--quick] [--device cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import archspec  # noqa: E402
from seed_reference import SEEDS  # noqa: E402

# seed key -> (spec, variant, batch, input override for speed on a CPU)
CASES = {
    "lenet": ("specs/lenet.yaml", None, 256, None),
    "alexnet": ("specs/alexnet.yaml", None, 8, None),
    "vgg_small": ("specs/vgg.yaml", "small", 4, None),
    "nin": ("specs/nin.yaml", None, 8, None),
    "googlenet": ("specs/googlenet.yaml", None, 16, None),
    "inception_mnist": ("specs/inception_mnist.yaml", None, 128, None),
    "resnet18": ("specs/resnet18.yaml", None, 16, None),
    "densenet": ("specs/densenet.yaml", None, 16, None),
}


def step_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x).float().sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(key: str, rounds: int, device: str, compile_: bool) -> dict:
    path, variant, batch, shape = CASES[key]
    factory, seed_shape = SEEDS[key]
    torch.manual_seed(0)
    ours = archspec.build(ROOT / path, variant).to(device).train()
    theirs = factory().to(device).train()
    if compile_:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    x = torch.randn(batch, *(shape or seed_shape), device=device)
    for _ in range(3):  # warm-up (and compilation)
        step_time(ours, x), step_time(theirs, x)
    ratios, a_times, b_times = [], [], []
    for i in range(rounds):
        # alternate who goes first so cache and frequency effects cancel
        if i % 2:
            b, a = step_time(theirs, x), step_time(ours, x)
        else:
            a, b = step_time(ours, x), step_time(theirs, x)
        a_times.append(a)
        b_times.append(b)
        ratios.append(a / b)
    return {
        "model": key,
        "batch": batch,
        "archspec_ms": 1000 * statistics.median(a_times),
        "seed_ms": 1000 * statistics.median(b_times),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--models", nargs="*", default=list(CASES))
    args = ap.parse_args()
    rounds = 6 if args.quick else 20
    print(f"device: {args.device}  torch {torch.__version__}  threads {torch.get_num_threads()}  rounds {rounds}")
    print(f"{'model':16} {'batch':>5} {'archspec ms':>12} {'seed ms':>10} {'ratio':>7}")
    for key in args.models:
        r = compare(key, rounds, args.device, args.compile)
        print(f"{r['model']:16} {r['batch']:>5} {r['archspec_ms']:>12.2f} {r['seed_ms']:>10.2f} {r['ratio']:>7.3f}")


if __name__ == "__main__":
    main()
