"""Checkpoint files: atomic writes, and clear refusals of anything but our own data."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from archspec.backend.weights import WeightsError, load_weights
from archspec.run import checkpoint
from archspec.run.checkpoint import CheckpointError


class Foreign:
    """An arbitrary Python object: unpickling it would run our code, so it must be refused."""


def _state() -> dict:
    return {"model": nn.Linear(3, 2).state_dict(), "epoch": 2, "history": [{"a": 1.5}]}


def test_round_trip_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(_state(), path)
    state = checkpoint.load(path)
    assert state["epoch"] == 2 and state["history"] == [{"a": 1.5}]
    assert torch.equal(state["model"]["weight"], torch.as_tensor(state["model"]["weight"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(_state(), path)
    before = path.read_bytes()

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_atomic(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(_state(), path)
    data = path.read_bytes()
    for size in (len(data) // 2, 100, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            checkpoint.load(path)


def test_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        checkpoint.load(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "nothing.pt")


def test_foreign_pickle_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": Foreign()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        checkpoint.load(path)
    raw = tmp_path / "raw.pkl"  # a plain (non-zip) pickle of an arbitrary object
    raw.write_bytes(pickle.dumps(Foreign()))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.load(raw)


def test_other_files_are_not_checkpoints(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an archspec checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.load(tmp_path / "noise.pt")


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    from archspec.run.rundir import save_weights

    path = tmp_path / "model.safetensors"
    save_weights(nn.Sequential(nn.Linear(3, 2)), path, {"mean": [0.5]})
    assert path.stat().st_mode & 0o044  # readable like any other output, not 0600
    meta = load_weights(nn.Sequential(nn.Linear(3, 2)), path)
    assert meta == {"mean": [0.5]}
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(nn.Sequential(nn.Linear(4, 2)), path)
    with pytest.raises(WeightsError, match="do not fit.*missing"):
        load_weights(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(nn.Sequential(nn.Linear(3, 2)), path)
