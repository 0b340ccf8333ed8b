"""Load a saved `state_dict` (a torchvision `.pth`, a checkpoint) strictly into a built model.

Files are read with `torch.load(..., weights_only=True)`: tensors and plain containers only,
never pickled code. A mismatch is one `SpecError` that names the first missing and unexpected
keys and the shapes that disagree, instead of torch's wall of text.

torchvision's pretrained files are not downloaded here (archspec never touches the network):
pass the file itself, e.g. `~/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth` after
torchvision fetched it once, or a `torch.save(model.state_dict(), path)` of your own.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archspec.lang.errors import Diagnostic, Loc, SpecError

SHOWN = 5  # keys listed per kind of mismatch


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a `.pth`/`.pt` file: a raw state_dict, or one under `state_dict`/`model`;
    or in a `.safetensors` file (`archspec train` writes `model.safetensors`)."""
    name = str(Path(path).expanduser())
    if name.endswith(".safetensors"):
        return _read_safetensors(name)
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _error(name, f"no such weights file: {name}", None) from None
    except IsADirectoryError:
        raise _error(name, f"{name} is a directory, not a weights file", None) from None
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
    ) as e:
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            # not torch's text: it advises re-running with weights_only=False, wrong for a file
            # that may be hostile. A GLOBAL is a class or function the pickle would call.
            what = (
                "it holds Python objects, not just tensors; refusing to unpickle it"
                if "GLOBAL" in str(e)
                else "not a pickle of tensors"
            )
            raise _error(
                name,
                f"cannot read weights from {name}: {what}",
                "pass a file written by torch.save(model.state_dict(), path)",
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(
            name,
            f"cannot read weights from {name}: {first[:200]}",
            "pass a file written by torch.save(model.state_dict(), path)",
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
    ):
        raise _error(
            name,
            f"{name} holds no state_dict (a mapping of names to tensors)",
            "expected a raw state_dict, or a dict with one under `state_dict` or `model`",
        )
    return obj


def _read_safetensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(name)
    except FileNotFoundError:
        raise _error(name, f"no such weights file: {name}", None) from None
    except (SafetensorError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(
            name,
            f"cannot read weights from {name}: {first[:200]}",
            "pass a file written by safetensors, e.g. the model.safetensors of a run",
        ) from None


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly: every key present, none extra, every shape equal."""
    name = str(path)
    state = read_state_dict(path)
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
        raise _error(
            name,
            f"weights in {name} do not fit the model: " + "; ".join(problems),
            "the spec must name and size every layer as the file's model did "
            "(use `name:` for module paths; check the variant and --num-classes)",
        )
    model.load_state_dict(state, strict=True)
    return model


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


def _error(name: str, message: str, help: str | None) -> SpecError:
    return SpecError([Diagnostic(Loc(name), "E-WEIGHTS", message, help)])
