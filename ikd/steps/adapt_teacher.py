"""The ``adapt`` step: fine-tune the teacher on the task (``finetune`` on the teacher's tokenization)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.metrics import write_json
from ikd.steps import fit, job
from ikd.steps.io import StepResult, atomic_dir, finish, require_dir
from ikd.steps.table import input_keys
from ikd.strategies.finetune import Finetune
from ikd.training import distributed, loop


def run(
    cfg: Config, inputs: dict[str, Any], out_dir: Path, live: Path | None = None, opts: job.JobOptions | None = None
) -> StepResult:
    """Writes out_dir/model/ (the adapted teacher) and history.json. ``live``: DVCLive folder; ``opts``:
    checkpoints and Pushgateway."""
    opts = opts or job.JobOptions()
    data_dir = require_dir(inputs.get("data"), "prepared data")
    prep = Prepared.load(data_dir)
    keys = input_keys(cfg, "adapt", inputs)
    device = fit.training_device(cfg)
    ckpt = job.checkpoints(cfg, "adapt", keys, out_dir, opts)
    loop.seed_everything(cfg.seed)
    tokenizer = fit.tokenizer(prep, "teacher")
    model, source = models.build(cfg.teacher, prep.num_labels, cfg.seed)
    model.to(device)
    ds = prep.splits["train"].remove_columns(fit.side_columns(prep.splits["train"], "student"))
    loader = loop.make_loader(
        ds,
        {"teacher": prep.info["pad_ids"]["teacher"]},
        cfg.adapt.batch_size,
        True,
        cfg.seed,
        group_by_length=cfg.adapt.group_by_length,
    )
    with fit.tracker(live) as tracker, job.monitor(cfg, "adapt", out_dir, opts) as pushed:
        result = loop.train(
            Finetune(cfg.adapt, model, input_side="teacher"),
            loader,
            cfg.adapt,
            device,
            desc="adapt",
            dev=fit.dev_metrics(model, prep, "teacher", device),
            tracker=tracker,
            checkpoints=ckpt,
            monitor=pushed,
        )
        if not distributed.is_main():
            return fit.follower_done("adapt", out_dir)
        with atomic_dir(out_dir) as tmp:
            models.save(
                model.cpu(),
                tokenizer,
                tmp / "model",
                {"role": "teacher", "source": source, "label_names": prep.info["label_names"]},
            )
            write_json(tmp / "history.json", {"train": result.history, "dev": result.dev_history})
            metrics = {"train": result.metrics()}
            key = finish(
                tmp,
                cfg,
                "adapt",
                keys,
                metrics,
                {"model": source},
                {"inputs": (data_dir,), "models": {"teacher": source}},
                tracker,
            )
        job.finished(cfg, ckpt)
    distributed.barrier()  # followers return once rank 0 has written
    return StepResult("adapt", Path(out_dir), metrics, key)
