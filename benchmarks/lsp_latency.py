"""How long the language server's re-check takes after an edit, in a warm server.

Prints the slowest shipped specs to check from scratch, then takes the largest variant of each
big family (resnet152, densenet201, inception_v3) and edits it as a user would: a value in the
last stage, a stage's width, the stem's width (every shape after it changes), a line inside a
template (every use of it is lowered again), a comment. It times the server's check
(`archspec.lsp.engine.Engine`, what `archspec lsp` runs on each change) on each new text. Every
edit gives a text not seen before, so no answer is a replay; each result is compared with a
fresh `check_text` of the same text. Prints a Markdown table and the median over all edits:
wall time (the latency), and the CPU time of the checking thread, which on a shared machine is
closer to what a quiet one would see.

    python benchmarks/lsp_latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archspec import variants
from archspec.analysis.report import check_text
from archspec.lsp.engine import Engine

# Per spec: (what, the text edited, its replacement for run i): every run writes a new text.
EDITS = {
    "specs/torchvision/resnet.yaml": [
        ("last stage: fc out", "fc: {linear: {out: $num_classes}}", "fc: {{linear: {{out: {}}}}}"),
        ("a stage's width", "with: {planes: 512}", "with: {{planes: {}}}"),
        ("stem width (all shapes)", "conv1: {conv: {out: 64,", "conv1: {{conv: {{out: {},"),
        (
            "inside a template",
            "- conv: {out: $planes * 4, k: 1,",
            "- conv: {{out: $planes * 4 + 0 * {}, k: 1,",
        ),
        ("a comment", "# blocks per stage", "# blocks per stage, {}"),
    ],
    "specs/torchvision/inception_v3.yaml": [
        ("last stage: fc out", "fc: {linear: {out: $num_classes}}", "fc: {{linear: {{out: {}}}}}"),
        (
            "a stage's width",
            "Mixed_6d: {inception_c: {c7: 160}}",
            "Mixed_6d: {{inception_c: {{c7: {}}}}}",
        ),
        (
            "stem width (all shapes)",
            "Conv2d_1a_3x3: {basic_conv: {c: 32,",
            "Conv2d_1a_3x3: {{basic_conv: {{c: {},",
        ),
        (
            "inside a template",
            "- basic_conv: {c: 448, name: branch3x3dbl_1}",
            "- basic_conv: {{c: 448 + 0 * {}, name: branch3x3dbl_1}}",
        ),
        ("a comment", "# Default: inception_v3", "# Default ({}): inception_v3"),
    ],
    "specs/torchvision/densenet.yaml": [
        (
            "last stage: classifier out",
            "classifier: {linear: {out: $num_classes}}",
            "classifier: {{linear: {{out: {}}}}}",
        ),
        ("growth (all shapes)", "growth: 32 ", "growth: {} "),
        (
            "inside a template",
            "- conv: {out: $growth, k: 3, pad: 1,",
            "- conv: {{out: $growth + 0 * {}, k: 3, pad: 1,",
        ),
        ("a comment", "# channels each dense layer adds", "# channels each dense layer adds {}"),
    ],
}


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def slowest(runs: int = 3) -> list[tuple[float, str, str | None]]:
    """Every shipped spec and variant by the time of a fresh check, slowest first."""
    out = []
    for spec in sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").rglob("*.yaml")):
        text = (ROOT / spec).read_text()
        for variant in [None, *variants(ROOT / spec)]:
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                check_text(text, spec, variant)
                times.append(time.perf_counter() - t)
            out.append((ms(times), spec, variant))
    return sorted(out, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="edits of each kind (default 20)")
    args = ap.parse_args()

    ranking = slowest()
    print("Fresh check (`check_text`), the slowest specs and variants:\n")
    for t, spec, variant in ranking[:5]:
        print(f"- {spec} {variant or '(base)'}: {t:.1f} ms")
    every = []
    for spec, edits in EDITS.items():
        variant = largest(spec)
        every += bench(spec, variant, edits, args.runs)
    print(f"\nmedian re-check after an edit, all of the above: {ms(every):.1f} ms")


def largest(spec: str) -> str | None:
    """The variant with the most layers (resnet152, densenet201...): the most to re-check."""
    text = (ROOT / spec).read_text()
    return max([None, *variants(ROOT / spec)], key=lambda v: len(check_text(text, spec, v).layers))


def bench(spec: str, variant: str | None, edits: list, runs: int) -> list[float]:
    text = (ROOT / spec).read_text()
    engine = Engine()
    engine.check(text, spec, variant)  # the server checks a spec when it opens
    print(f"\nRe-check of {spec} {variant or '(base)'} after an edit, warm, {runs} edits each:\n")
    print("| edit | median | max | CPU median | fresh check | fresh CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    every = []
    for what, old, new in edits:
        assert old in text, old
        times, cpu, fresh, fresh_cpu = [], [], [], []
        for i in range(runs):
            edited = text.replace(old, new.format(i + 2), 1)
            t, c = time.perf_counter(), time.thread_time()
            got = engine.check(edited, spec, variant)
            times.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            t, c = time.perf_counter(), time.thread_time()
            want = check_text(edited, spec, variant)
            fresh.append(time.perf_counter() - t)
            fresh_cpu.append(time.thread_time() - c)
            assert got.report.to_json() == want.to_json(), what  # the same answer, faster
        every += times
        print(
            f"| {what} | {ms(times):.1f} ms | {max(times) * 1000:.1f} ms | {ms(cpu):.1f} ms "
            f"| {ms(fresh):.1f} ms | {ms(fresh_cpu):.1f} ms |"
        )
    print(f"\nmedian: {ms(every):.1f} ms")
    return every


if __name__ == "__main__":
    main()
