"""The one way weights get into a built model: `load_weights(model, path)`.

Every command and the Python API load weights through here — `archspec.build(..., weights=)`,
`archspec train --init`, `archspec eval --weights`, `archspec export --weights` — so they
accept the same files and refuse the same files with the same errors:

- `.safetensors` (`archspec train` writes `model.safetensors`; its metadata, such as the
  run's input normalisation, is returned), or a file written by `torch.save`: a raw
  state_dict, one under `state_dict` or `model` (an archspec `checkpoint.pt`, a training
  script's checkpoint), with the `module.` / `_orig_mod.` prefix of DDP or torch.compile
  dropped;
- torch files are read with `torch.load(weights_only=True)` and only in torch's zip format:
  tensors and plain containers, never pickled code; a file that would call a class or a
  function is refused, not run;
- strict: every key present, none extra, every shape equal. A mismatch is one error
  (`E-WEIGHTS`) naming the missing and unexpected keys and the shapes that disagree, and the
  model is left untouched.

torchvision's pretrained files are not downloaded here (archspec never touches the network):
pass the file itself, e.g. `~/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth` after
torchvision fetched it once, or a `torch.save(model.state_dict(), path)` of your own.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archspec.lang.errors import Diagnostic, Loc, SpecError

SHOWN = 5  # keys listed per kind of mismatch
TORCH_HELP = "pass a file written by torch.save(model.state_dict(), path)"


class WeightsError(SpecError):
    """A weights file that cannot be loaded into the model: one `E-WEIGHTS` diagnostic."""

    def __init__(self, path: str | Path, message: str, help: str | None = None):
        super().__init__([Diagnostic(Loc(str(path)), "E-WEIGHTS", message, help)])
        self.message, self.help = message, help


class Unreadable(ValueError):
    """`read_torch_file` could not read a file; the text says why (without the path)."""

    def __init__(self, reason: str, help: str | None = None):
        super().__init__(reason)
        self.reason, self.help = reason, help


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What `torch.save` wrote to ``path``, read as data only (``weights_only=True``, torch's
    zip format). Raises FileNotFoundError / IsADirectoryError, or Unreadable with the reason."""
    path = Path(path)
    mode = os.stat(path).st_mode  # FileNotFoundError for a missing file
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(str(path))
    if not stat.S_ISREG(mode):
        raise Unreadable("not a regular file")
    if os.path.getsize(path) == 0:
        raise Unreadable("empty file (0 bytes); the write was interrupted")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:  # unreadable (permissions, I/O error)
        raise Unreadable(f"cannot read ({e.strerror or e})") from None
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive (since PyTorch 1.6)
        raise Unreadable("not a checkpoint (not a torch zip archive)", TORCH_HELP)
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # not torch's text: it advises weights_only=False, wrong for a file that may be
        # hostile. A GLOBAL is a class or function the pickle would call: maybe code.
        if "GLOBAL" in str(e):
            raise Unreadable(
                "holds Python objects, not just tensors and plain data; refusing to unpickle it",
                TORCH_HELP,
            ) from None
        raise Unreadable(f"corrupt file ({first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, MemoryError) as e:
        raise Unreadable(f"truncated or corrupt file ({first_line(e)})") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].split(". ")[0][:200] if text else type(e).__name__


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors in a weights file and its metadata (see the module's docstring)."""
    name = str(Path(path).expanduser())
    if name.endswith(".safetensors"):
        return _read_safetensors(name)
    try:
        obj = read_torch_file(name)
    except FileNotFoundError:
        raise WeightsError(name, f"no such weights file: {name}") from None
    except IsADirectoryError:
        raise WeightsError(name, f"{name} is a directory, not a weights file") from None
    except Unreadable as e:
        raise WeightsError(name, f"cannot read weights from {name}: {e.reason}", e.help) from None
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("norm"), dict):  # an archspec checkpoint
        meta = {"spec_hash": obj.get("spec_hash"), **obj["norm"]}
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
    ):
        raise WeightsError(
            name,
            f"{name} holds no state_dict (a mapping of names to tensors)",
            "expected a raw state_dict, or a dict with one under `state_dict` or `model`",
        )
    return obj, meta


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a weights file (see `read_weights`)."""
    return read_weights(path)[0]


def _read_safetensors(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        if not os.path.exists(name):
            raise WeightsError(name, f"no such weights file: {name}")
        if os.path.isdir(name):
            raise WeightsError(name, f"{name} is a directory, not a weights file")
        if not os.path.isfile(name):
            raise WeightsError(name, f"cannot read weights from {name}: not a regular file")
        with safe_open(name, framework="pt") as f:
            raw = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  # not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # a damaged header or file
        raise WeightsError(
            name,
            f"cannot read weights from {name}: not a readable safetensors file ({first_line(e)})",
            "pass a file written by safetensors, e.g. the model.safetensors of a run",
        ) from None
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return state, meta


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``path`` into ``model`` strictly: every key present, none extra, every shape equal.
    Returns the file's metadata (a run's input normalisation and spec hash; {} for a plain
    state_dict). Raises WeightsError (a SpecError) and leaves ``model`` untouched on any
    problem."""
    name = str(path)
    state, meta = read_weights(path)
    state = _strip_prefix(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_some(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_some(shapes)}")
    if problems:
        raise WeightsError(
            name,
            f"weights in {name} do not fit the model: " + "; ".join(problems),
            "the spec must name and size every layer as the file's model did "
            "(use `name:` for module paths; check the variant and --num-classes)",
        )
    model.load_state_dict(state, strict=True)
    return meta


def _strip_prefix(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Files saved from DataParallel/DDP or torch.compile prefix every key; drop that prefix."""
    own = model.state_dict()
    for prefix in ("module.", "_orig_mod."):
        if (
            state
            and all(k.startswith(prefix) for k in state)
            and not any(k.startswith(prefix) for k in own)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
