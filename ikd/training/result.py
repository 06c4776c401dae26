"""What one training run reports (:class:`TrainResult`, its ``metrics.json`` record) and the peak-memory
measurement behind ``peak_memory_bytes``: CUDA's allocator peak, or the process's resident-set high-water mark.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class TrainResult:
    steps: int
    epochs: int
    wall_seconds: float
    samples_per_second: float
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    step_seconds: list[float] = field(default_factory=list)
    dev_history: list[dict[str, float]] = field(default_factory=list)
    eval_seconds: float = 0.0
    resumed_from: int = 0
    checkpoint_seconds: float = 0.0

    def metrics(self) -> dict[str, Any]:
        per_step = {k: round(v / max(1, self.steps), 3) for k, v in sorted(self.counts.items())}
        dev = {k: v for k, v in self.dev_history[-1].items() if k not in ("step", "epoch")} if self.dev_history else {}
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "wall_seconds": round(self.wall_seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),
            **({"dev": dev} if dev else {}),
            **({"resumed_from_step": self.resumed_from} if self.resumed_from else {}),
            **({"checkpoint_seconds": round(self.checkpoint_seconds, 3)} if self.checkpoint_seconds else {}),
            # mean over steps after warm-up (a median would pick one side of a strategy that does extra
            # work every k-th step)
            "step_time_ms": round(1000 * float(np.mean(self.step_seconds[_warmup(len(self.step_seconds)) :])), 2)
            if self.step_seconds
            else None,
            "samples_per_second": round(self.samples_per_second, 2),
            "final_loss": self.final_loss,
            "peak_memory_bytes": self.peak_memory_bytes,
            "counts": dict(sorted(self.counts.items())),
            "counts_per_step": per_step,
        }


def _warmup(n: int) -> int:
    """Steps left out of the mean step time: the first 5, or fewer in short runs."""
    return min(5, n // 10)


def _reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux), so the peak is per run."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    """Peak resident memory in bytes since the last reset (VmHWM), else the process's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring the peak memory of a run on ``device`` from now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()


def peak_memory(device: torch.device) -> int:
    """Peak memory in bytes since :func:`reset_peak_memory`: allocated on a CUDA ``device``, else resident."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else _peak_rss()
