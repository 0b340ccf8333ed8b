"""Training under faults (issue 8): kill -9 during training and during checkpoint writes,
a disk that fills up, and hostile checkpoint files. test_checkpoint.py and test_train.py
cover the plain cases (round trip, truncated file, SIGTERM, in-process resume); these are
the ones a real machine produces: a process that dies with no chance to clean up, and
writes that fail half-way."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train import TINY
from torch import nn

from archspec.cli.train import eval_cmd, train
from archspec.files import write_text as _write_text
from archspec.run import checkpoint
from archspec.run.rundir import save_weights, write_curves

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 10  # x 192 steps of batch 8: about 0.2 s an epoch on one thread
RECIPE = ("--epochs", str(EPOCHS), "--batch-size", "8", "-q")
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TIMEOUT = 120


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The spec, 1536 train / 64 test images (the bright third of the image is the class),
    and the weights of the uninterrupted run that every interrupted one must reproduce."""
    d = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 1600)
    x = rng.integers(0, 60, (1600, 8, 8))
    for i, c in enumerate(y):
        x[i, :, c * 3 : c * 3 + 2] += 150
    x, y = x.astype(np.uint8), y.astype(np.uint8)
    np.savez(d / "data.npz", x_train=x[:1536], y_train=y[:1536], x_test=x[1536:], y_test=y[1536:])
    (d / "tiny.yaml").write_text(TINY % 4)
    files = {"dir": d, "spec": d / "tiny.yaml", "data": d / "data.npz", "ref": d / "ref"}
    r = _train(files, "--out", files["ref"])
    assert r.exit_code == 0, r.output
    return files


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The in-process runs use one thread like the child processes (OMP_NUM_THREADS=1), so
    that their float sums are bit-for-bit comparable."""
    old_env, old_n = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old_n)
        if old_env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old_env


def _train(files: dict[str, Path], *args: object) -> object:
    argv = [str(files["spec"]), "--data", str(files["data"]), *RECIPE, *map(str, args)]
    with _one_thread():
        return CliRunner().invoke(train, argv, catch_exceptions=False)


def _assert_same_run(out: Path, ref: Path) -> None:
    """Resume is exact: the same weights, optimizer state and metrics (but the timings)."""
    a, b = checkpoint.load(out / "checkpoint.pt"), checkpoint.load(ref / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    for k, t in b["model"].items():
        assert torch.equal(a["model"][k], t), k
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s_a[k], v) for k, v in s_b.items())
    timing = ("seconds", "examples_per_sec")

    def rows(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]

    assert rows(out) == rows(ref)


def _temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob(".*.tmp"))


# ---------------------------------------------------------------- kill -9 while training


def _start(files: dict[str, Path], out: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "archspec", "train", str(files["spec"]), "--out", str(out)]
    return subprocess.Popen(
        [*cmd, *args],
        env=CHILD_ENV,
        cwd=files["dir"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
    if proc.stderr:
        proc.stderr.close()


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _changed(path: Path, since: int) -> Callable[[], bool]:
    return lambda: _mtime(path) != since


def test_kill_9_at_random_points_then_resume_equals_uninterrupted_run(
    files: dict[str, Path], tmp_path: Path
) -> None:
    rng = random.Random(8)
    out = tmp_path / "run"
    ckpt = out / "checkpoint.pt"
    epochs_seen = []

    # 1. Killed before any checkpoint exists: the loop has just started (config.json is
    #    written right before the first step). `--resume` then starts over, reading the
    #    recipe from config.json: the command line needs no training options.
    proc = _start(files, out, "--data", str(files["data"]), *RECIPE)
    _wait_for(proc, (out / "config.json").exists)
    _kill(proc)
    assert not ckpt.exists()
    # 2. and 3. Killed at a random moment after the first / a later checkpoint write of this
    #    process: mid-epoch, mid-evaluation or in the middle of a write.
    for after_writes in (1, 2):
        before = _mtime(ckpt)
        proc = _start(files, out, "--resume")
        _wait_for(proc, _changed(ckpt, before))
        if after_writes == 2:
            first = _mtime(ckpt)
            _wait_for(proc, _changed(ckpt, first))
        time.sleep(rng.uniform(0.0, 0.5))
        _kill(proc)
        state = checkpoint.load(ckpt)  # never a half-written file
        epochs_seen.append(state["epoch"])
        assert len(_temps(out)) <= 2  # at most the killed writer's own (checkpoint, metrics)
        assert json.loads((out / "config.json").read_text())["recipe"]["epochs"] == EPOCHS
    assert epochs_seen[0] >= 1 and epochs_seen[-1] < EPOCHS

    final = subprocess.run(
        [sys.executable, "-m", "archspec", "train", str(files["spec"]), "--out", str(out)]
        + ["--resume"],
        env=CHILD_ENV,
        cwd=files["dir"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    assert _temps(out) == []  # a killed writer's temporary files went with the next write
    _assert_same_run(out, files["ref"])


# ---------------------------------------------------------------- kill -9 while writing

WRITER = """\
import sys, torch
from archspec.run import checkpoint
path, v = sys.argv[1], int(sys.argv[2])
while True:  # 8 MB a version: most of the time is spent inside a write
    checkpoint.save({"v": v, "x": torch.full((2_000_000,), float(v))}, path)
    print(v, flush=True)
    v += 1
