"""Helpers shared by tests that hold archspec's static report against a real forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def forward_with_hooks(
    model: nn.Module, x: torch.Tensor, hooks: Iterable[tuple[nn.Module, Callable[..., None]]]
) -> None:
    """Run `model(x)` without gradients with each (module, forward hook) attached, and detach
    them again whatever happens."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def observed_layers(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, tuple]:
    """Run `model(x)` with a forward hook on each path; return path -> (output shape sans batch,
    parameter count of that module)."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple] = {}

    def recorder(path: str) -> Callable[..., None]:
        numel = sum(p.numel() for p in modules[path].parameters())

        def hook(mod, inp, out):
            seen[path] = (tuple(out.shape[1:]), numel)

        return hook

    forward_with_hooks(model, x, [(modules[path], recorder(path)) for path in paths])
    return seen


def execution_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple, tuple]]:
    """Leaf modules with parameters in the order forward calls them:
    (class name, parameter shapes, output shape)."""
    calls: list[tuple[str, tuple, tuple]] = []

    def hook(mod, inp, out):
        own = tuple(tuple(p.shape) for p in mod.parameters(recurse=False))
        calls.append((type(mod).__name__, own, tuple(out.shape)))

    leaves = [
        m for m in model.modules() if list(m.parameters(recurse=False)) and not list(m.children())
    ]
    forward_with_hooks(model, x, [(m, hook) for m in leaves])
    return calls


def copy_in_execution_order(src: nn.Module, dst: nn.Module, x: torch.Tensor) -> None:
    """Copy parameters and buffers leaf by leaf, matching the order forward calls them."""

    def leaves(model: nn.Module) -> list[nn.Module]:
        order: list[nn.Module] = []
        stateful = [
            m
            for m in model.modules()
            if not list(m.children())
            and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
        ]
        forward_with_hooks(model, x, [(m, lambda mod, i, o: order.append(mod)) for m in stateful])
        return order

    for a, b in zip(leaves(src), leaves(dst), strict=True):
        b.load_state_dict(a.state_dict())
