"""One benchmark suite: archspec against its peers, measured in the same run, as ratios.

Sections (each a function returning rows; every figure is a median of several repetitions):

  check   `archspec check SPEC` against `torchinfo.summary` of the hand-written model, each a
          fresh process (interpreter start and imports included), for every spec in specs/
  memory  peak RSS of those two processes on the largest spec (the most layers)
  build   `archspec.build` against constructing the hand-written module (seed code/torchvision)
  speed   forward+backward of the built model against the hand-written one, eager and compiled
  train   `archspec train`'s runner against the seeds' recipe (d2l train_ch6 + DataLoader), and on
          a CUDA machine ResNet-18 at 96x96 in bf16, eager and compiled

    python benchmarks/run.py [--quick] [--only SECTION ...] [--reps N] [--specs SPEC[:VARIANT] ...]
        [--json PATH] [--update-doc]
    python benchmarks/run.py --markdown [--json PATH] [--update-doc]   # re-render a saved run

It prints one Markdown table, writes every number to benchmarks/results.json, and with
--update-doc replaces the marked region of docs/PERFORMANCE.md with the table.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from fresh_process import run_fresh
from peers import peer_of

import archspec

SECTIONS = ("check", "memory", "build", "speed", "train")
DOC = ROOT / "docs" / "PERFORMANCE.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PEERS_SCRIPT = str(ROOT / "benchmarks" / "peers.py")


@dataclass
class Config:
    quick: bool = False
    reps: int | None = None  # overrides every section's repetitions
    specs: list[tuple[str, str | None]] = field(default_factory=list)
    default_threads: int | None = None  # torch's own thread count, before --threads
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def n(self, quick: int, full: int) -> int:
        return self.reps or (quick if self.quick else full)


def row(
    section: str,
    case: str,
    peer: str,
    archspec_value: float,
    peer_value: float,
    unit: str,
    ratio: float,
    means: str,  # the ratio's suffix: "x faster", "x less", "x", or "" (archspec / peer)
    goal: str = "",
    met: bool | None = None,
    **extra: Any,
) -> dict:
    """One figure: archspec's and the peer's medians, their ratio (`means` says which way round),
    the goal from the issue and whether it is met (None: no goal)."""
    return {
        "section": section,
        "case": case,
        "peer": peer,
        "archspec": archspec_value,
        "peer_value": peer_value,
        "unit": unit,
        "ratio": ratio,
        "ratio_means": means,
        "goal": goal,
        "met": met,
        **extra,
    }


# ------------------------------------------------------------------ the machine


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchinfo": version("torchinfo"),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def describe(m: dict) -> str:
    gpu = m["gpu"] or "no GPU"
    return (
        f"{m['cpu']}, {m['cores']} cores (load {m['load_avg_1m']:.2f} -> "
        f"{m.get('load_avg_1m_end', m['load_avg_1m']):.2f}), {gpu}; Python {m['python']}, "
        f"torch {m['torch']} ({threads(m['torch_threads'])}), torchinfo {m['torchinfo']}"
    )


# ------------------------------------------------------------------ check: fresh processes


def all_specs() -> list[tuple[str, str | None]]:
    """Every spec file in specs/ and specs/torchvision/, at its default variant."""
    from memory import all_cases

    return [(spec, None) for spec, variant in all_cases() if variant is None]


def largest_spec() -> tuple[str, str | None]:
    """The spec variant with the most layers: what `check`'s time and memory grow with."""
    from memory import all_cases

    return max(all_cases(), key=lambda c: len(archspec.check(ROOT / c[0], c[1]).layers))


def label(spec: str, variant: str | None) -> str:
    return spec + (f" --variant {variant}" if variant else "")


def fresh_pair(spec: str, variant: str | None, reps: int) -> dict:
    """`archspec check` and torchinfo of the same model, each in a fresh interpreter,
    alternating who goes first: median wall seconds and peak RSS of each."""
    from model_speed import interleaved

    report = archspec.check(ROOT / spec, variant)
    assert report.ok and report.input is not None, report.render_errors()
    peer = peer_of(spec, variant)
    assert peer is not None, f"{spec}: no hand-written peer"
    ours_cmd = ["-m", "archspec", "check", spec] + (["--variant", variant] if variant else [])
    theirs_cmd = [PEERS_SCRIPT, peer, "--input", ",".join(map(str, report.input))]
    peaks: dict[str, list[float]] = {"archspec": [], "peer": []}

    def timed(side: str, cmd: list[str]) -> Callable[[], float]:
        def run() -> float:
            r = run_fresh(cmd, cwd=ROOT)
            if r.rc != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.rc}):\n{r.stderr[-2000:]}")
            peaks[side].append(r.peak_mib)
            return r.wall_s

        return run

    t = interleaved(timed("archspec", ours_cmd), timed("peer", theirs_cmd), reps)
    return {
        **t,
        "peer_name": peer,
        "layers": len(report.layers),
        "archspec_mib": statistics.median(peaks["archspec"]),
        "peer_mib": statistics.median(peaks["peer"]),
    }


