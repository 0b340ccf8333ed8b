"""How long archspec itself takes: `import archspec`, `check` per spec, and `build` (real and on
the meta device), median of several runs in one process. Prints a Markdown table.

    python benchmarks/check_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("specs/lenet.yaml", None),
    ("specs/resnet18.yaml", None),
    ("specs/googlenet.yaml", None),
    ("specs/torchvision/resnet.yaml", "resnet152"),
    ("specs/torchvision/inception_v3.yaml", None),
    ("specs/torchvision/densenet.yaml", "densenet201"),
]


def median_ms(fn: Callable[..., object], runs: int, *args: Any, **kwargs: Any) -> float:
    fn(*args, **kwargs)  # warm: first-use costs (pydantic schemas, torch) are not what a loop pays
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two specs, one run each")
    args = ap.parse_args()
    cases, runs = (CASES[:2], 1) if args.quick else (CASES, 5)

    t = time.perf_counter()
    import archspec

    imported = (time.perf_counter() - t) * 1000
    assert "torch" not in sys.modules, "import archspec must not import torch"
    print(f"import archspec: {imported:.0f} ms (torch not imported)\n")
    print("| spec | variant | layers | check | build | build on meta |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for spec, variant in cases:
        path = ROOT / spec
        layers = len(archspec.check(path, variant).layers)
        check = median_ms(archspec.check, runs, path, variant)
        build = median_ms(archspec.build, runs, path, variant)
        meta = median_ms(archspec.build, runs, path, variant, device="meta")
        cells = [
            spec,
            variant or "-",
            str(layers),
            *(f"{ms:.0f} ms" for ms in (check, build, meta)),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
