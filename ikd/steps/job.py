"""What a training step (adapt, distill) needs from its surroundings besides config and data: where its checkpoints
live, whether to discard them, and where to push its progress. Nothing here changes what a step computes."""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ikd.config import Config

log = logging.getLogger("ikd")


@dataclass(frozen=True)
class JobOptions:
    """``checkpoint_dir``: default ``<out>.checkpoints`` beside the output folder; ``restart``: discard existing
    checkpoints instead of resuming; ``pushgateway``: URL (default: ``monitor.pushgateway`` of the config);
    ``run_id``: the Pushgateway ``run`` label (default: :func:`ikd.integrations.jobmetrics.default_run_id`)."""

    checkpoint_dir: Path | None = None
    restart: bool = False
    pushgateway: str | None = None
    run_id: str | None = None


def checkpoint_folder(out_dir: Path, opts: JobOptions) -> Path:
    out_dir = Path(out_dir)
    return Path(opts.checkpoint_dir) if opts.checkpoint_dir else out_dir.with_name(f"{out_dir.name}.checkpoints")


def checkpoints(cfg: Config, step: str, inputs: dict[str, str], out_dir: Path, opts: JobOptions):
    """The step's :class:`~ikd.training.checkpoint.Checkpoints`: existing ones are resumed (verified, refused when they
    belong to another config or inputs), new ones written every ``checkpoint.every`` steps when that is > 0."""
    from ikd.steps.table import STEPS, step_key
    from ikd.training import distributed
    from ikd.training.checkpoint import Checkpoints

    folder = checkpoint_folder(out_dir, opts)
    if opts.restart and distributed.is_main() and folder.exists():
        log.info("%s: --restart: removing the checkpoints in %s", step, folder)
        shutil.rmtree(folder)
    distributed.barrier()
    d = cfg.to_dict()
    identity: dict[str, Any] = {
        "step": step,
        "key": step_key(cfg, step, inputs),
        "inputs": inputs,
        "sections": {**{s: d[s] for s in STEPS[step].sections}, "seed": cfg.seed},
        "world_size": distributed.world_size(),
    }
    ckpt = Checkpoints(folder, cfg.checkpoint.every, cfg.checkpoint.keep, identity)
    ckpt.check()  # a corrupt or foreign checkpoint stops the step before its set-up, not after
    return ckpt


def finished(cfg: Config, ckpt) -> None:
    """The step's output is in place: its checkpoints go, unless ``checkpoint.keep_after_success``."""
    if not cfg.checkpoint.keep_after_success:
        ckpt.clear()


@contextlib.contextmanager
def monitor(cfg: Config, step: str, out_dir: Path, opts: JobOptions):
    """A :class:`~ikd.integrations.jobmetrics.JobMetrics` for the main process when a Pushgateway is configured,
    else None. Its group is deleted when the step succeeds; a step that fails (an exception, Ctrl-C included)
    leaves it with ``ikd_job_status{status="failed"} 1``."""
    from ikd.training import distributed

    url = opts.pushgateway or cfg.monitor.pushgateway
    if not url or not distributed.is_main():
        yield None
        return
    from ikd.integrations.jobmetrics import JobMetrics, default_run_id

    metrics = JobMetrics(
        url,
        f"ikd-{step}",
        opts.run_id or default_run_id(out_dir),
        interval=cfg.monitor.push_every_seconds,
        timeout=cfg.monitor.timeout_seconds,
    )
    failed = True
    try:
        yield metrics
        failed = False
    finally:
        metrics.close(failed=failed)