"""


def test_kill_9_during_checkpoint_writes_leaves_old_or_new_file(tmp_path: Path) -> None:
    rng = random.Random(9)
    path = tmp_path / "checkpoint.pt"
    v, stale, mid_write = 0, None, 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(v)],
            env=CHILD_ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        done = int(proc.stdout.readline())  # one whole version written by this process
        if stale is not None:  # ... and the dead writer's temporary file is gone
            assert not (tmp_path / stale).exists()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait(TIMEOUT)
        done = max([done, *map(int, proc.stdout.read().split())])
        proc.stdout.close()
        state = checkpoint.load(path)  # the old or the new version, whole
        assert state["v"] in (done, done + 1)
        assert torch.equal(state["x"], torch.full((2_000_000,), float(state["v"])))
        temps = _temps(tmp_path)
        assert temps == [] or (  # the killed writer's own, in an unguessable name
            len(temps) == 1 and temps[0].startswith(f".checkpoint.pt.{proc.pid}.")
        )
        mid_write += bool(temps)
        stale = temps[0] if temps else None
        v = state["v"] + 1
    assert mid_write  # at least one kill landed inside a write
    checkpoint.save({"v": v}, path)
    assert _temps(tmp_path) == [] and checkpoint.load(path)["v"] == v


def test_stale_temp_files_of_live_writers_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    names = {
        "dead": f".checkpoint.pt.{dead.pid}.tmp",
        "live": f".checkpoint.pt.{os.getppid()}.tmp",  # another process still writing
        "other": ".checkpoint.pt.notapid.tmp",
        "other file": f".metrics.jsonl.{dead.pid}.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"PK\x03\x04 half")
    checkpoint.save({"v": 1}, path)
    left = set(_temps(tmp_path))
    assert names["dead"] not in left
    assert {names["live"], names["other"], names["other file"]} <= left


# ---------------------------------------------------------------- a full disk


@contextlib.contextmanager
def _file_size_limit(n: int) -> Iterator[None]:
    """A real failing write: past ``n`` bytes the kernel refuses it (EFBIG, the way a full
    disk refuses with ENOSPC), whichever library writes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


