"""Careless and hostile use (issue 19): nothing written outside the chosen run directory, no
earlier file damaged, and one clear line (exit 1 or 2, docs/cli.md) instead of a traceback or
an abort, for every path the CLI writes and every input it reads. One test per class of
fault; the training ones are tiny (8x8 images, a few steps)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_train import TINY

import archspec
from archspec import files
from archspec.cli import main

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "specs" / "lenet.yaml")
QUICK = ("--max-steps", "2", "--batch-size", "16", "-q", "--threads", "1")


def cli(*args: object, cwd: Path | None = None) -> object:
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def one_clear_line(r: object, code: int) -> str:
    out = r.output  # type: ignore[attr-defined]
    assert r.exit_code == code, out  # type: ignore[attr-defined]
    assert "Traceback" not in out and "internal error" not in out, out
    assert out.startswith("error: ") or "error[" in out or "\nError: " in out, out
    return out


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % 4)
    return path


def run_cmd(*args: str, **kw: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "archspec", *args],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        env=env,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- security


@pytest.mark.parametrize("name", ["../../../escape", "a/b/c", "/abs/x", "..", ".", "..\\x y"])
def test_spec_name_cannot_pick_a_folder_outside_runs(tmp_path: Path, npz: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    spec = tmp_path / "named.yaml"
    spec.write_text((TINY % 4).replace("name: tiny", f"name: {json.dumps(name)}"))
    r = cli("train", spec, "--data", npz, *QUICK, cwd=work)
    assert r.exit_code == 0, r.output
    made = [p for p in tmp_path.rglob("*") if p.is_dir() and p.parent != work / "runs"]
    assert sorted(p.relative_to(tmp_path) for p in made) == [Path("work"), Path("work/runs")]
    (run,) = (work / "runs").iterdir()  # one folder, directly under runs/
    assert (run / "config.json").is_file() and "/" not in run.name and ".." not in run.name


def test_atomic_writes_never_follow_a_planted_link_and_keep_the_mode(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    target = tmp_path / "out.json"
    target.write_text("old")
    target.chmod(0o600)
    # the names of the temporary files of earlier versions, planted as links to the victim
    for pid in (os.getpid(), os.getpid() + 1):
        (tmp_path / f".out.json.{pid}.tmp").symlink_to(victim)
    files.write_text(target, "new")
    assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert target.read_text() == "new" and not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the file it replaced: not widened
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    left = {  # a killed export's temporary file goes; a user's look-alike stays
        f".out.json.{dead.pid}.abcd_123.json": False,
        f".out.json.{dead.pid}.backup": True,
    }
    for name in left:
        (tmp_path / name).write_text("x")
    files.write_text(target, "newer")
    assert {n: (tmp_path / n).exists() for n in left} == left
    fresh = tmp_path / "fresh.txt"
    files.write_text(fresh, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- lost data


def test_second_run_into_a_locked_run_directory_is_refused_naming_the_first(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    lock = files.RunLock(out).acquire("archspec train first")  # the first run, still going
    try:
        r = cli("train", spec, "--data", npz, "--out", out, *QUICK)
        err = one_clear_line(r, 2)
        assert "in use by another run" in err and f"pid {os.getpid()}" in err
        assert "archspec train first" in err
        assert sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME]  # nothing written
    finally:
        lock.release()
    r = cli("train", spec, "--data", npz, "--out", out, *QUICK)  # the lock went with its holder
    assert r.exit_code == 0, r.output
    with open(out / files.LOCK_NAME) as f:  # released at the end: nobody holds it now
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_out_with_foreign_files_is_refused_and_left_alone(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    mine = {"spec.yaml": "# my notes\nname: x\n", "config.json": "{}", "metrics.jsonl": "1\n"}
    for name, text in mine.items():
        (out / name).write_text(text)
    for extra in ((), ("--resume",)):
        err = one_clear_line(cli("train", spec, "--data", npz, "--out", out, *QUICK, *extra), 2)
        assert "not empty and holds no archspec run" in err
    assert {p.name: p.read_text() for p in out.iterdir()} == mine
    f = tmp_path / "a-file"
    f.write_text("x")
    assert "is a file" in one_clear_line(cli("train", spec, "--out", f, *QUICK), 2)
    empty = cli("train", spec, "--data", npz, "--out", "", *QUICK)
    assert empty.exit_code == 2 and "empty path" in empty.output
    long = cli("train", spec, "--data", npz, "--out", tmp_path / ("x" * 300), *QUICK)
    assert long.exit_code == 2 and "too long" in long.output and "Traceback" not in long.output


def test_paths_too_long_for_the_system_are_one_line(spec: Path, tmp_path: Path) -> None:
    name = str(tmp_path / ("x" * 300))
    runs = {
        ("train", spec, "--data", name + ".npz", "--out", tmp_path / "r"): 1,  # data: exit 1
        ("list", name): 2,
        ("check", name + ".yaml"): 2,
        ("schema", "-o", name + ".json"): 2,
        ("graph", spec, "-o", name + ".dot"): 2,
        ("export", spec, "-o", name + ".pt"): 2,
    }
    for args, code in runs.items():
        assert "too long" in one_clear_line(cli(*args), code), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_resume_with_another_precision_is_refused(spec: Path, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli("train", spec, "--data", npz, "--out", out, "--epochs", "2", *QUICK[2:])
    assert r.exit_code == 0, r.output
    before = (out / "config.json").read_text()
    assert json.loads(before)["precision"] == "float32"
    err = one_clear_line(cli("train", spec, "--out", out, "--resume", "--precision", "bf16"), 1)
    assert "--precision float32 (now bf16)" in err
    assert (out / "config.json").read_text() == before  # config.json still tells the truth


def test_resume_message_names_an_unset_option_as_such(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ("--data", npz, "--out", out, "--batch-size", "16", "-q", "--threads", "1")
    assert cli("train", spec, *args, "--epochs", "1").exit_code == 0
    err = one_clear_line(cli("train", spec, *args, "--resume", "--max-steps", "3"), 1)
    assert "no --max-steps (now 3)" in err and "None" not in err


def _full_disk_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of an output file fails like a full disk, half-way."""
    real = os.replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    del real


