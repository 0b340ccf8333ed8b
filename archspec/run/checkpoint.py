"""Crash-safe checkpoint files.

Writes are atomic (`archspec.files.write_atomic`: an exclusive temporary file in the same
directory, fsynced and renamed over the target), so a crash, a kill or a full disk leaves
either the old file or the new one, never half of one. A write that fails raises ``OSError``
naming the target file with the system's reason. Reads go through the one reader of torch
files (``torch.load(weights_only=True)``): a checkpoint is data, and a file that needs
arbitrary unpickling is refused rather than executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from archspec.backend.weights import Unreadable, read_torch_file
from archspec.files import write_atomic

__all__ = ["FORMAT", "CheckpointError", "load", "save", "write_atomic"]

FORMAT = "archspec-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used."""


class _Writer:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch's zip
    writer turns it into "RuntimeError: [enforce fail ...] unexpected pos", and given a
    path instead of a file it loses ``errno`` altogether."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.f.write(data))
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write a checkpoint dict (tensors, numbers, strings, lists, dicts).

    Raises ``OSError`` (e.g. ``ENOSPC``) naming ``path`` when the write fails; the previous
    checkpoint at ``path`` is then untouched."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            out = _Writer(f)
            try:
                torch.save({"format": FORMAT, **state}, out)  # type: ignore[arg-type]
            except RuntimeError as e:
                if out.error is None:
                    raise
                raise out.error from e

    write_atomic(path, write)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save``; any other file raises ``CheckpointError``. The
    file is read by the one reader of torch files (`backend.weights.read_torch_file`: data
    only, never pickled code)."""
    path = Path(path)
    try:
        state = read_torch_file(path, map_location)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a directory, not a checkpoint") from None
    except Unreadable as e:
        reason = e.reason.replace("truncated or corrupt file", "truncated or corrupt checkpoint")
        raise CheckpointError(f"{path}: {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an archspec checkpoint")
    return state
