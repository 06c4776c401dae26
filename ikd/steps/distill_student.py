"""The ``distill`` step: train the student with ``distill.strategy``.

The step knows no strategy by name: it asks the strategy class where its teacher comes from
(:meth:`~ikd.strategies.base.Strategy.teacher_source`), what to precompute from a frozen teacher
(:meth:`~ikd.strategies.base.Strategy.cache_spec`), whether it draws quiz batches, and lets the strategy write
what it trained besides the student (:meth:`~ikd.strategies.base.Strategy.save_artifacts`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.metrics import write_json
from ikd.errors import DataError
from ikd.steps import fit, job, model_card, score_teacher
from ikd.steps.fit import load_teacher
from ikd.steps.io import StepResult, atomic_dir, finish, require_dir
from ikd.steps.table import check_inputs, input_keys, read_key
from ikd.strategies import TeacherOutputs
from ikd.training import distributed, loop


def run(
    cfg: Config,
    inputs: dict[str, Any],
    out_dir: Path,
    live: Path | None = None,
    opts: job.JobOptions | None = None,
    watch: Callable[[dict[str, float]], None] | None = None,
) -> StepResult:
    """Writes out_dir/model/ (the student, with its model card README.md), the cached teacher outputs,
    history.json, and what the strategy trained besides the student (e.g. out_dir/teacher/ for a learning teacher,
    strategy_state.safetensors).
    metrics.json holds the student's metrics on the calibration split (``calib``: rows carved from train that
    nothing trains on), the figure ``ikd tune`` maximizes.

    ``watch``: the evaluations during training (``distill.eval_every``) use the calibration split instead of dev,
    and each one's metrics are passed to ``watch``, which may raise to stop the training (``ikd tune``'s
    pruner); dev is then never read."""
    import datasets

    opts = opts or job.JobOptions()
    dc = cfg.distill
    data_dir = require_dir(inputs.get("data"), "prepared data")
    prep = Prepared.load(data_dir)
    check_inputs(cfg, "distill", inputs)  # a teacher folder when the strategy needs one
    strategy_cls = score_teacher.check_cacheable(cfg)
    device = fit.training_device(cfg)
    teacher, teacher_dir = None, None
    source_kind = strategy_cls.teacher_source(dc)
    if source_kind == "pretrained":
        teacher, _ = models.build(cfg.teacher, prep.num_labels, cfg.seed)
        teacher.requires_grad_(False)
        teacher.to(device)
    elif source_kind == "adapted":
        teacher_dir = require_dir(inputs.get("teacher"), "teacher")
        teacher = load_teacher(teacher_dir, prep, strategy_cls).to(
            device
        )  # a folder that is no model: named before its key
    keys = input_keys(cfg, "distill", inputs)
    ckpt = job.checkpoints(cfg, "distill", keys, out_dir, opts)
    loop.seed_everything(cfg.seed)
    student, source = models.build(cfg.student, prep.num_labels, cfg.seed)
    student.to(device)
    train_ds = prep.splits["train"]
    transfer = prep.splits.get("transfer")
    if teacher is not None and transfer is not None and len(transfer):
        train_ds = datasets.concatenate_datasets([train_ds, transfer])  # unlabeled rows: label -1
    cache, scores_record = None, None
    spec = strategy_cls.cache_spec(dc, teacher, student) if teacher is not None else None
    if spec is not None and dc.cache_teacher_outputs is not False:
        cache, scores_record = cached_outputs(cfg, inputs.get("scores"), teacher, keys["teacher"], prep, train_ds, spec)
    if teacher is None or (cache is not None and (cache.features is not None or not strategy_cls.updates_teacher)):
        train_ds = train_ds.remove_columns(fit.side_columns(train_ds, "teacher"))
    pads = {s: prep.info["pad_ids"][s] for s in ("student", "teacher")}  # first side sets the length grouping
    loader = loop.make_loader(train_ds, pads, dc.batch_size, True, cfg.seed, group_by_length=dc.group_by_length)
    quiz = None
    if strategy_cls.uses_quiz and len(prep.splits["quiz"]):
        quiz = loop.make_loader(prep.splits["quiz"], pads, strategy_cls.quiz_batch_size(dc), True, cfg.seed + 7)
    strategy = strategy_cls(dc, student, teacher, cache, quiz=quiz)
    calib = fit.split_metrics(student, prep, "student", device, "calib")
    during = fit.dev_metrics(student, prep, "student", device) if watch is None else _watched(calib, watch)
    with fit.tracker(live) as tracker, job.monitor(cfg, "distill", out_dir, opts) as pushed:
        result = loop.train(
            strategy,
            loader,
            dc,
            device,
            desc=f"distill[{dc.strategy}]",
            dev=during,
            dev_split="dev" if watch is None else "calib",
            tracker=tracker,
            checkpoints=ckpt,
            monitor=pushed,
        )
        if not distributed.is_main():
            return fit.follower_done("distill", out_dir)
        final = _final_metrics(calib, result.dev_history if watch is not None else [], result.steps)
        with atomic_dir(out_dir) as tmp:
            models.save(
                student.cpu(),
                fit.tokenizer(prep, "student"),
                tmp / "model",
                {"role": "student", "source": source, "strategy": dc.strategy, **fit.label_meta(prep)},
            )
            if scores_record is not None:
                write_json(tmp / "teacher_scores.json", scores_record)  # which scores folder (and rows) it read

            def write_model(model, folder: Path, meta: dict[str, Any], side: str) -> None:
                models.save(model.cpu(), fit.tokenizer(prep, side), folder, {**meta, **fit.label_meta(prep)})

            strategy.save_artifacts(tmp, write_model)
            write_json(tmp / "history.json", {"train": result.history, "calib" if watch else "dev": result.dev_history})
            metrics = {
                "strategy": dc.strategy,
                "world_size": distributed.world_size(),
                "train_rows": len(prep.splits["train"]),
                "transfer_rows": len(train_ds) - len(prep.splits["train"]),
                "train": result.metrics(),
            }
            if final is not None:
                metrics["calib"] = {**final, "rows": len(prep.splits["calib"])}
            key = finish(
                tmp,
                cfg,
                "distill",
                keys,
                metrics,
                {"model": source},
                {"inputs": (data_dir, teacher_dir), "models": {"student": source}},
                tracker,
            )
            model_card.write_student(tmp, prep.info, teacher_dir)
        job.finished(cfg, ckpt)
    distributed.barrier()
    return StepResult("distill", Path(out_dir), metrics, key)


def _watched(
    metrics: Callable[[], dict[str, float]] | None, watch: Callable[[dict[str, float]], None]
) -> Callable[[], dict[str, float]] | None:
    """The loop's evaluation callback when the step is watched: calibration metrics, each passed to ``watch``."""
    if metrics is None:
        return None

    def evaluate() -> dict[str, float]:
        m = metrics()
        watch(m)
        return m

    return evaluate