def warm_bytecode() -> None:
    """Compile archspec and the peers' modules to bytecode first, as an installed package is:
    this machine sets PYTHONDONTWRITEBYTECODE, which would make every fresh `check` recompile
    archspec's source (~40 ms) while torch's installed bytecode is already there."""
    for d in ("archspec", "benchmarks", "tests"):
        compileall.compile_dir(ROOT / d, quiet=1, maxlevels=1 if d == "tests" else 10)


def check_latency(cfg: Config) -> list[dict]:
    warm_bytecode()
    reps = cfg.n(3, 7)
    rows = []
    for spec, variant in cfg.specs or all_specs():
        if peer_of(spec, variant) is None:  # specs/vit_mnist.yaml, unet's paper variant
            cfg.log(f"check {label(spec, variant)}: no hand-written peer, skipped")
            continue
        p = fresh_pair(spec, variant, reps)
        cfg.log(f"check {label(spec, variant)}: {p['archspec']:.3f} s vs {p['peer']:.2f} s")
        rows.append(
            row(
                "check latency",
                label(spec, variant),
                f"torchinfo.summary({p['peer_name']})",
                p["archspec"],
                p["peer"],
                "s",
                p["speedup"],
                "x faster",
                ">= 20x, < 0.3 s",
                p["speedup"] >= 20 and p["archspec"] < 0.3,
                layers=p["layers"],
                archspec_mib=p["archspec_mib"],
                peer_mib=p["peer_mib"],
                reps=reps,
            )
        )
    if len(rows) > 1:
        speedups = [r["ratio"] for r in rows]
        slowest = max(r["archspec"] for r in rows)
        rows.append(
            row(
                "check latency",
                f"all {len(rows)} specs: median (slowest archspec {slowest:.3f} s, "
                f"lowest ratio {min(speedups):.3g}x)",
                "torchinfo.summary",
                statistics.median(r["archspec"] for r in rows),
                statistics.median(r["peer_value"] for r in rows),
                "s",
                statistics.median(speedups),
                "x faster",
                ">= 20x, < 0.3 s",
                min(speedups) >= 20 and slowest < 0.3,
                slowest_archspec=slowest,
                min_ratio=min(speedups),
            )
        )
    return rows


def check_memory(cfg: Config) -> list[dict]:
    warm_bytecode()
    spec, variant = cfg.specs[-1] if cfg.specs else largest_spec()
    reps = cfg.n(2, 5)
    p = fresh_pair(spec, variant, reps)
    cfg.log(f"memory {label(spec, variant)}: {p['archspec_mib']:.0f} vs {p['peer_mib']:.0f} MiB")
    return [
        row(
            "check memory",
            f"{label(spec, variant)} ({p['layers']} layers)",
            f"torchinfo.summary({p['peer_name']})",
            p["archspec_mib"],
            p["peer_mib"],
            "MiB",
            p["peer_mib"] / p["archspec_mib"],
            "x less",
            reps=reps,
            archspec_s=p["archspec"],
            peer_s=p["peer"],
        )
    ]


# ------------------------------------------------------------------ build, speed, train (torch)

BUILD_QUICK = [
    ("specs/lenet.yaml", None),
    ("specs/resnet18.yaml", None),
    ("specs/googlenet.yaml", None),
    ("specs/torchvision/resnet.yaml", "resnet50"),
    ("specs/torchvision/densenet.yaml", "densenet121"),
]