@pytest.mark.parametrize(
    "args,name",
    [
        (("schema", "-o"), "schema.json"),
        (("graph", LENET, "-o"), "net.dot"),
        (("export", LENET, "--format", "torchscript", "--no-verify", "-o"), "net.pt"),
    ],
)
def test_failed_output_writes_keep_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], name: str
) -> None:
    out = tmp_path / name
    out.write_bytes(b"the previous good file")
    _full_disk_writes(monkeypatch)
    r = cli(*args, out)
    assert r.exit_code == 1 and "No space left on device" in r.output and str(out) in r.output
    assert "Traceback" not in r.output
    assert out.read_bytes() == b"the previous good file"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


# ---------------------------------------------------------------- internal errors and aborts


def test_writes_to_a_full_device_or_a_missing_folder_are_clear_errors(tmp_path: Path) -> None:
    # stdout on a full device: one line on stderr, exit 1 (it used to be a traceback)
    with open("/dev/full", "w") as full:
        for args in (["check", LENET], ["schema"], ["graph", LENET], ["check", LENET, "--json"]):
            r = run_cmd(*args, stdout=full)
            assert r.returncode == 1, r.stderr
            assert r.stderr == "error: cannot write to standard output: No space left on device\n"
    # TorchScript straight to a full device: it used to abort in C++ (SIGABRT, exit 134)
    r = run_cmd("export", LENET, "--format", "torchscript", "-o", "/dev/full")
    assert r.returncode == 1 and "cannot write /dev/full: No space left on device" in r.stderr
    for args in (["export", LENET, "--format", "torchscript"], ["graph", LENET], ["schema"]):
        r2 = cli(*args, "-o", tmp_path / "missing" / "f.dot")
        err = one_clear_line(r2, 2)
        assert f"{tmp_path / 'missing'} does not exist" in err
    assert not (tmp_path / "missing").exists()


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_bad_data_files_are_clear_errors(spec: Path, npz: Path, tmp_path: Path) -> None:
    good = dict(np.load(npz))
    bad = {
        "empty file": tmp_path / "empty.npz",
        "truncated": tmp_path / "truncated.npz",
        "empty train split": _npz(
            tmp_path / "notrain.npz",
            **{**good, "x_train": good["x_train"][:0], "y_train": good["y_train"][:0]},
        ),
        "NaN pixels": _npz(
            tmp_path / "nan.npz",
            **{**good, "x_train": np.where(good["x_train"] > 200, np.nan, 0.5)},
        ),
        "int64 over 255": _npz(
            tmp_path / "wide.npz", **{**good, "x_train": good["x_train"].astype(np.int64) * 300}
        ),
        "normalised floats": _npz(
            tmp_path / "norm.npz", **{**good, "x_test": good["x_test"] / 127.5 - 1.0}
        ),
        "zero-sized images": _npz(
            tmp_path / "zero.npz",
            **{**good, "x_train": np.zeros((8, 0, 0), np.uint8), "y_train": good["y_train"][:8]},
        ),
        "huge labels": _npz(
            tmp_path / "labels.npz", **{**good, "y_train": good["y_train"].astype(np.int64) << 40}
        ),
    }
    bad["empty file"].write_bytes(b"")
    bad["truncated"].write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    says = {
        "empty file": "empty file",
        "truncated": "not a readable .npz",
        "empty train split": "x_train is empty",
        "NaN pixels": "NaN",
        "int64 over 255": "pixel values run from 0 to ",
        "normalised floats": "from -1.0",
        "huge labels": "at most 1,048,576 classes",
        "zero-sized images": "hold no pixels",
    }
    for what, path in bad.items():
        err = one_clear_line(cli("train", spec, "--data", path, "--out", tmp_path / "r", *QUICK), 1)
        assert says[what] in err, (what, err)
        assert err.count("\n") == 1 and "--num-classes" not in err, (what, err)
    assert not (tmp_path / "r").exists()


