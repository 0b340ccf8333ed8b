"""Training memory: archspec's static estimate and torchinfo's against what torch measures.

For every spec in specs/ and specs/torchvision/ and each of its variants, at one batch size:

  measured     bytes of the distinct storages autograd saves in one training-mode forward
               (archspec.backend.measure.saved_bytes; CPU, parameters and buffers excluded)
  archspec     `archspec check --batch N` activations_bytes (no torch, no forward pass)
  torchinfo    torchinfo.summary(...).total_output_bytes, its "Forward/backward pass size"

and the ratios to the measurement. With --gpu (on a CUDA machine) it also takes one full
training step per spec and dtype and compares torch.cuda.max_memory_allocated with archspec's
peak_bytes and torchinfo's "Estimated Total Size". With --cpu-peak, the same against the CPU
allocator's high-water mark (profiler trace).

    python benchmarks/memory.py                       # all specs, batch 32, markdown table
    python benchmarks/memory.py --gpu --batch 128 specs/torchvision/resnet.yaml:resnet18
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import archspec
from archspec.analysis.memory import estimate
from archspec.backend.measure import cpu_step_peak, make_optimizer, saved_bytes, train_step

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def all_cases() -> list[tuple[str, str | None]]:
    paths = sorted((ROOT / "specs").glob("*.yaml")) + sorted(
        (ROOT / "specs" / "torchvision").glob("*.yaml")
    )
    out: list[tuple[str, str | None]] = []
    for p in paths:
        rel = str(p.relative_to(ROOT))
        names = archspec.variants(p)
        out.append((rel, None))
        out += [(rel, v) for v in names]
    return out


def parse_case(text: str) -> tuple[str, str | None]:
    spec, _, variant = text.partition(":")
    return spec, variant or None


def torchinfo_stats(model: torch.nn.Module, shape: tuple[int, ...], device: str):
    import torchinfo

    with torch.no_grad():  # its numbers come from output sizes; no graph needed to read them
        return torchinfo.summary(model, input_size=shape, verbose=0, mode="train", device=device)


def isolated(
    kind: str, spec: str, variant: str | None, args: argparse.Namespace, **extra: str
) -> dict:
    """Run one measurement in a fresh interpreter: a few GiB of activations per spec leave the
    CPU allocator fragmented, and the next spec would be measured (or killed) on top of it."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        kind,
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        f"{spec}:{variant or ''}",
    ]
    for k, v in extra.items():
        cmd += [f"--{k}", v]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(
            f"{spec}:{variant}: measurement failed (exit {r.returncode})\n{r.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


def cpu_row(spec: str, variant: str | None, batch: int) -> dict:
    report = archspec.check(ROOT / spec, variant)
    assert report.ok, report.render_errors()
    est = estimate(report.network, batch)
    torch.manual_seed(0)
    model = archspec.build(ROOT / spec, variant)
    x = torch.randn(batch, *report.network.input)
    t0 = time.perf_counter()
    measured = saved_bytes(model, x)
    t_measure = time.perf_counter() - t0
    info = torchinfo_stats(model, tuple(x.shape), "cpu").total_output_bytes
    del model, x
    gc.collect()
    return {
        "spec": spec,
        "variant": variant,
        "measured": measured,
        "archspec": est.activations_bytes,
        "torchinfo": info,
        "seconds": t_measure,
    }


def step_peak_row(
    spec: str, variant: str | None, batch: int, dtype: str, optimizer: str, device: str
) -> dict:
    report = archspec.check(ROOT / spec, variant)
    assert report.ok, report.render_errors()
    est = estimate(report.network, batch, dtype, optimizer, device)
    torch.manual_seed(0)
    model = archspec.build(ROOT / spec, variant).to(device)
    x = torch.randn(batch, *report.network.input, device=device)
    y = torch.randint(0, report.network.num_classes or 2, (batch,), device=device)
    opt = make_optimizer(model, optimizer)
    if device == "cuda":
        train_step(model, x, y, opt, dtype)  # warm-up: optimizer state, cuDNN algorithm choice
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, x, y, opt, dtype)
        measured = torch.cuda.max_memory_allocated()
    else:
        measured = cpu_step_peak(model, x, y, opt, dtype)
    info = torchinfo_stats(model, tuple(x.shape), device)
    info_total = info.total_input + info.total_output_bytes + info.total_param_bytes
    del model, x, y, opt
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "spec": spec,
        "variant": variant,
        "dtype": dtype,
        "optimizer": optimizer,
        "measured": measured,
        "archspec": est.peak_bytes,
        "torchinfo": info_total,
        "at": est.peak_at,
    }


def name(row: dict) -> str:
    return f"{Path(row['spec']).with_suffix('')}" + (f":{row['variant']}" if row["variant"] else "")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "cases", nargs="*", help="SPEC or SPEC:VARIANT (default: every spec and variant)"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gpu", action="store_true", help="peak of one training step on CUDA")
    ap.add_argument("--cpu-peak", action="store_true", help="peak of one training step on CPU")
    ap.add_argument("--no-saved", action="store_true", help="skip the saved-bytes table")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--optimizer", default="momentum", choices=["sgd", "momentum", "adamw"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--one", choices=["saved", "cpu", "cuda"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [parse_case(c) for c in args.cases] or all_cases()

    if args.one:  # a child process: one measurement, one JSON line
        ((spec, variant),) = cases
        if args.one == "saved":
            row = cpu_row(spec, variant, args.batch)
        else:
            row = step_peak_row(spec, variant, args.batch, args.dtype, args.optimizer, args.one)
        print(json.dumps(row))
        return

    if not args.no_saved:
        print(f"### Activations saved for backward, batch {args.batch}, float32 (CPU)\n")
        print(
            "| spec | measured MiB | archspec MiB | archspec / measured | torchinfo MiB | torchinfo / measured |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        worst = 0.0
        for spec, variant in cases:
            r = isolated("saved", spec, variant, args)
            ratio = r["archspec"] / r["measured"]
            worst = max(worst, abs(ratio - 1))
            print(
                f"| {name(r)} | {r['measured'] / MiB:,.1f} | {r['archspec'] / MiB:,.1f} | {ratio:.4f} | "
                f"{r['torchinfo'] / MiB:,.1f} | {r['torchinfo'] / r['measured']:.3f} |",
                flush=True,
            )
        print(f"\nlargest archspec deviation: {worst:.2%}\n")

    for device, wanted in (("cpu", args.cpu_peak), ("cuda", args.gpu)):
        if not wanted:
            continue
        if device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping --gpu", file=sys.stderr)
            continue
        what = (
            "torch.cuda.max_memory_allocated"
            if device == "cuda"
            else "CPU allocator high-water mark"
        )
        print(f"### Peak of one training step ({args.optimizer}), batch {args.batch}: {what}\n")
        print(
            "| spec | dtype | measured MiB | archspec MiB | archspec / measured | torchinfo total MiB | "
            "torchinfo / measured | archspec's peak at |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for spec, variant in cases:
            for dtype in args.dtypes.split(","):
                r = isolated(device, spec, variant, args, dtype=dtype, optimizer=args.optimizer)
                print(
                    f"| {name(r)} | {dtype} | {r['measured'] / MiB:,.1f} | {r['archspec'] / MiB:,.1f} | "
                    f"{r['archspec'] / r['measured']:.3f} | {r['torchinfo'] / MiB:,.1f} | "
                    f"{r['torchinfo'] / r['measured']:.3f} | {r['at']} |",
                    flush=True,
                )
        print()


if __name__ == "__main__":
    main()