def build_time(cfg: Config) -> list[dict]:
    import torch
    from model_speed import interleaved
    from peers import build_peer

    reps = cfg.n(3, 7)
    cases = cfg.specs or (BUILD_QUICK if cfg.quick else all_specs())
    rows = []
    for spec, variant in cases:
        peer = peer_of(spec, variant)
        if peer is None:
            continue

        def ours(spec: str = spec, variant: str | None = variant) -> float:
            t = time.perf_counter()
            archspec.build(ROOT / spec, variant)
            return 1000 * (time.perf_counter() - t)

        def theirs(peer: str = peer) -> float:
            t = time.perf_counter()
            build_peer(peer)
            return 1000 * (time.perf_counter() - t)

        torch.manual_seed(0)
        first = ours(), theirs()  # first use: generated classes, lazy imports
        t = interleaved(ours, theirs, reps)
        cfg.log(f"build {label(spec, variant)}: {t['archspec']:.1f} ms vs {t['peer']:.1f} ms")
        rows.append(
            row(
                "build time",
                label(spec, variant),
                peer,
                t["archspec"],
                t["peer"],
                "ms",
                t["ratio"],
                "",
                reps=reps,
                first_archspec_ms=first[0],
                first_peer_ms=first[1],
            )
        )
    return rows


SPEED_QUICK = ["seed:lenet", "seed:resnet18", "torchvision:resnet18"]
COMPILED_QUICK = ["seed:lenet"]
COMPILED_FULL = ["seed:lenet", "seed:resnet18", "torchvision:resnet18"]


def model_speed(cfg: Config) -> list[dict]:
    import torch
    from model_speed import CASES, compare

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    plans = [
        ("eager", False, SPEED_QUICK if cfg.quick else list(CASES), cfg.n(10, 20)),
        ("compiled", True, COMPILED_QUICK if cfg.quick else COMPILED_FULL, cfg.n(10, 20)),
    ]
    for mode, compile_, peers, rounds in plans:
        for peer in peers:
            if compile_:
                torch._dynamo.reset()
            r = compare(peer, rounds, device, compile_)
            cfg.log(f"speed {mode} {peer}: ratio {r['ratio']:.3f}")
            shape = "x".join(map(str, r["input"]))
            rows.append(
                row(
                    f"model speed, {mode}",
                    f"{CASES[peer][0]} (batch {r['batch']}, {shape}, {device})",
                    peer,
                    1000 * r["archspec"],
                    1000 * r["peer"],
                    "ms",
                    r["ratio"],
                    "",
                    "<= 1.03",
                    r["ratio"] <= 1.03,
                    reps=rounds,
                )
            )
    return rows


def training(cfg: Config) -> list[dict]:
    """The seed recipe runs as written (d2l's lr, batch 256, 4 DataLoader workers) on torch's
    default thread count, whatever --threads says; archspec's runner uses its own SGD recipe and
    picks its thread count (for a small model on a CPU the faster of 1 and all, timed at the
    start). A second LeNet row gives the seed recipe one thread, to show the effect of threads."""
    import warnings

    import torch
    from train_vs_seed_recipe import compare

    # d2l's 4 DataLoader workers on a 2-core machine: torch warns, the recipe is kept as written
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
    repeats = cfg.n(2, 3)
    n_threads = cfg.default_threads or torch.get_num_threads()

    def figure(section: str, case: str, goal: float | None, **kwargs: Any) -> dict:
        r = compare(repeats=repeats, log=cfg.log, **kwargs)
        return row(
            section,
            case,
            f"seed recipe (d2l train_ch6, {threads(r['seed_threads'])})",
            r["archspec_ips"],
            r["seed_ips"],
            "img/s",
            r["ratio"],
            "x",
            f">= {goal:g}x" if goal else "",
            r["ratio"] >= goal if goal else None,
            reps=repeats,
            archspec_acc=r["archspec_acc"],
            seed_acc=r["seed_acc"],
            seed_d2l_ips=r["seed_d2l_ips"],
            seed_threads=r["seed_threads"],
        )

    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        epochs = 2 if cfg.quick else 10
        case = f"specs/lenet.yaml, MNIST 8000, batch 256, {epochs} epochs, CPU"
        lenet = {"spec": ROOT / "specs/lenet.yaml", "epochs": epochs}
        rows = [figure("training throughput", case, 3, **lenet)]
        if n_threads > 1:
            rows.append(figure("training throughput", case, None, seed_threads=1, **lenet))
        gpu_case = "specs/resnet18.yaml at 96x96, bf16 autocast, batch 256"
        if not torch.cuda.is_available():
            no_gpu = row("training throughput, GPU", gpu_case, "no GPU", 0, 0, "img/s", 0, "")
            return [*rows, no_gpu]
        for mode, compile_ in (("eager", False), ("compiled", True)):
            rows.append(
                figure(
                    f"training throughput, GPU {mode}",
                    gpu_case,
                    None,
                    spec=ROOT / "specs/resnet18.yaml",
                    epochs=2 if cfg.quick else 4,
                    warmup=1,  # the first epoch compiles and picks cuDNN algorithms
                    lr=0.05,  # d2l's ResNet-18 learning rate
                    device="cuda",
                    compile_=compile_,
                )
            )
        return rows
    finally:
        torch.set_num_threads(before)