def test_decompression_bomb_in_an_image_folder_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    from archspec.run.data import DataError, decode

    bomb = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(bomb)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 64 * 64 // 4  # this small image is now a bomb 4x over the limit
    try:
        with pytest.raises(DataError, match="too many pixels"):
            decode([bomb], (1, 8, 8))
    finally:
        Image.MAX_IMAGE_PIXELS = old


@pytest.mark.parametrize(
    "args,says",
    [
        (("--lr", "nan"), "--lr"),
        (("--lr", "inf"), "--lr"),
        (("--weight-decay", "inf"), "--weight-decay"),
        (("--seed", str(1 << 64)), "--seed"),
        (("--seed", "-1"), "--seed"),
        (("--threads", str(1 << 70)), "--threads"),
        (("--epochs", str(1 << 70)), "epochs must be an integer"),
    ],
)
def test_non_finite_and_out_of_range_options_are_usage_errors(
    spec: Path, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    r = cli("train", spec, "--out", tmp_path / "r", *args)
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "bad", [{"lr": float("nan")}, {"weight_decay": float("inf")}, {"seed": 1 << 64}, {"epochs": 0}]
)
def test_python_api_recipe_values_no_run_can_use_are_refused(
    spec: Path, npz: Path, tmp_path: Path, bad: dict
) -> None:
    from archspec.run.data import load
    from archspec.run.loop import TrainError, fit
    from archspec.run.recipe import Recipe

    report = archspec.check(spec)
    with pytest.raises(TrainError, match=f"invalid recipe: {next(iter(bad))}"):
        fit(
            archspec.build(spec),
            load(str(npz)),
            Recipe(data=str(npz), **bad),
            tmp_path / "run",
            input_shape=report.input,
            spec_hash=report.spec_hash,
        )
    assert not (tmp_path / "run").exists()


def test_export_tolerance_must_be_a_finite_number(tmp_path: Path) -> None:
    for bad in ("nan", "-1"):
        r = cli("export", LENET, "-o", tmp_path / "x.pt", "--tolerance", bad)
        assert r.exit_code == 2 and "--tolerance" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_largest_seed_trains(spec: Path, npz: Path, tmp_path: Path) -> None:
    r = cli(
        "train", spec, "--data", npz, "--out", tmp_path / "r", "--seed", str((1 << 64) - 1), *QUICK
    )
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "kw,says",
    [
        ({"variant": 5}, "variant must be a str"),
        ({"num_classes": "10"}, "num_classes must be an int"),
        ({"input_shape": "1,28,28"}, "input_shape must be a tuple"),
        ({"input_shape": (1, 28.5, 28)}, "input_shape must be a tuple"),
    ],
)
def test_python_api_arguments_of_the_wrong_type_are_a_type_error(kw: dict, says: str) -> None:
    for call in (archspec.check, archspec.build):
        with pytest.raises(TypeError, match=says):
            call(LENET, **kw)
    with pytest.raises(TypeError, match="path must be"):
        archspec.check(5)  # type: ignore[arg-type]
    assert archspec.check(LENET, input_shape=np.array([1, 28, 28]).tolist()).ok


