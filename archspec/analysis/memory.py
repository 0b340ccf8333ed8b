"""Training memory, statically: what one training step of a network holds, without torch.

The per-op rules (which tensors each layer's backward keeps) live beside the shape rules, as
`Op.saved` in ops.py. This module walks the network the way the compiled forward runs it,
tracking tensor *storages*, so a tensor several layers keep (a relu's output that the next conv
and a shortcut both keep) is counted once, and views / in-place ops share their input's storage.
From that walk it replays one training step (forward, backward, optimizer step) to estimate the
peak. docs/memory.md documents the rules and the peak model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from archspec.ir import Network, Node
from archspec.lower.combinators.base import Replay, main_path
from archspec.ops import OPS, Saved, numel

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "bool": 1}
DTYPES = ("float32", "bfloat16", "float16")
# Parameter-sized float32 buffers each optimizer keeps per parameter (torch.optim defaults).
OPTIMIZERS = {"sgd": 0, "momentum": 1, "adamw": 2}
PARAM_BYTES = 4  # parameters, their gradients and optimizer state stay float32 under autocast
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every allocation up to this
DEFAULT_MARGIN = 0.85  # plan for 85% of the free memory: allocator fragmentation, cuDNN workspaces


@dataclass(eq=False)
class Storage:
    """A block of memory one or more tensors share."""

    nbytes: int
    owner: str  # the layer (or merge) that allocated it, for messages


@dataclass(eq=False)
class Tensor:
    """A tensor of the modelled forward: a view of a storage."""

    storage: Storage
    elems: int  # per batch
    dtype: str
    grad: bool  # requires grad


@dataclass(eq=False)
class Step:
    """One forward operation in execution order: a layer, or a concat/add merge."""

    path: str
    kind: str  # "layer", or a join: "concat", "add", "mul"
    inputs: list[Tensor]
    output: Tensor
    saved: list[Storage] = field(default_factory=list)
    param_bytes: int = 0
    passthrough: bool = False  # a view or no-op: its backward hands the gradient on unchanged
    workspace: int = 0  # bytes its backward allocates for a moment beyond its gradients


@dataclass
class MemoryReport:
    """Training memory at one batch size, by kind, with the peak and where it is."""

    batch: int
    dtype: str
    optimizer: str
    device: str
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    peak_bytes: int
    peak_at: str  # where in the step the peak falls
    saved_by_path: dict[str, int]

    def to_json(self) -> dict:
        return {
            "batch": self.batch,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "params_bytes": self.params_bytes,
            "grads_bytes": self.grads_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activations_bytes": self.activations_bytes,
            "peak_bytes": self.peak_bytes,
        }

    def render_lines(self) -> list[str]:
        from archspec.analysis.table import human_bytes

        mode = "autocast " + self.dtype if self.dtype != "float32" else "float32"
        rows = [
            ("parameters", self.params_bytes, ""),
            ("gradients", self.grads_bytes, ""),
            (f"optimizer ({self.optimizer})", self.optimizer_bytes, ""),
            ("activations", self.activations_bytes, "saved for backward"),
            ("peak (estimate)", self.peak_bytes, self.peak_at),
        ]
        out = [f"training memory, batch {self.batch}, {mode}, {self.device}:"]
        for label, n, note in rows:
            out.append(f"  {label:<20} {human_bytes(n):>11}" + (f"   {note}" if note else ""))
        return out


# --------------------------------------------------------------------------- the forward walk


class Walk(Replay):
    """Replays the compiled forward (compile._Emitter) over tensors instead of code."""

    def __init__(self, batch: int, dtype: str, device: str, named: dict | None = None):
        super().__init__(named or {})
        self.batch = batch
        self.low = dtype if dtype != "float32" else None  # autocast's 16-bit dtype
        self.device = device
        self.steps: list[Step] = []

    def new(self, elems: int, dtype: str, grad: bool, owner: str) -> Tensor:
        return Tensor(Storage(elems * DTYPE_BYTES[dtype], owner), elems, dtype, grad)

    def network(
        self, root: Node, x: Tensor, outputs: list[tuple[str, str]] | None = None
    ) -> list[Tensor]:
        """The main output first, then each auxiliary head's, as the built model returns them
        (with `outputs:`, those outputs)."""
        x, taps = main_path(self, root, x)
        if outputs:
            return [self.env[p] for _, p in outputs]
        return [x, *(self.child(stage, tap) for stage, tap in taps)]

    def split(self, x: Tensor, parts: int, node: Node) -> list[Tensor]:
        """`x.chunk(parts, 1)`: views of its storage, nothing allocated or kept."""
        return [Tensor(x.storage, x.elems // parts, x.dtype, x.grad) for _ in range(parts)]

    def join(self, how: str, outs: list[Tensor], node: Node) -> Tensor:
        """torch.cat makes a new tensor; `a + b + c` makes (a + b), then its sum with c; a
        product keeps both factors for its backward."""
        if len(outs) == 1:
            return outs[0]
        dtype = "float32" if any(t.dtype == "float32" for t in outs) else outs[0].dtype
        grad = any(t.grad for t in outs)
        if how == "concat":
            out = self.new(sum(t.elems for t in outs), dtype, grad, node.path)
            self.steps.append(Step(node.path, "concat", outs, out, passthrough=True))
            return out
        acc = outs[0]
        for t in outs[1:]:
            out = self.new(max(acc.elems, t.elems), dtype, grad, node.path)
            step = Step(node.path, how, [acc, t], out, passthrough=how == "add")
            if how == "mul":  # each factor's gradient is the other factor times the output's
                step.saved = [f.storage for f, other in ((t, acc), (acc, t)) if other.grad]
            self.steps.append(step)
            acc = out
        return acc

    def layer(self, node: Node, x: Tensor) -> Tensor:
        op = OPS[node.op]
        assert node.inferred is not None and node.in_shape is not None
        out_shape = node.inferred.out
        rule: Saved = op.saved(node.params, node.in_shape, out_shape, x.grad)
        has_params = node.inferred.params > 0
        # Autograd records a node only when an input or a parameter requires grad.
        records = x.grad or has_params
        dtype = x.dtype
        if self.low and op.autocast == "lower":
            dtype = self.low
        elif self.low and op.autocast == "float32":
            dtype = "float32"
        elems = numel(out_shape) * self.batch
        if rule.alias:
            out = Tensor(x.storage, elems, dtype, records)
        else:
            out = self.new(elems, dtype, records, node.path)
        step = Step(node.path, "layer", [x], out, param_bytes=node.inferred.params * PARAM_BYTES)
        if node.op == "conv" and self.device == "cpu":
            # oneDNN's convolution_backward reorders the output gradient into a scratch copy for
            # each of its two passes (data, weights) and computes the weight gradient into a
            # buffer of its own (measured with the profiler; cuDNN's workspaces on CUDA depend on
            # the algorithm chosen and are not modelled)
            step.workspace = 2 * elems * DTYPE_BYTES[dtype] + step.param_bytes
        step.passthrough = rule.alias and not (rule.input or rule.output or rule.extra)
        if records:
            if rule.input:
                if self.low and op.autocast == "lower" and x.dtype != self.low:
                    step.saved.append(
                        Storage(x.elems * DTYPE_BYTES[self.low], node.path)
                    )  # the cast copy
                else:
                    step.saved.append(x.storage)
            if rule.output:
                step.saved.append(out.storage)
            for e in rule.extra:
                n = e.elems * (self.batch if e.per_sample else 1)
                step.saved.append(
                    Storage(n * DTYPE_BYTES[self.extra_dtype(e.dtype, x.dtype)], node.path)
                )
            if self.low and rule.weight:
                step.saved.append(Storage(rule.weight * DTYPE_BYTES[self.low], node.path))
        self.steps.append(step)
        return out

    def extra_dtype(self, kind: str, act: str) -> str:
        if kind == "mask":
            return "bool" if self.device == "cuda" else act
        if kind == "wide":
            return "float32" if self.low else act
        return act if kind == "act" else kind


def param_tensors(node: Node) -> int:
    """Parameter tensors of a layer: a weight, and a bias (conv, linear) or shift (affine bn)."""
    assert node.inferred is not None
    if node.inferred.params == 0:
        return 0
    p = node.params
    return 1 + int(bool(getattr(p, "bias", False) or getattr(p, "affine", False)))


# --------------------------------------------------------------------------- the estimate


def estimate(
    network: Network,
    batch: int,
    dtype: str = "float32",
    optimizer: str = "sgd",
    device: str = "cpu",
) -> MemoryReport:
    """Training memory of `network` at `batch`: exact saved-for-backward bytes and an
    estimated peak of one steady-state training step (see docs/memory.md)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    walk = Walk(batch, dtype, "cuda" if device.startswith("cuda") else "cpu", network.named)
    x = walk.new(numel(network.input) * batch, "float32", False, "input")
    outputs = walk.network(network.root, x, network.outputs)

    saved_by_path: dict[str, int] = {}
    seen: set[int] = set()
    for step in walk.steps:
        for s in step.saved:
            if id(s) not in seen:  # a storage belongs to the first layer that keeps it
                seen.add(id(s))
                saved_by_path[step.path] = saved_by_path.get(step.path, 0) + s.nbytes
    layers = [n for n in network.layers if n.inferred is not None]
    params = sum(n.inferred.params for n in layers if n.inferred) * PARAM_BYTES
    n_tensors = sum(param_tensors(n) for n in layers)
    opt = OPTIMIZERS[optimizer] * params
    if optimizer == "adamw":
        opt += n_tensors * 4  # AdamW's per-parameter `step` counter, a float32 scalar tensor
    peak, where = _peak(walk, x, outputs, params, opt, optimizer, layers)
    return MemoryReport(
        batch=batch,
        dtype=dtype,
        optimizer=optimizer,
        device=walk.device,
        params_bytes=params,
        grads_bytes=params,
        optimizer_bytes=opt,
        activations_bytes=sum(saved_by_path.values()),
        peak_bytes=peak,
        peak_at=where,
        saved_by_path=saved_by_path,
    )