WRITERS = {
    "checkpoint.pt": lambda p, n: checkpoint.save({"w": torch.ones(n * 100)}, p),
    "model.safetensors": lambda p, n: save_weights(nn.Linear(n * 10, 10), p, {"mean": [0.5]}),
    "metrics.jsonl": lambda p, n: _write_text(p, '{"epoch": 1}\n' * n * 50),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_failing_write_keeps_previous_file_and_names_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    WRITERS[name](path, 1)
    before = path.read_bytes()
    with _file_size_limit(256), pytest.raises(OSError) as info:
        WRITERS[name](path, 20)
    assert info.value.errno == errno.EFBIG  # the system's reason, not torch's "unexpected pos"
    assert info.value.filename == str(path)  # the file the user knows, not the temporary one
    assert path.read_bytes() == before
    assert _temps(tmp_path) == []


def test_failing_curves_write_keeps_previous_png(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    row = {"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5}
    write_curves([row], path, "before")
    before = path.read_bytes()
    with _file_size_limit(256), pytest.raises(OSError) as info:
        write_curves([row, {**row, "epoch": 2}], path, "after")
    assert info.value.errno == errno.EFBIG and info.value.filename == str(path)
    assert path.read_bytes() == before and _temps(tmp_path) == []


def test_disk_full_during_fit_keeps_checkpoint_then_resume_is_exact(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third checkpoint write runs out of space half-way: the run stops with one line
    naming the file and the reason, the second checkpoint is intact, --resume finishes the
    run as if nothing had happened."""
    out = tmp_path / "run"
    real = torch.save
    writes = 0

    def full_disk(obj: object, f: object, *args: object, **kw: object) -> None:
        nonlocal writes
        writes += 1
        if writes < 3:
            return real(obj, f, *args, **kw)
        buf = io.BytesIO()
        real(obj, buf)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(half)
        else:
            f.write(half)  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    r = _train(files, "--out", out)
    monkeypatch.undo()
    assert r.exit_code == 1
    text = r.output.strip()
    assert "\n" not in text and "Traceback" not in text
    assert text.startswith(f"error: {out / 'checkpoint.pt'}: No space left on device")
    assert "last checkpoint (epoch 2 step 0)" in text and "--resume" in text
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 2
    assert _temps(out) == []

    r = _train(files, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    _assert_same_run(out, files["ref"])


# ---------------------------------------------------------------- hostile files


class Payload:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _cli(command: object, *args: object) -> object:
    return CliRunner().invoke(command, [str(a) for a in args])  # type: ignore[arg-type]


def test_checkpoint_with_code_is_refused_without_running_it(
    files: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    evil = out / "checkpoint.pt"
    state = {"format": checkpoint.FORMAT, "recipe": {"epochs": 1}, "model": Payload(marker)}
    torch.save(state, evil)
    torch.load(evil, weights_only=False)  # the payload is live: a plain load runs it
    assert marker.exists()
    marker.unlink()
    legacy = tmp_path / "legacy.pt"  # the pre-zip torch format, and a bare pickle
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(__import__("pickle").dumps(Payload(marker)))

    spec, data = files["spec"], files["data"]
    runs = [
        (_cli(train, spec, "--data", data, "--out", out, "--resume"), "refusing to unpickle"),
        (_cli(eval_cmd, spec, "--data", data, "--weights", evil), "refusing to unpickle"),
        (_cli(eval_cmd, spec, "--data", data, "--weights", legacy), "not a checkpoint"),
        (_cli(eval_cmd, spec, "--data", data, "--weights", raw), "not a checkpoint"),
        (_cli(train, spec, "--data", data, "--out", tmp_path / "r2", "--init", evil), "help:"),
    ]
    for r, says in runs:
        assert r.exit_code == 1, r.output
        assert "refusing to unpickle" in r.output or "not a checkpoint" in r.output
        assert says in r.output and "weights_only" not in r.output, r.output
        # one line, and a `help:` line from the weights path (eval and --init alike)
        assert "Traceback" not in r.output and r.output.count("\n") == 1 + ("help:" in r.output)
    assert runs[1][0].output.replace(str(evil), "X") == runs[4][0].output.replace(str(evil), "X")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "incomplete"])
def test_damaged_checkpoint_is_refused_by_resume_and_eval(
    files: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    good = files["ref"] / "checkpoint.pt"
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        data = good.read_bytes()
        ckpt.write_bytes(data[: len(data) * 2 // 3])
    else:  # our format, but written by something else: no optimizer, no RNG state
        checkpoint.save({k: v for k, v in checkpoint.load(good).items() if k != "optimizer"}, ckpt)
    says = {"empty": "empty file", "truncated": "truncated", "incomplete": "incomplete"}[damage]
    before = ckpt.read_bytes()
    r = _cli(train, files["spec"], "--out", out, "--resume", "-q")
    e = _cli(eval_cmd, files["spec"], "--data", files["data"], "--weights", ckpt)
    for result in (r, e) if damage != "incomplete" else (r,):
        assert result.exit_code == 1, result.output
        assert says in result.output and str(ckpt) in result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert ckpt.read_bytes() == before  # a refused file is not overwritten
