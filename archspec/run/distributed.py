"""Data-parallel training across the processes torchrun starts (docs/distributed.md).

torchrun describes the run in each worker's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, the rendezvous address); ``session`` joins that process
group for the length of a run. Everything else here is a collective that degrades to a no-op
in a single process, so the runner has one code path for one process and for many. Every
rank must call each collective at the same point of the loop: a rank that skipped one would
leave the others waiting until the timeout.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600  # longest wait for a peer at a collective before giving up


class DistributedError(RuntimeError):
    """A process group that cannot be joined as asked (more GPU ranks than GPUs, ...)."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes files and prints progress."""
        return self.rank == 0


def launched() -> bool:
    """True in a worker that torchrun started as one of several (torch-free: env only)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_size() -> int:
    """Workers on this machine; they share its CPUs and memory."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextlib.contextmanager
def session(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) and yield this rank's device
    (``cuda:LOCAL_RANK`` on CUDA). Outside torchrun: yields ``device`` and does nothing."""
    if not launched() or not dist.is_available():
        yield device
        return
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield device
    except BaseException as e:
        # gloo's threads must be joined, or the exit aborts ("terminate called without an
        # active exception"); NCCL's teardown can block once a peer died: exiting is enough.
        if device.type != "cuda":
            if isinstance(e, SystemExit):  # an error the ranks agreed on (NaN): leave together
                _leave_together()
            dist.destroy_process_group()
        raise
    dist.barrier()  # a clean end: leave together, not while rank 0 still writes the run
    dist.destroy_process_group()


def _leave_together(timeout_s: float = 10.0) -> None:
    """Wait (briefly) for the other ranks before tearing gloo down: one rank closing its
    connections while a peer still uses them aborts that peer. A rank that fails alone, or
    a dead peer, makes the barrier time out instead of hanging."""
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
    except RuntimeError:
        pass  # the others are gone or failing on their own: nothing left to wait for


def shard(order: torch.Tensor, batch_size: int, w: World) -> torch.Tensor:
    """This rank's part of every global batch of ``order``: the ``rank``-th of ``size`` equal
    contiguous slices, so the ranks together see exactly the batches one process would (a short
    last batch is dropped, as one process drops it, unless it is the only one)."""
    if w.size == 1:
        return order
    n = len(order)
    if n >= batch_size:
        full, per = n - n % batch_size, batch_size // w.size
    else:
        full = n - n % w.size
        per = full // w.size
    return order[:full].view(-1, w.size, per)[:, w.rank].reshape(-1)


def _reduce(values: list[float], device: torch.device, op: Any) -> list[float]:
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (float64: exact for counts below 2**53)."""
    return _reduce(values, device, dist.ReduceOp.SUM)


def all_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maxima over the ranks: of flags, whether any rank raised it — a decision
    every rank then acts on at the same step."""
    return _reduce(values, device, dist.ReduceOp.MAX)


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result (or the exception it raised, ``SystemExit``
    included) shared with every rank — for what only rank 0 reads or decides."""
    if not dist.is_initialized():
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn())
        except (Exception, SystemExit) as e:  # noqa: BLE001 (re-raised on every rank below)
            box[0] = (False, e)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then, once that succeeded, on the other ranks (a download made once
    rather than by every rank into the same folder at the same time)."""
    done: list[T] = []
    from_main(lambda: done.append(fn()))
    return done[0] if done else fn()


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (each rank gets the list)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank is gone (NCCL raises
    DistError; gloo a RuntimeError from its TCP transport: "Connection reset by peer")."""
    return isinstance(e, dist.DistError) or "gloo/transport" in str(e)