RUNNERS: dict[str, Callable[[Config], list[dict]]] = {
    "check": check_latency,
    "memory": check_memory,
    "build": build_time,
    "speed": model_speed,
    "train": training,
}


# ------------------------------------------------------------------ output


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:,.0f} {unit}"


def markdown(results: dict) -> str:
    """The results as the Markdown that docs/PERFORMANCE.md holds between the bench markers."""
    command = results.get("command") or "python benchmarks/run.py"
    took = f"{results['wall_s'] / 60:.1f} min, {results['date']}"
    lines = [
        f"`{command}` on {describe(results['machine'])}; {took}.",
        "",
        "| figure | case | peer | archspec | peer's | ratio | goal |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        if r["peer"] in ("no GPU", "error"):
            what = "no GPU on this machine" if r["peer"] == "no GPU" else "error"
            lines.append(f"| {r['section']} | {r['case']} | {what} | | | | |")
            continue
        goal = r["goal"] + (" ✓" if r["met"] else " ✗" if r["met"] is False else "")
        lines.append(
            f"| {r['section']} | {r['case']} | {r['peer']} | {fmt(r['archspec'], r['unit'])} | "
            f"{fmt(r['peer_value'], r['unit'])} | {r['ratio']:.3g}{r['ratio_means']} | {goal} |"
        )
    return "\n".join(lines) + "\n"


def update_doc(text: str, doc: Path = DOC) -> None:
    body = doc.read_text("utf-8")
    if START not in body or END not in body:
        raise SystemExit(f"{doc}: no {START} ... {END} region to replace")
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{text}{END}{tail}", "utf-8")


def command_line(args: argparse.Namespace) -> str:
    """The options that shape the figures (not where they are written)."""
    words = ["python benchmarks/run.py"] + (["--quick"] if args.quick else [])
    for flag, value in (("--threads", args.threads), ("--reps", args.reps)):
        words += [flag, str(value)] if value else []
    words += ["--only", *args.only] if args.only else []
    words += ["--specs", *args.specs] if args.specs else []
    return " ".join(words)


def parse_case(text: str) -> tuple[str, str | None]:
    spec, _, variant = text.partition(":")
    return spec, variant or None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer cases, repetitions and epochs")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--reps", type=int, help="repetitions for every section")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads in this process (build, speed, train); default: torch's",
    )
    ap.add_argument("--specs", nargs="+", metavar="SPEC[:VARIANT]", help="cases for check/build")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"), metavar="PATH")
    ap.add_argument(
        "--markdown", action="store_true", help="run nothing: render the --json file as Markdown"
    )
    ap.add_argument("--update-doc", action="store_true", help=f"rewrite the table in {DOC.name}")
    args = ap.parse_args(argv)
    cfg = Config(args.quick, args.reps, [parse_case(s) for s in args.specs or []])
    if args.markdown:
        saved: dict = json.loads(Path(args.json).read_text())
        print(markdown(saved))
        if args.update_doc:
            update_doc(markdown(saved))
        return saved

    if args.threads:
        import torch

        cfg.default_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "command": command_line(args),
        "machine": machine(),
        "rows": [],
    }
    failed = []
    for name in args.only or SECTIONS:
        t = time.perf_counter()
        try:
            results["rows"] += RUNNERS[name](cfg)
        except Exception:  # noqa: BLE001 -- one broken section must not lose the others' figures
            failed.append(name)
            cfg.log(traceback.format_exc())
            results["rows"].append(row(name, "failed: see the log", "error", 0, 0, "", 0, ""))
        cfg.log(f"[{name}: {time.perf_counter() - t:.0f} s]")
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    results["wall_s"] = time.perf_counter() - start
    results["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)

    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    print(text)
    if args.update_doc and not failed:
        update_doc(text)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