def _peak(
    walk: Walk,
    x: Tensor,
    outputs: list[Tensor],
    params: int,
    opt: int,
    optimizer: str,
    layers: list[Node],
) -> tuple[int, str]:
    """Replay one steady-state step: zero_grad(set_to_none) has freed the gradients; the
    parameters, the optimizer state and the batch stay alive throughout.

    forward:  each storage lives from the step that allocates it to its last reader, or, if a
              layer keeps it, until the backward of the first layer that keeps it;
    backward: in reverse order each recorded step allocates its input gradient (views and sums
              pass the gradient on), its parameter gradients, then releases the output gradient
              and what it kept; gradients reaching a tensor twice are summed in place;
    step:     parameters + gradients + state + the optimizer's temporaries.
    """
    rnd = (lambda n: -(-n // CUDA_BLOCK) * CUDA_BLOCK) if walk.device == "cuda" else (lambda n: n)
    steps = walk.steps
    last_read: dict[int, int] = {}
    first_keeper: dict[int, int] = {}
    storages: dict[int, Storage] = {}
    born: dict[int, int] = {}
    for i, st in enumerate(steps):
        for t in st.inputs:
            last_read[id(t.storage)] = i
        for s in [st.output.storage, *st.saved]:
            if id(s) not in storages:
                storages[id(s)] = s
                born[id(s)] = i
        for s in st.saved:
            first_keeper.setdefault(id(s), i)
    held = {
        id(x.storage),
        *(id(t.storage) for t in outputs),
    }  # the caller holds the batch and outputs
    storages.setdefault(id(x.storage), x.storage)
    born[id(x.storage)] = -1

    base = params + opt + rnd(x.storage.nbytes)
    # forward: live bytes at each step by a difference array over step indices
    n = len(steps)
    delta = [0] * (n + 1)
    for key, s in storages.items():
        if key == id(x.storage):
            continue
        delta[born[key]] += rnd(s.nbytes)
        if key not in held and key not in first_keeper:
            end = max(last_read.get(key, born[key]), born[key])
            delta[end + 1] -= rnd(s.nbytes)
    live, best, where = 0, base, "forward"
    for i in range(n):
        live += delta[i]
        if base + live > best:
            best, where = base + live, f"forward, at {steps[i].path or 'the input'}"
    # what survives the forward: kept storages and the outputs (and the batch, in base)
    alive = {k: storages[k] for k in first_keeper} | {id(t.storage): t.storage for t in outputs}
    alive.pop(id(x.storage), None)
    kept_until = {k: i for k, i in first_keeper.items()}

    # backward
    grads: dict[int, _Grad] = {}  # id(tensor) -> its gradient buffer
    grad_bytes = 0  # live activation-gradient bytes
    param_grads = 0
    for t in outputs:
        g = _Grad(rnd(t.elems * DTYPE_BYTES[t.dtype]))
        grads[id(t)] = g
        grad_bytes += g.nbytes
    acts = sum(rnd(s.nbytes) for s in alive.values())
    if base + acts + grad_bytes > best:
        best, where = base + acts + grad_bytes, "backward start"
    for i in range(n - 1, -1, -1):
        st = steps[i]
        g_out = grads.pop(id(st.output), None)
        if g_out is None or not st.output.grad:
            continue
        param_grads += st.param_bytes
        for t in st.inputs:
            if not t.grad:
                continue
            if st.passthrough:
                g_in, g_out.refs = g_out, g_out.refs + 1
            else:
                g_in = _Grad(rnd(t.elems * DTYPE_BYTES[t.dtype]))
                grad_bytes += g_in.nbytes
            prev = grads.get(id(t))
            if prev is None:
                grads[id(t)] = g_in
            elif prev.refs == 1 or g_in.refs == 1:  # one of them is exclusively owned: add in place
                keep, drop = (prev, g_in) if prev.refs == 1 else (g_in, prev)
                grads[id(t)] = keep
                grad_bytes -= drop.release()
            else:
                total_grad = _Grad(prev.nbytes)
                grad_bytes += total_grad.nbytes - prev.release() - g_in.release()
                grads[id(t)] = total_grad
        total = base + acts + grad_bytes + param_grads + rnd(st.workspace)
        if total > best:
            best, where = total, f"backward, at {st.path}"
        grad_bytes -= g_out.release()
        for s in st.saved:
            if kept_until.get(id(s)) == i and id(s) in alive and id(s) not in held:
                acts -= rnd(alive.pop(id(s)).nbytes)
    # optimizer step
    temp = _optimizer_temporaries(optimizer, params, layers, walk.device)
    step_total = params + params + opt + temp + rnd(x.storage.nbytes)
    if step_total > best:
        best, where = step_total, "optimizer step"
    return best, where


@dataclass(eq=False)
class _Grad:
    """A gradient buffer shared by the tensors that accumulate into it."""

    nbytes: int
    refs: int = 1

    def release(self) -> int:
        """Drop one reference; the bytes freed."""
        self.refs -= 1
        return self.nbytes if self.refs == 0 else 0


def _optimizer_temporaries(optimizer: str, params: int, layers: list[Node], device: str) -> int:
    """AdamW computes sqrt(v) (+eps) as a temporary: for all parameters at once with the
    foreach kernels torch uses on CUDA, one tensor at a time (two temporaries) on CPU."""
    if optimizer != "adamw":
        return 0
    if device == "cuda":
        return params
    return 2 * max((n.inferred.params for n in layers if n.inferred), default=0) * PARAM_BYTES


# --------------------------------------------------------------------------- batch sizing


def fits(
    network: Network,
    batch: int,
    free_bytes: int,
    dtype: str = "float32",
    optimizer: str = "sgd",
    margin: float = DEFAULT_MARGIN,
    device: str = "cpu",
) -> bool:
    """Whether one training step at `batch` is estimated to fit in `margin` of `free_bytes`."""
    return estimate(network, batch, dtype, optimizer, device).peak_bytes <= margin * free_bytes


def auto_batch_size(
    network: Network,
    free_bytes: int,
    dtype: str = "float32",
    optimizer: str = "sgd",
    margin: float = DEFAULT_MARGIN,
    device: str = "cpu",
    limit: int = 1 << 16,
) -> int:
    """The largest power-of-two batch (at most `limit`) whose estimated peak fits in `margin`
    of `free_bytes`; 0 when not even batch 1 fits. The peak grows with the batch, so the
    first batch that does not fit ends the search."""
    best, b = 0, 1
    while b <= limit and fits(network, b, free_bytes, dtype, optimizer, margin, device):
        best, b = b, b * 2
    return best


def available_bytes(device: str = "cpu") -> int:
    """Free memory on `device`: CUDA's free memory (imports torch), else available RAM."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


__all__ = ["MemoryReport", "auto_batch_size", "available_bytes", "estimate", "fits"]
