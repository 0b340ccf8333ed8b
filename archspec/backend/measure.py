"""Measured training memory, to hold archspec's static estimate (memory.py) to account.

`saved_bytes` is the definition the estimate is tested against: the distinct tensor storages
autograd keeps from one forward pass in training mode, the model's parameters and buffers
excluded. `cpu_step_peak` replays one training step under the profiler's allocation trace.
Imports torch (lazily), so `check` never reaches this module.
"""

from __future__ import annotations

import contextlib
from typing import Any

AUTOCAST = {"float32": None, "bfloat16": "bfloat16", "float16": "float16"}


def _autocast(device: str, dtype: str) -> Any:
    import torch

    if AUTOCAST[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=getattr(torch, dtype))


def _model_storages(model: Any) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}


def saved_bytes(model: Any, x: Any, dtype: str = "float32") -> int:
    """Bytes of the distinct storages autograd saves in `model(x)` (train mode), parameters
    and buffers excluded. The pack hook holds every saved tensor until the count is done, so no
    storage is freed and its address reused while we count."""
    import torch

    own = _model_storages(model)
    kept: dict[int, int] = {}
    held: list[Any] = []

    def pack(t: Any) -> Any:
        held.append(t)
        s = t.untyped_storage()
        if s.data_ptr() not in own and s.nbytes():
            kept[s.data_ptr()] = s.nbytes()
        return t

    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        _autocast(x.device.type, dtype),
    ):
        out = model(x)
    del out
    held.clear()
    return sum(kept.values())


def train_step(model: Any, x: Any, y: Any, opt: Any, dtype: str = "float32") -> None:
    """One step as the runner takes it: zero_grad(set_to_none), forward, loss (aux heads
    summed in), backward, optimizer step."""
    import torch
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    with _autocast(x.device.type, dtype):
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(F.cross_entropy(o.float(), y) for o in outs)
    loss.backward()  # type: ignore[union-attr]
    opt.step()
    del out, outs, loss
    torch.cuda.synchronize() if x.device.type == "cuda" else None


def make_optimizer(model: Any, name: str) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-3)
    if name == "momentum":
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3)
    raise ValueError(f"unknown optimizer {name!r}")


def optimizer_state_bytes(opt: Any) -> int:
    """Bytes of every tensor in the optimizer's state (after a step has created it)."""
    import torch

    return sum(
        v.untyped_storage().nbytes()
        for st in opt.state.values()
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )


def cpu_step_peak(model: Any, x: Any, y: Any, opt: Any, dtype: str = "float32") -> int:
    """Peak bytes held by torch's CPU allocator over one steady-state training step: the model,
    the optimizer state and the batch, plus the high-water mark of the profiler's allocation
    trace during the step. (oneDNN scratch memory outside torch's allocator is not seen.)"""
    from torch.profiler import ProfilerActivity, profile

    train_step(model, x, y, opt, dtype)  # warm up: the optimizer state now exists
    opt.zero_grad(set_to_none=True)
    resident = sum(t.untyped_storage().nbytes() for t in (*model.parameters(), *model.buffers()))
    resident += (
        optimizer_state_bytes(opt) + x.untyped_storage().nbytes() + y.untyped_storage().nbytes()
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, x, y, opt, dtype)
    # every allocation and free, in order (FunctionEvents fold allocations into their ops)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = high = 0
    for ev in sorted(events, key=lambda e: e.start_ns()):
        live += ev.nbytes()
        high = max(high, live)
    return resident + high
