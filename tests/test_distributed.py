"""Data-parallel training under torchrun (docs/distributed.md), on CPU with gloo.

Each torchrun start costs a few seconds of imports, so every test launches once: the same
weights as one process, resume across process counts, a signal, and a killed rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_train import TINY, _fit, interrupted

import archspec
from archspec.cli.train import train
from archspec.run import checkpoint, distributed
from archspec.run.data import epoch_order

ROOT = Path(__file__).resolve().parents[1]
# test_train's spec less BatchNorm and dropout: one process and two must then agree to rounding.
SPEC = "".join(
    line for line in (TINY % 4).splitlines(True) if "bn" not in line and "drop" not in line
)
RUN_FILES = {
    "checkpoint.pt",
    "config.json",
    "curves.png",
    "metrics.jsonl",
    "model.safetensors",
    "spec.yaml",
    ".archspec.lock",  # rank 0's lock on the run directory (docs/cli.md)
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
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
    """`archspec train --nproc 2 ARGS` without the `archspec train`."""
    return ["--nproc", "2", *map(str, args)]


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
    _one_process(spec, npz, whole, "--epochs", 3)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    assert _fit(spec, npz, split, on_step=interrupt)[1].signal == signal.SIGTERM
    archspec_train = [sys.executable, "-m", "archspec", "train"]
    r = _run([*archspec_train, *_nproc(spec, "--resume", "--out", split)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming at epoch 1 step 4" in r.stderr
    assert _weights_differ(whole, split) < 1e-5
    _same_metrics(_rows(whole), _rows(split))


def test_sigterm_stops_every_rank_with_one_checkpoint(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, err, _ = interrupted(
        _nproc(spec, "--data", npz, "--epochs", 100000, "--out", out),
        tmp_path,
        lambda proc: proc.send_signal(signal.SIGTERM),
        OMP_NUM_THREADS="1",
    )
    assert code == 128 + signal.SIGTERM, err
    assert err.count("stopped by SIGTERM") == 1 and err.count("resume with:") == 1
    assert "Traceback" not in err
    state = checkpoint.load(out / "checkpoint.pt")
    model = archspec.build(spec)
    model.load_state_dict(state["model"])  # the keys of one process
    assert len(_rows(out)) >= state["epoch"] >= 1


def test_killed_rank_fails_the_run_quickly(spec: Path, npz: Path, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_rank_1(proc: subprocess.Popen[str]) -> None:
        killed.append(_worker(proc.pid, 1))
        os.kill(killed[0], signal.SIGKILL)

    args = _nproc(spec, "--data", npz, "--epochs", 100000, "--out", tmp_path / "run")
    code, err, took = interrupted(args, tmp_path, kill_rank_1, OMP_NUM_THREADS="1")
    assert code == 1, err
    assert f"error: rank 1 (pid {killed[0]}) was killed by SIGKILL" in err
    assert took < 60 and "Traceback" not in err


def test_nan_stops_every_rank_with_one_message(spec: Path, npz: Path, tmp_path: Path) -> None:
    nan = ["--optimizer", "sgd", "--lr", "1e30", "--schedule", "none", "--epochs", 2, "-q"]
    archspec_train = [sys.executable, "-m", "archspec", "train"]
    r = _run(
        [*archspec_train, *_nproc(spec, "--data", npz, *nan, "--out", tmp_path / "r")], tmp_path
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("error: the loss became NaN or infinite") == 1
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr
