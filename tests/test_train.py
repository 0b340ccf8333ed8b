"""The training runner: outputs, resume, signals, divergence, CLI errors (tiny and fast)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import archspec
from archspec.backend.weights import load_weights
from archspec.cli.train import eval_cmd, train
from archspec.run import checkpoint
from archspec.run.data import load
from archspec.run.loop import TrainError, fit
from archspec.run.recipe import Recipe, lr_factor

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
input: [1, 8, 8]
num_classes: 3
stages:
  body:
    - conv: {out: %d, k: 3, pad: 1}
    - bn
    - relu
    - maxpool: {k: 2, stride: 2}
    - flatten
    - dropout: {p: 0.2}
    - linear: {out: $num_classes}
"""
KEYS = {"epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec", "seconds"}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % 4)
    return path


def _fit(
    spec: Path, npz: Path, out: Path, resume: bool = False, seed_model: int = 0, **kw
) -> tuple[torch.nn.Module, list[dict]]:
    report = archspec.check(spec)
    torch.manual_seed(seed_model)
    model = archspec.build(spec)
    recipe = Recipe(data=str(npz), epochs=3, batch_size=16)
    kw.setdefault("threads", 1)  # runs compared bit for bit must not time their thread count
    result = fit(
        model,
        load(str(npz)),
        recipe,
        out,
        input_shape=report.input,
        spec_hash=report.spec_hash,
        resume=resume,
        progress=False,
        **kw,
    )
    return model, result


def _cli(*args: object) -> object:
    return CliRunner().invoke(train, [str(a) for a in args], catch_exceptions=False)