def test_build_options_of_the_wrong_type_and_a_bad_limit_are_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(TypeError, match="max_params must be an int"):
        archspec.build(LENET, max_params="10")
    with pytest.raises(TypeError, match="weights must be a path"):
        archspec.build(LENET, weights=5)
    monkeypatch.setenv("ARCHSPEC_MAX_PARAMS", "lots")
    with pytest.raises(archspec.SpecError, match="ARCHSPEC_MAX_PARAMS must be a whole number"):
        archspec.build(LENET)
    assert archspec.build(LENET, max_params=10**6) is not None  # an explicit limit wins


# ---------------------------------------------------------------- silent wrong results


def test_empty_test_split_reports_no_accuracy(spec: Path, npz: Path, tmp_path: Path) -> None:
    good = dict(np.load(npz))
    data = _npz(
        tmp_path / "notest.npz",
        **{**good, "x_test": good["x_test"][:0], "y_test": good["y_test"][:0]},
    )
    out = tmp_path / "r"
    r = cli("train", spec, "--data", data, "--out", out, "--epochs", "1", *QUICK[2:])
    assert r.exit_code == 0, r.output
    assert "no test split" in r.output and "test accuracy" not in r.output
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["test_acc"] is None and row["test_loss"] is None and row["train_acc"] > 0
    err = one_clear_line(
        cli("eval", spec, "--data", data, "--weights", out / "model.safetensors"), 1
    )
    assert "test split" in err and "empty" in err


def test_eval_of_weights_that_give_nan_is_an_error_not_invalid_json(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_model

    model = archspec.build(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_model(model, str(tmp_path / "nan.safetensors"))
    r = cli("eval", spec, "--data", npz, "--weights", tmp_path / "nan.safetensors")
    assert "NaN or infinite" in one_clear_line(r, 1) and "{" not in r.output


def test_float_and_wide_integer_pixels_that_fit_are_read_exactly(tmp_path: Path) -> None:
    from archspec.run.data import load

    x = np.arange(4 * 8 * 8).reshape(4, 8, 8) % 256
    y = np.arange(4) % 2
    for stored in (x.astype(np.int64), x.astype(np.float32), (x / 255.0).astype(np.float64)):
        path = _npz(tmp_path / "d.npz", x_train=stored, y_train=y, x_test=stored, y_test=y)
        got = load(str(path)).train.x
        assert got is not None and np.array_equal(got.numpy()[:, 0], x)


# ---------------------------------------------------------------- misleading messages


def test_spec_that_is_a_directory_or_fifo_is_named_as_such(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for cmd in ("check", "graph", "train", "export"):
        extra = ("-o", tmp_path / "x.pt") if cmd == "export" else ()
        err = one_clear_line(cli(cmd, tmp_path, *extra), 2)
        assert "directory" in err and "no such spec file" not in err, (cmd, err)
        err = one_clear_line(cli(cmd, fifo, *extra), 2)  # and no hang reading it
        assert "not a regular file" in err, (cmd, err)


def test_python_api_refuses_specs_that_are_not_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for path, says in (
        ("/dev/zero", "not a regular file"),
        (fifo, "not a regular file"),
        (tmp_path, "directory"),
    ):
        report = archspec.check(path)  # would block or read forever
        assert [d.code for d in report.errors] == ["E-IO"] and says in report.errors[0].message
        with pytest.raises(archspec.SpecError, match=says):
            archspec.variants(path)
    for weights in (fifo, tmp_path / "pipe.safetensors"):
        if not weights.exists():
            os.mkfifo(weights)
        with pytest.raises(archspec.SpecError, match="not a regular file"):
            archspec.build(LENET, weights=weights)


def test_graph_errors_name_the_file_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "out.dot"
    folder.mkdir()
    err = one_clear_line(cli("graph", LENET, "-o", folder), 2)
    assert str(folder) in err


def test_diverged_run_blames_the_weight_decay_when_it_is_huge(
    spec: Path, npz: Path, tmp_path: Path
) -> None:
    r = cli("train", spec, "--data", npz, "--out", tmp_path / "r", "--weight-decay", "1e30", *QUICK)
    err = one_clear_line(r, 1)
    assert "NaN or infinite" in err and "--weight-decay (now 1e+30)" in err