def _final_metrics(
    calib: Callable[[], dict[str, float]] | None, during: list[dict[str, float]], steps: int
) -> dict[str, float] | None:
    """The trained student's calibration metrics: those of the evaluation after the last step when the loop
    already made one on calib (``during``), else a fresh evaluation; None without a calibration split."""
    if during and during[-1].get("step") == steps:
        return {k: v for k, v in during[-1].items() if k not in ("step", "epoch")}
    return calib() if calib is not None else None


def cached_outputs(
    cfg: Config, given: Path | None, teacher, teacher_key: str, prep: Prepared, train_ds, spec
) -> tuple[TeacherOutputs, dict[str, Any]]:
    """The frozen teacher's outputs over the training rows: from ``given`` (a score step folder, checked to be of
    this teacher, data, rows and outputs), else from the shared scores cache, else scored now and added to it
    (:mod:`ikd.steps.score_teacher`)."""
    from ikd.steps import scoring

    device = fit.training_device(cfg)
    backend = score_teacher.backend_for(cfg, device)
    of, digest = scoring.identity(
        teacher_key, read_key(prep.path), (0, len(train_ds)), tuple(spec.hidden), bool(spec.features), backend
    )
    if given is not None:
        folder = Path(given) / "scores"
        if not folder.is_dir():
            raise DataError(
                f"{given}: a score step folder without scores (it scored nothing for its config); run `ikd score` "
                f"with the distill config of this step (distill.strategy: {cfg.distill.strategy})"
            )
    else:
        import torch

        # scoring iterates a DataLoader, which draws from the global RNG: a run that scores and one that reads the
        # cache must leave the RNG as they found it, or the modules built and the dropout drawn after differ
        with torch.random.fork_rng(devices=[]):
            folder = score_teacher.obtain(cfg, teacher, teacher_key, prep, train_ds, spec, device)
    outputs = score_teacher.load(folder, of)
    return outputs, {"folder": str(folder), "digest": digest, "of": of}
