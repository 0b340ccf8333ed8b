"""The run directory: what a run writes and reads back, and who may write it.

`RunDir` owns the folder of one run — `claim` creates and locks it (refusing a folder that
holds something other than an archspec run, and a run that another process is writing),
then config.json, metrics.jsonl, checkpoint.pt (and resuming from it), model.safetensors and
curves.png are written through it, each atomically (`archspec.files`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from archspec.files import LockedError, RunLock, is_empty_dir, is_run_dir, write_atomic, write_text
from archspec.run import checkpoint
from archspec.run.recipe import Recipe


class TrainError(RuntimeError):
    """A run that cannot go on (non-finite loss, checkpoint from another spec, ...)."""


class RunDirError(TrainError):
    """A run directory that cannot be used: foreign contents, in use by another run, or a path
    the system refuses. The command line reports it as a usage error (exit 2)."""


class RunDir:
    """The folder of one run. Only the process that claimed it writes to it (rank 0)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.pt"
        self._lock = RunLock(self.path)
        self.claimed = False

    def __str__(self) -> str:
        return str(self.path)

    def check(self) -> None:
        """Refuse, before anything is written, a path that is not a folder or a folder with
        files that are not an archspec run's (a run would overwrite them)."""
        p = self.path
        if str(p) in ("", "."):
            raise RunDirError(
                f"the run directory {str(p)!r} is not a folder of its own; pass a folder name"
            )
        if p.exists() and not p.is_dir():
            raise RunDirError(f"{p} exists and is not a directory; choose another --out")
        if p.is_dir() and not is_empty_dir(p) and not is_run_dir(p):
            shown = sorted(x.name for x in p.iterdir())
            found = ", ".join(shown[:4]) + (", ..." if len(shown) > 4 else "")
            raise RunDirError(
                f"{p} is not empty and holds no archspec run ({found}); a run would overwrite "
                "those files: choose a new or empty --out"
            )

    def claim(self, command: str = "") -> RunDir:
        """Check the folder, create it if needed and lock it for this process; a run another
        process is writing is refused, naming that process."""
        if self.claimed:
            return self
        self.check()
        p = self.path
        try:
            p.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(command)
        except LockedError as e:
            raise RunDirError(str(e)) from None
        except OSError as e:
            raise RunDirError(f"cannot use {p} as the run directory: {e.strerror or e}") from None
        self.claimed = True
        return self

    def release(self) -> None:
        self._lock.release()
        self.claimed = False

    def write_config(self, config: dict[str, Any]) -> None:
        write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        checkpoint.save(state, self.checkpoint)

    def finish(
        self, model: nn.Module, weights_meta: dict[str, Any], history: list[Any], title: str
    ) -> None:
        """The end of a run (or of one part of it): model.safetensors and curves.png."""
        save_weights(model, self.path / "model.safetensors", weights_meta)
        write_curves(history, self.path / "curves.png", title)

    def resume_state(
        self, spec_hash: str, recipe: Recipe, precision: str = "auto"
    ) -> dict[str, Any]:
        """The checkpoint to resume from, refused unless it is whole and was written for this
        spec, this recipe and (unless ``precision`` is auto) this precision."""
        return load_resume(self.checkpoint, spec_hash, recipe, precision)

    def saved_recipe(self) -> Recipe | None:
        return saved_recipe(self.path)

    def started_recipe(self) -> Recipe:
        """The recipe in the config.json of a run that has no checkpoint yet (else the
        defaults): a run killed before its first checkpoint starts over with it."""
        try:
            return _recipe(json.loads((self.path / "config.json").read_text())["recipe"])
        except (OSError, ValueError, KeyError, TypeError):
            return Recipe()


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """model.safetensors with the run's input normalisation etc. as string metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    meta = {k: json.dumps(v) for k, v in metadata.items()}

    def write(tmp: Path) -> None:
        try:
            save_model(model, str(tmp), metadata=meta)
        except SafetensorError as e:  # Rust's io::Error as text: "... (os error 28)"
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e

    write_atomic(path, write)


def write_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss and accuracy against epoch (matplotlib, Agg: no display needed)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    tested = [h for h in history if h.get("test_loss") is not None]  # none: no test split
    if tested:
        ax1.plot([h["epoch"] for h in tested], [h["test_loss"] for h in tested], "o-", label="test")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    if tested:
        ax2.plot([h["epoch"] for h in tested], [h["test_acc"] for h in tested], "o-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# What a resumed run reads from a checkpoint, by type: a file that loads but lacks one is
# refused here rather than failing with a KeyError halfway through restoring the run.
_RESUME_KEYS = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "epoch": int,
    "step_in_epoch": int,
    "partial": dict,
    "history": list,
    "norm": dict,
}


def load_resume(
    path: Path, spec_hash: str, recipe: Recipe, precision: str = "auto"
) -> dict[str, Any]:
    state = checkpoint.load(path)
    bad = [k for k, t in _RESUME_KEYS.items() if not isinstance(state.get(k), t)]
    if bad:
        raise checkpoint.CheckpointError(
            f"{path}: incomplete checkpoint (no valid {', '.join(bad)}); cannot resume from it"
        )
    if state.get("spec_hash") != spec_hash:
        raise TrainError(
            f"{path} was written for a different spec (hash {state.get('spec_hash')}, this spec "
            f"is {spec_hash}); use a new --out or the spec it was trained with"
        )
    saved = state.get("recipe", {})
    diff = [
        f"{_flag(k, saved.get(k))} (now {'unset' if v is None else v})"
        for k, v in dataclasses.asdict(recipe).items()
        if saved.get(k) != v
    ]
    was = state.get("precision")  # older checkpoints do not say
    if precision != "auto" and was is not None and was != precision:
        diff.append(f"--precision {was} (now {precision})")
    if diff:
        raise TrainError(
            f"{path} was trained with {', '.join(diff)}; resume with the same "
            "settings or start a new run"
        )
    return state


def saved_recipe(out: str | Path) -> Recipe | None:
    """The recipe of the run in ``out`` (for ``--resume``), or None if it has no checkpoint."""
    path = Path(out) / "checkpoint.pt"
    if not path.exists():
        return None
    return _recipe(checkpoint.load(path).get("recipe", {}))


def _recipe(saved: dict[str, Any]) -> Recipe:
    """A recipe as saved (unknown keys, from another version, left out)."""
    names = {f.name for f in dataclasses.fields(Recipe)}
    return Recipe(**{k: v for k, v in saved.items() if k in names})


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    return f"no {flag}" if value is None else f"{flag} {value}"
