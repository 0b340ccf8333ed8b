"""The recipe: everything that decides the numbers a run produces — data, epochs, batch,
optimizer and its defaults, learning-rate schedule, seed — and the optimizer and schedule it
makes. A resumed run must have the same recipe (`rundir.RunDir.resume_state`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Defaults chosen so every seed spec trains: AdamW is insensitive to the sigmoid LeNet's
# vanishing gradients that stall plain SGD, and one-cycle warm-up keeps the deeper ReLU
# nets without BatchNorm (AlexNet, VGG) from diverging at this learning rate.
DEFAULT_LR = {"adamw": 5e-3, "sgd": 0.1}  # sgd: at batch 64, scaled with the batch
SGD_REFERENCE_BATCH = 64
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 5e-4}
OPTIMIZERS = tuple(DEFAULT_LR)
SCHEDULES = ("onecycle", "cosine", "none")
MAX_SEED = (1 << 64) - 1  # seeds are 64-bit (torch.manual_seed)


def default_lr(optimizer: str, batch_size: int) -> float:
    """The peak learning rate when none is given. SGD's follows the linear scaling rule (Goyal
    et al. 2017: the step is a mean over the batch, so a batch k times larger takes a step k
    times larger): 0.1 at batch 64, 0.4 at d2l's 256, where the sigmoid LeNet needs it (at
    0.05 it stays at chance for 10 epochs). AdamW normalises its steps: one rate fits all."""
    if optimizer == "sgd":
        return DEFAULT_LR["sgd"] * batch_size / SGD_REFERENCE_BATCH
    return DEFAULT_LR[optimizer]


@dataclass
class Recipe:
    """Everything that decides the numbers a run produces; a resumed run must match it."""

    data: str = "mnist-mini"
    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None  # None: default_lr(optimizer, batch_size)
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]
    schedule: str = "onecycle"
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps; the schedule spans them

    def resolved(self) -> Recipe:
        """The recipe with its defaults filled in; ValueError for a value no run can use."""
        self.validate()
        return dataclasses.replace(
            self,
            lr=default_lr(self.optimizer, self.batch_size) if self.lr is None else self.lr,
            weight_decay=(
                DEFAULT_WEIGHT_DECAY[self.optimizer]
                if self.weight_decay is None
                else self.weight_decay
            ),
        )

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: {', '.join(SCHEDULES)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("max_steps", 1), ("seed", 0)):
            v = getattr(self, name)
            if v is None and name == "max_steps":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low or v > MAX_SEED:
                raise ValueError(f"{name} must be an integer from {low} to {MAX_SEED}, got {v!r}")
        for name, positive in (("lr", True), ("weight_decay", False)):
            v = getattr(self, name)
            if v is None:
                continue
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not math.isfinite(v)
                or v < 0
                or (positive and v == 0)
            ):
                what = "a finite number > 0" if positive else "a finite number >= 0"
                raise ValueError(f"{name} must be {what}, got {v!r}")


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only, not on biases or norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    assert recipe.lr is not None
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, fused=device.type == "cuda")
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (a pure function, so
    the schedule's whole state is the step count)."""
    if schedule == "none" or total <= 1:
        return 1.0
    if schedule == "cosine":
        warm = max(1, total // 50)
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    # one-cycle as torch's OneCycleLR: cosine from lr/25 up to lr over 25%, down to lr/1e4
    warm = max(1, int(0.25 * total))
    if step < warm:
        return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / warm))
    t = (step - warm) / max(1, total - warm - 1)
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


PRECISIONS = ("auto", "bf16", "float32")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether a run on ``device`` computes under bf16 autocast (weights and optimizer stay
    float32). ``auto``: on CUDA only. A CPU stays in float32 unless asked: on one with AMX
    tile units (Intel Sapphire Rapids and later) bf16 steps are 1.2x (LeNet) to 1.8x
    (ResNet-18) faster, but bf16 rounding makes runs on different process counts differ in
    the fifth digit, and CPUs without AMX emulate bf16 and are slower."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda"
