"""Crash-safe checkpoint files.

Writes go to a temporary file in the same directory, are fsynced and then renamed over the
target, so a crash or a kill leaves either the old file or the new one, never half of one.
Reads use ``torch.load(weights_only=True)`` only: a checkpoint is data, and a file that
needs arbitrary unpickling is refused rather than executed.

A write that fails (a full disk, a quota, a read-only directory) raises ``OSError`` naming
the target file, with the operating system's reason, and leaves the previous file as it
was. The temporary file of a writer killed mid-write (``.NAME.PID.tmp``) is removed by the
next write of the same file.
"""

from __future__ import annotations

import contextlib
import glob
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


def _remove_stale(path: Path) -> None:
    """Delete the temporary files of writers of ``path`` that died mid-write (kill -9, power
    loss): they are never renamed, and a run that is killed often would fill the disk."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: nobody will finish this file
            with contextlib.suppress(OSError):
                tmp.unlink()
        except OSError:  # alive under another user (EPERM), or cannot tell: leave it
            pass


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success make it ``path`` durably.

    An ``OSError`` on the way is raised again naming ``path`` (not the temporary file), so a
    message reads "cannot write checkpoint.pt: No space left on device"."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_stale(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # some writers (safetensors) create files 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename == str(path) or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
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
    """Load a checkpoint written by ``save``; any other file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); the write was interrupted")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:  # unreadable (permissions, I/O error)
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"{path}: not a checkpoint (not a torch zip archive)")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # a class or function the pickle would call: maybe code
            raise CheckpointError(
                f"{path}: holds Python objects, not just tensors and plain data; "
                "refusing to unpickle it (not an archspec checkpoint)"
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, MemoryError) as e:
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
