"""Data-parallel training under ``torchrun`` (one process per GPU or CPU slot, any number of nodes).

Every rank reads the same data and draws the same sequence of *global* batches (``batch_size`` rows, the same
shuffle seed); each rank trains on its slice of every batch, and gradients are averaged across ranks before every
optimizer step (the student's, a learning teacher's, added modules'). With equal slices this is the same update as
one process on the whole batch, for every strategy, including those with second-order steps that a
``DistributedDataParallel`` wrapper does not cover. Only rank 0 writes outputs and shows progress.

Two things make that hold beyond plain per-slice losses:

- a mean over rows that only some rows enter (CE over labeled rows, when unlabeled transfer rows are mixed in) divides
  a rank's sum by the *global* count over world size (:func:`share`), not by its slice's count, so that the average of
  the ranks' gradients is the gradient of the global mean;
- the bilevel teachers (metadistil, ikd) need more than averaged final gradients: their pilot step must be taken with
  the global batch's gradient, and the quiz gradient it is differentiated along must be the global quiz batch's.
  :func:`mean` averages tensors across ranks, differentiably (its gradient is itself averaged across ranks).

Means over every row of a slice (the soft KD term, hidden-state and talking terms) are the global mean only when the
slices are equal, which holds for every batch whose size the world size divides (a tail batch may differ by a row).

torchrun (and Kubeflow Trainer's torch runtime) set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; the backend is
nccl on CUDA and gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, overload

import torch
import torch.distributed as dist

log = logging.getLogger("ikd")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_type: str) -> bool:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1. Returns True when distributed.

    On CUDA, each process uses the GPU of its ``LOCAL_RANK``."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    if not is_main():
        log.setLevel(logging.WARNING)  # one voice: rank 0 reports progress and results
    return True


def local_device(device: torch.device) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` on CUDA under torchrun, else ``device``."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@overload
def shard(batch: dict[str, Any]) -> dict[str, Any]: ...


@overload
def shard(batch: None) -> None: ...


def shard(batch: dict[str, Any] | None) -> dict[str, Any] | None:
    """This rank's contiguous slice of every row-indexed tensor in a (nested) batch; the batch itself when not
    distributed. A global batch smaller than the world size leaves some ranks an empty slice."""
    n = world_size()
    if batch is None or n == 1:
        return batch
    r = rank()

    def cut(v):
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return torch.tensor_split(v, n)[r]
        return v

    return cut(batch)


def _all_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean across ranks of each tensor, in one all-reduce (new tensors, no graph)."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    return [x.view_as(t).clone() for x, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors, strict=True)]


def average_gradients(params) -> None:
    """Average ``.grad`` of ``params`` across ranks in one all-reduce (a missing gradient counts as zero).
    No-op when not distributed."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = _all_mean([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
    for p, g in zip(params, grads, strict=True):
        p.grad = g


class _Mean(torch.autograd.Function):
    """y = mean over ranks of x (every rank gets y). Each rank's loss depends on y, and the ranks' parameter
    gradients are averaged afterwards, so the gradient a rank passes back to its own x is the mean over ranks of
    dL_r/dy: the same operation as the forward."""

    @staticmethod
    def forward(ctx, *tensors):
        return tuple(_all_mean(list(tensors)))

    @staticmethod
    def backward(ctx, *grads):
        return tuple(_all_mean(list(grads)))


def mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean across ranks of each tensor (one all-reduce; every rank must call it with tensors of the same shapes),
    differentiable: what flows back to a rank's tensor is the mean across ranks of what flows back to the result. The
    tensors themselves in one process."""
    if world_size() == 1 or not tensors:
        return list(tensors)
    return list(_Mean.apply(*tensors))


def share(count: torch.Tensor) -> torch.Tensor:
    """The denominator that turns a rank's sum over its slice into its share of a mean over the global batch: the
    count summed over ranks (at least 1) over the world size. Averaged across ranks, ``sum_r / share`` is the sum over
    all rows over the global count, whatever each slice's count. One process: ``count.clamp(min=1)``."""
    if world_size() == 1:
        return count.clamp(min=1.0)
    total = count.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.clamp(min=1.0) / world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
