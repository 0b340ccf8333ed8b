"""Helpers shared by tests that hold archspec's static report against a real forward pass."""

from __future__ import annotations

import torch
from torch import nn


def observed_layers(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, tuple]:
    """Run `model(x)` with a forward hook on each path; return path -> (output shape sans batch,
    parameter count of that module)."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple] = {}
    hooks = []
    for path in paths:
        module = modules[path]
        numel = sum(p.numel() for p in module.parameters())

        def hook(mod, inp, out, path=path, numel=numel):
            seen[path] = (tuple(out.shape[1:]), numel)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def execution_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple, tuple]]:
    """Leaf modules with parameters in the order forward calls them:
    (class name, parameter shapes, output shape)."""
    calls: list[tuple[str, tuple, tuple]] = []
    hooks = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not list(module.children()):

            def hook(mod, inp, out, own=own):
                calls.append(
                    (type(mod).__name__, tuple(tuple(p.shape) for p in own), tuple(out.shape))
                )

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def copy_in_execution_order(src: nn.Module, dst: nn.Module, x: torch.Tensor) -> None:
    """Copy parameters and buffers leaf by leaf, matching the order forward calls them."""

    def leaves(model: nn.Module) -> list[nn.Module]:
        order: list[nn.Module] = []
        hooks = [
            m.register_forward_hook(lambda mod, i, o: order.append(mod))
            for m in model.modules()
            if not list(m.children())
            and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
        ]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        return order

    for a, b in zip(leaves(src), leaves(dst), strict=True):
        b.load_state_dict(a.state_dict())
