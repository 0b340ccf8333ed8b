"""Data-parallel training under torchrun (docs/distributed.md), on CPU with gloo.

Each torchrun start costs a few seconds of imports, so every test launches once: the same
weights as one process, resume across process counts, a signal, and a killed rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import archspec
from archspec import checkpoint, distributed
from archspec.data import epoch_order, load
from archspec.train import Recipe, fit
from archspec.train_cli import train

ROOT = Path(__file__).resolve().parents[1]
# No BatchNorm and no dropout: one process and two must then agree to rounding.
SPEC = """\
name: tiny
input: [1, 8, 8]
num_classes: 3
stages:
  body:
    - conv: {out: 4, k: 3, pad: 1}
    - relu
    - maxpool: {k: 2, stride: 2}
    - flatten
    - linear: {out: $num_classes}
"""
RUN_FILES = {
    "checkpoint.pt",
    "config.json",
    "curves.png",
    "metrics.jsonl",
    "model.safetensors",
    "spec.yaml",
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    """96 train / 32 test 8x8 images; the class is which third of the image is bright."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 60, (n, 8, 8))
        for i, c in enumerate(y):
            x[i, :, c * 3 : c * 3 + 2] += 150
        return x.astype(np.uint8), y.astype(np.uint8)

    (xtr, ytr), (xte, yte) = make(96), make(32)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def _one_process(spec: Path, npz: Path, out: Path, *args: object) -> None:
    r = CliRunner().invoke(
        train,
        [str(spec), "--data", str(npz), "--batch-size", "16", "--out", str(out), "-q"]
        + [str(a) for a in args],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output


def _torchrun(*args: object) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "archspec",
        "train",
        *map(str, args),
    ]


def _nproc(*args: object) -> list[str]:
    return [sys.executable, "-m", "archspec", "train", "--nproc", "2", *map(str, args)]


def _weights_differ(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [row["epoch"] for row in a] == [row["epoch"] for row in b]
    for x, y in zip(a, b):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), (x["epoch"], key)


def _worker(launcher: int, rank: int) -> int:
    """The pid of the launcher's child that torchrun made rank ``rank``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(d.name)
    raise AssertionError(f"no rank {rank} under pid {launcher}")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120
    )


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start a long run and return once its first epoch is done."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("epoch 1/"):
            return proc
    proc.wait()
    raise AssertionError(f"the run ended before its first epoch: {proc.returncode}")


# --------------------------------------------------------------------------- no processes


@pytest.mark.parametrize("n,bs,size", [(96, 16, 2), (100, 16, 4), (10, 16, 3), (7, 4, 2)])
def test_shards_of_the_ranks_are_the_global_batches(n: int, bs: int, size: int) -> None:
    order = epoch_order(n, 3, 1)
    parts = [distributed.shard(order, bs, distributed.World(r, size)) for r in range(size)]
    assert len({len(p) for p in parts}) == 1  # equal shares: DDP's mean is the global mean
    per = bs // size if n >= bs else len(parts[0])
    batches = [torch.cat([p[i : i + per] for p in parts]) for i in range(0, len(parts[0]), per)]
    kept = len(batches) * bs if n >= bs else n - n % size
    assert torch.equal(torch.cat(batches), order[:kept])


def test_batch_size_must_split_over_nproc(spec: Path, npz: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(train, [str(spec), "--nproc", "2", "--batch-size", "15"])
    assert r.exit_code == 2 and "split evenly over --nproc 2" in r.output


def test_sync_bn_needs_cuda(spec: Path) -> None:
    r = CliRunner().invoke(train, [str(spec), "--device", "cpu", "--sync-bn"])
    assert r.exit_code == 2 and "--sync-bn needs CUDA" in r.output


# --------------------------------------------------------------------------- torchrun


def test_two_processes_train_the_weights_of_one(spec: Path, npz: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(spec, npz, one, "--epochs", 2)
    r = _run(
        _torchrun(spec, "--data", npz, "--epochs", 2, "--batch-size", 16, "--out", two), tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert _weights_differ(one, two) < 1e-5
    # written once, by rank 0: one line per epoch, one summary, no other files
    assert sorted(p.name for p in two.iterdir()) == sorted(RUN_FILES)
    assert [row["epoch"] for row in _rows(two)] == [1, 2]
    assert r.stdout.count("test accuracy") == 1 and r.stderr.count("epoch 2/2") == 1
    _same_metrics(_rows(one), _rows(two))
    state = checkpoint.load(two / "checkpoint.pt")
    assert not any(k.startswith("module.") for k in state["model"])
    assert len(state["rng_ranks"]) == 2
    assert json.loads((two / "config.json").read_text())["world_size"] == 2


def test_nproc_resumes_a_one_process_checkpoint(spec: Path, npz: Path, tmp_path: Path) -> None:
    """Stopped in epoch 1 on one process, finished on two: the weights of an uninterrupted
    run (the partial epoch's sums and the batches carry over)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    _one_process(spec, npz, whole, "--epochs", 2)
    report = archspec.check(spec)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    torch.manual_seed(0)
    first = fit(
        archspec.build(spec),
        load(str(npz)),
        Recipe(data=str(npz), epochs=2, batch_size=16),
        split,
        input_shape=report.input,
        spec_hash=report.spec_hash,
        progress=False,
        on_step=interrupt,
    )
    assert first.signal == signal.SIGTERM
    r = _run(_nproc(spec, "--resume", "--out", split), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming at epoch 1 step 4" in r.stderr
    assert _weights_differ(whole, split) < 1e-5
    _same_metrics(_rows(whole), _rows(split))


def test_sigterm_stops_every_rank_with_one_checkpoint(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start(_nproc(spec, "--data", npz, "--epochs", 100000, "--out", out), tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("stopped by SIGTERM") == 1 and err.count("resume with:") == 1
    assert "Traceback" not in err
    state = checkpoint.load(out / "checkpoint.pt")
    model = archspec.build(spec)
    model.load_state_dict(state["model"])  # the keys of one process
    assert len(_rows(out)) >= state["epoch"] >= 1


def test_killed_rank_fails_the_run_quickly(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(_nproc(spec, "--data", npz, "--epochs", 100000, "--out", out), tmp_path)
    try:
        victim = _worker(proc.pid, 1)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert f"error: rank 1 (pid {victim}) was killed by SIGKILL" in err
    assert took < 60 and "Traceback" not in err