def test_run_writes_well_formed_outputs(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = _cli(spec, "--data", npz, "--epochs", 2, "--batch-size", 16, "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert KEYS <= set(row)
        assert all(isinstance(row[k], (int, float)) for k in KEYS)
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1
        assert row["examples_per_sec"] > 0 and row["seconds"] > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["spec_hash"] == archspec.check(spec).spec_hash
    assert {"model", "optimizer", "scheduler", "rng", "history"} <= set(state)
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["epochs"] == 2 and config["data"]["num_classes"] == 3
    assert "stages" in (out / "spec.yaml").read_text()
    model = archspec.build(spec)
    meta = load_weights(model, out / "model.safetensors")
    assert len(meta["mean"]) == 1

    e = CliRunner().invoke(
        eval_cmd, [str(spec), "--weights", str(out / "model.safetensors"), "--data", str(npz)]
    )
    assert e.exit_code == 0, e.output
    result = json.loads(e.output)
    assert set(result) == {"loss", "accuracy", "examples"} and result["examples"] == 32
    assert result["accuracy"] == pytest.approx(rows[-1]["test_acc"], abs=1e-6)


def _stop_at(stop_at: int) -> Callable[[int], None]:
    def interrupt(step: int) -> None:
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the real handler, at a known step

    return interrupt


@pytest.mark.parametrize("stop_at", [4, 6])  # inside epoch 1, and exactly at its end
def test_resume_after_interrupt_reproduces_uninterrupted_weights(
    spec: Path, npz: Path, tmp_path: Path, stop_at: int
) -> None:
    whole, full = _fit(spec, npz, tmp_path / "whole")
    _, first = _fit(spec, npz, tmp_path / "split", on_step=_stop_at(stop_at))
    assert first.signal == signal.SIGTERM and not first.done
    assert checkpoint.load(tmp_path / "split" / "checkpoint.pt")["scheduler"]["step"] == stop_at
    resumed, second = _fit(spec, npz, tmp_path / "split", resume=True, seed_model=123)
    assert second.done
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    drop = ("seconds", "examples_per_sec")
    assert [{k: v for k, v in h.items() if k not in drop} for h in second.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in full.history
    ]


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    holder: dict[str, torch.nn.Module] = {}

    def poison(step: int) -> None:
        if step == 8:  # inside epoch 2 (6 steps per epoch)
            with torch.no_grad():
                next(holder["m"].parameters()).fill_(float("nan"))

    report = archspec.check(spec)
    holder["m"] = model = archspec.build(spec)
    with pytest.raises(TrainError, match="NaN or infinite.*epoch 2.*last good checkpoint"):
        fit(
            model,
            load(str(npz)),
            Recipe(data=str(npz), epochs=3, batch_size=16),
            out,
            input_shape=report.input,
            spec_hash=report.spec_hash,
            progress=False,
            on_step=poison,
        )
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_nan_loss_cli_message(spec: Path, npz: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        train,
        [
            str(spec),
            "--data",
            str(npz),
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--schedule",
            "none",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "r"),
            "-q",
        ],
    )
    assert r.exit_code == 1
    assert "error: the loss became NaN or infinite" in r.output
    assert "Traceback" not in r.output


def test_truncated_checkpoint_refused_on_resume(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        _cli(spec, "--data", npz, "--epochs", 1, "--batch-size", 16, "--out", out, "-q").exit_code
        == 0
    )
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    r = _cli(spec, "--data", npz, "--epochs", 1, "--batch-size", 16, "--out", out, "--resume")
    assert r.exit_code == 1
    assert "truncated or corrupt checkpoint" in r.output and "Traceback" not in r.output


def test_resume_refuses_checkpoint_of_another_spec(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        _cli(spec, "--data", npz, "--epochs", 1, "--batch-size", 16, "--out", out, "-q").exit_code
        == 0
    )
    spec.write_text(TINY % 5)
    r = _cli(spec, "--data", npz, "--epochs", 1, "--batch-size", 16, "--out", out, "--resume")
    assert r.exit_code == 1 and "different spec" in r.output


def test_resume_refuses_changed_recipe(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        _cli(
            spec, "--data", npz, "--max-steps", 3, "--batch-size", 16, "--out", out, "-q"
        ).exit_code
        == 0
    )
    r = _cli(spec, "--out", out, "--resume", "--lr", "0.1")
    assert r.exit_code == 1 and "--lr 0.005 (now 0.1)" in r.output


def test_existing_run_is_not_overwritten(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _cli(spec, "--data", npz, "--max-steps", 2, "--out", out, "-q").exit_code == 0
    r = _cli(spec, "--data", npz, "--max-steps", 2, "--out", out, "-q")
    assert r.exit_code == 2 and "--resume" in r.output


def test_num_classes_disagreeing_with_data_is_refused(npz: Path, tmp_path: Path) -> None:
    r = _cli(ROOT / "specs" / "lenet.yaml", "--data", npz, "--out", tmp_path / "r")
    assert r.exit_code == 1
    assert "num_classes 10" in r.output and "3 classes" in r.output
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_missing_torchvision_data_says_download(tmp_path: Path) -> None:
    r = _cli(
        ROOT / "specs" / "lenet.yaml",
        "--data",
        "fashion-mnist",
        "--data-root",
        tmp_path,
        "--out",
        tmp_path / "r",
    )
    assert r.exit_code == 1 and "--download" in r.output and "Traceback" not in r.output


def test_max_steps_spans_schedule_and_stops(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert (
        _cli(
            spec, "--data", npz, "--max-steps", 8, "--batch-size", 16, "--out", out, "-q"
        ).exit_code
        == 0
    )
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["scheduler"]["step"] == 8 and state["epoch"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_onecycle_schedule_shape() -> None:
    f = [lr_factor(s, 100, "onecycle") for s in range(100)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0, abs=1e-3)
    assert f[-1] == pytest.approx(1e-4, abs=1e-6)
    assert lr_factor(0, 100, "none") == 1.0
    assert lr_factor(99, 100, "cosine") < 0.01


def interrupted(
    args: list[str], cwd: Path, act: Callable[[subprocess.Popen[str]], None], **env: str
) -> tuple[int, str, float]:
    """Run `archspec train ARGS` until its first epoch line, then ``act(proc)`` (a signal):
    its exit status, the rest of its stderr, and the seconds from ``act`` to the exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    cmd = [sys.executable, "-m", "archspec", "train", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # first epoch line: the loop is running
            if line.startswith("epoch 1/"):
                break
        t0 = time.monotonic()
        act(proc)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_leaves_loadable_checkpoint(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [str(spec), "--data", str(npz), "--epochs", "100000", "--batch-size", "16"]
    code, err, _ = interrupted(
        [*args, "--out", str(out)], tmp_path, lambda p: p.send_signal(signal.SIGTERM)
    )
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    state = checkpoint.load(out / "checkpoint.pt")
    model = archspec.build(spec)
    model.load_state_dict(state["model"])
    assert state["epoch"] >= 1
    assert (out / "model.safetensors").exists()


def test_thread_count_is_timed_for_small_models_and_kept_on_resume(
    spec: Path, npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import archspec.run.loop as runner

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # a 2-core machine, whatever runs this
    timed: list[int] = []
    real = runner._num_threads

    def counting(n: int):
        timed.append(n)
        return real(n)

    monkeypatch.setattr(runner, "_num_threads", counting)
    _fit(spec, npz, tmp_path / "run", threads=None, on_step=_stop_at(4))
    chosen = json.loads((tmp_path / "run" / "config.json").read_text())["threads"]
    assert chosen in (1, 2) and {1, 2} <= set(timed)  # both were timed before training
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["threads"] == chosen
    timed.clear()
    _fit(spec, npz, tmp_path / "run", threads=None, resume=True)
    assert timed == [chosen]  # the resumed run trains on the same count, timing nothing

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    timed.clear()
    _fit(spec, npz, tmp_path / "env", threads=None)
    assert timed == [2]  # OMP_NUM_THREADS wins: nothing timed


def test_a_long_epoch_off_a_terminal_prints_progress_lines(
    spec: Path, npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import archspec.run.loop as runner

    # every look is "30 s later": each step of this tiny run stands for a long epoch's minute
    monkeypatch.setattr(runner, "PLAIN_PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(runner._Cadence, "PERIOD_S", 0.0)
    report = archspec.check(spec)
    fit(
        archspec.build(spec),
        load(str(npz)),
        Recipe(data=str(npz), epochs=1, batch_size=16),
        tmp_path / "run",
        input_shape=report.input,
        spec_hash=report.spec_hash,
        threads=1,
    )
    err = capsys.readouterr().err
    steps = re.findall(
        r"^epoch 1/1  step (\d+)/6  loss [\d.]+  acc [\d.]+  \d+ img/s$", err, re.MULTILINE
    )
    assert [int(s) for s in steps] == [1, 2, 3, 4, 5, 6], err
    assert re.search(r"^epoch 1/1  loss [\d.]+  acc [\d.]+  test [\d.]+", err, re.MULTILINE), err
