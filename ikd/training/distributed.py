"""Data-parallel training under ``torchrun`` (one process per GPU or CPU slot, any number of nodes).

Every rank reads the same data and draws the same sequence of *global* batches (``batch_size`` rows, the same
shuffle seed); each rank trains on its slice of every batch, and gradients are averaged across ranks before every
optimizer step (the student's, a learning teacher's, added modules'). With equal slices this is the same update as
one process on the whole batch, for every strategy, including those with second-order steps that a
``DistributedDataParallel`` wrapper does not cover. Only rank 0 writes outputs and shows progress.

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


def average_gradients(params) -> None:
    """Average ``.grad`` of ``params`` across ranks in one all-reduce (a missing gradient counts as zero).
    No-op when not distributed."""
    n = world_size()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= n
    offset = 0
    for p in params:
        k = p.numel()
        p.grad = flat[offset : offset + k].view_as(p).clone()
        offset += k


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
