"""Crash-safe checkpoint files.

Writes go to a temporary file in the same directory, are fsynced and then renamed over the
target, so a crash or a kill leaves either the old file or the new one, never half of one.
Reads use ``torch.load(weights_only=True)`` only: a checkpoint is data, and a file that
needs arbitrary unpickling is refused rather than executed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

FORMAT = "archspec-checkpoint/1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used."""


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success make it ``path`` durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # some writers (safetensors) create files 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    # The rename is durable only once the directory entry is on disk too.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` and atomically move ``tmp`` to ``path``."""
    with _atomic(Path(path)) as tmp:
        write(tmp)


def save(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write a checkpoint dict (tensors, numbers, strings, lists, dicts)."""
    write_atomic(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save``; any other file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); the write was interrupted")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise CheckpointError(f"{path}: not a checkpoint (not a torch zip archive)")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(
                f"{path}: holds Python objects, not just tensors and plain data; "
                "refusing to unpickle it (not an archspec checkpoint)"
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({_first_line(e)})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an archspec checkpoint")
    return state


def _mismatch(e: BaseException) -> str:
    """The first problem load_state_dict lists under its "Error(s) in loading" header."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else _first_line(e)


def _mismatch(e: BaseException) -> str:
    """The first problem load_state_dict lists under its "Error(s) in loading" header."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].split(". ")[0] if text else type(e).__name__


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``model.safetensors`` (or the model of a ``checkpoint.pt``) into ``model``.

    Returns the file's metadata (input normalisation, spec hash) as plain values."""
    import json

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_model

        try:
            with safe_open(str(path), framework="pt") as f:
                raw = f.metadata() or {}
            missing, unexpected = load_model(model, str(path), strict=False)
        except RuntimeError as e:  # shape mismatches come from load_state_dict
            raise CheckpointError(
                f"{path}: weights do not fit this spec ({_mismatch(e)})"
            ) from None
        except (SafetensorError, OSError) as e:  # a damaged header or file
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_first_line(e)})"
            ) from None
        meta = {}
        for k, v in raw.items():
            try:
                meta[k] = json.loads(v)
            except ValueError:
                meta[k] = v
    else:
        state = load(path)
        try:
            result = model.load_state_dict(state["model"], strict=False)
        except RuntimeError as e:
            raise CheckpointError(
                f"{path}: weights do not fit this spec ({_mismatch(e)})"
            ) from None
        missing, unexpected = result.missing_keys, result.unexpected_keys
        meta = {"spec_hash": state.get("spec_hash"), **state.get("norm", {})}
    if missing or unexpected:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", list(missing)), ("unexpected", list(unexpected)))
            if keys
        )
        raise CheckpointError(f"{path}: weights do not fit this spec ({detail})")
    return meta
