"""The five steps: ``(cfg, input paths, output path) -> StepResult``.

Each step writes into a temporary sibling of its output folder and renames it into place only when it
has finished, so a failed step leaves the previous good output intact. Next to its artifact each step
writes the resolved ``config.yaml``, ``metrics.json`` and ``step.json`` (lineage: the step's key, the
config sections it read, its inputs' keys, the code version and the seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ikd
from ikd.config import Config
from ikd.core.metrics import Tracker, read_json, write_json
from ikd.errors import ConfigError, DataError, ModelError
from ikd.steps.job import JobOptions

#: Config sections each step reads (DVC `params` and the staleness key use the same lists).
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("data", "teacher", "student"),
    "adapt": ("adapt", "teacher"),
    "distill": ("distill", "student"),
    "evaluate": ("evaluate",),
    "export": ("export",),
}
STEPS = tuple(STEP_SECTIONS)


@dataclass
class StepResult:
    step: str
    out_dir: Path
    metrics: dict[str, Any]
    key: str


# ---- shared plumbing -------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(out_dir: Path):
    """Yield a temporary folder; on success it replaces ``out_dir``, on failure it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def step_key(cfg: Config, step: str, inputs: dict[str, str]) -> str:
    """Digest of the step's config sections and its inputs' keys: equal keys mean equal outputs."""
    payload = json.dumps({"sections": cfg.section_hash(*STEP_SECTIONS[step]), "inputs": inputs,
                          "version": ikd.__version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_key(folder: Path) -> str:
    """The key of a finished step's output folder; raises ModelError/DataError if it is not one."""
    f = Path(folder) / "step.json"
    if not f.is_file():
        raise DataError(f"{folder}: not a finished ikd step output (no step.json)")
    return read_json(f)["key"]


def _finish(tmp: Path, cfg: Config, step: str, inputs: dict[str, str], metrics: dict[str, Any],
            extra: dict[str, Any] | None = None, lineage: dict[str, Any] | None = None,
            tracker: Tracker | None = None) -> str:
    """Write config.yaml, metrics.json and step.json (key, inputs, seed, lineage) into ``tmp``; returns the key.
    ``lineage``: this step's own data/models records, merged over what its inputs carried."""
    from ikd.steps import lineage as lin
    key = step_key(cfg, step, inputs)
    (tmp / "config.yaml").write_text(cfg.to_yaml())
    write_json(tmp / "metrics.json", metrics)
    record = lin.inherited(*(lineage or {}).pop("inputs", ()))
    for k, v in (lineage or {}).items():
        record[k] = {**record.get(k, {}), **v} if k == "models" else v
    code = lin.code()
    write_json(tmp / "step.json", {"step": step, "key": key, "inputs": inputs, "sections": list(STEP_SECTIONS[step]),
                                   "seed": cfg.seed, "ikd_version": ikd.__version__,
                                   "git_revision": code["git_revision"],
                                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   **(extra or {}), "lineage": {**record, "code": code}})
    if tracker is not None:
        tracker.summary(step, metrics)
    return key


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


# ---- prepare ---------------------------------------------------------------------------------------
def source_fingerprint(cfg: Config, source: str) -> dict[str, str]:
    """sha256 of the train and dev files of a local source (cheap enough to decide staleness)."""
    from ikd.core.data import Schema, find_file

    folder = Path(source)
    schema = Schema.from_config(cfg.data)
    if not folder.is_dir():
        return {"hub": f"{source}:{schema.hub_config or ''}"}
    files = [find_file(folder, schema.train_file), find_file(folder, schema.dev_file, ("validation", "valid"))]
    if cfg.data.transfer_file:
        files.append(find_file(folder, cfg.data.transfer_file))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def dvc_fingerprint(record: dict[str, Any]) -> dict[str, str]:
    """The data fingerprint of a source in a DVC repository (``ikd.integrations.dvc.resolve``'s record): its DVC
    md5, else (a path git tracks itself) the commit and path."""
    return {"dvc": record["md5"]} if record.get("md5") else {"git": f"{record['commit']}:{record['path']}"}


def prepare(cfg: Config, source: str, out_dir: Path, live: Path | None = None, dvc_repo: str | None = None,
            dvc_rev: str | None = None) -> StepResult:
    """Read, validate, split (train / quiz / dev) and tokenize for teacher and student.

    ``source``: a local folder or a hub id; with ``dvc_repo``, the path of a folder in that DVC (git) repository
    at ``dvc_rev`` (default: its default branch), downloaded first. ``live``: also write DVCLive files there."""
    if dvc_repo:
        from ikd.integrations import dvc
        with tempfile.TemporaryDirectory(prefix="ikd-dvc-source-") as fetched:
            record = dvc.fetch(dvc_repo, str(source), dvc_rev, Path(fetched))
            return _prepare(cfg, fetched, out_dir, live, {"dvc_source": record}, dvc_fingerprint(record))
    return _prepare(cfg, str(source), out_dir, live, None, None)


def _prepare(cfg: Config, source: str, out_dir: Path, live: Path | None, origin: dict[str, Any] | None,
             source_key: dict[str, str] | None) -> StepResult:
    from ikd.steps import lineage as lin
    from ikd.steps.prepare_data import build

    shown = (f"{origin['dvc_source']['repo']}:{origin['dvc_source']['path']}@{origin['dvc_source']['commit']}"
             if origin else str(source))
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        metrics, fingerprint = build(cfg, source, tmp, shown)
        if origin is not None:  # fetched into a temporary folder: record where it came from, not that folder
            data_lineage = origin
        elif "hub" in fingerprint:
            data_lineage = {"source": str(source), "hub": fingerprint["hub"]}
        else:
            data_lineage = lin.local_data(Path(source), fingerprint)
        key = _finish(tmp, cfg, "prepare", {"source": json.dumps(source_key or fingerprint, sort_keys=True)},
                      metrics, {"fingerprint": fingerprint},
                      {"data": data_lineage, "models": {"teacher": lin.model(cfg.teacher),
                                                        "student": lin.model(cfg.student)}}, tracker)
    return StepResult("prepare", Path(out_dir), metrics, key)


# ---- adapt -----------------------------------------------------------------------------------------
def _training_device(cfg: Config):
    """The device of this process; joins the process group when launched by torchrun (WORLD_SIZE > 1)."""
    from ikd.training import distributed, loop
    device = loop.select_device(cfg)
    distributed.setup(device.type)
    return distributed.local_device(device)


def _follower_done(step: str, out_dir: Path) -> StepResult:
    """Ranks > 0 write nothing: wait until rank 0 has written the step's output, then report it."""
    from ikd.training import distributed
    distributed.barrier()
    f = Path(out_dir) / "metrics.json"
    return StepResult(step, Path(out_dir), read_json(f) if f.is_file() else {}, read_key(out_dir))


def _tracker(live: Path | None) -> Tracker:
    """DVCLive for the process that writes the step's output (rank 0 under torchrun); a no-op elsewhere."""
    from ikd.training import distributed
    return Tracker(live if distributed.is_main() else None)


def adapt(cfg: Config, data_dir: Path, out_dir: Path, live: Path | None = None, opts: JobOptions | None = None
          ) -> StepResult:
    """Fine-tune the teacher on the task (full fine-tuning). Writes out_dir/model/. ``live``: DVCLive folder;
    ``opts``: checkpoints and Pushgateway (:class:`~ikd.steps.job.JobOptions`)."""
    from ikd.core import models
    from ikd.core.data import Prepared
    from ikd.steps import job
    from ikd.strategies.finetune import Finetune
    from ikd.training import distributed, loop

    opts = opts or job.JobOptions()
    prep = Prepared.load(_require_dir(data_dir, "prepared data"))
    inputs = {"data": read_key(data_dir)}
    device = _training_device(cfg)
    ckpt = job.checkpoints(cfg, "adapt", inputs, out_dir, opts)
    loop.seed_everything(cfg.seed)
    tokenizer = _tokenizer(prep, "teacher")
    model, source = models.build(cfg.teacher, prep.num_labels, cfg.seed)
    model.to(device)
    ds = prep.splits["train"].remove_columns(_side_columns(prep.splits["train"], "student"))
    loader = loop.make_loader(ds, {"teacher": prep.info["pad_ids"]["teacher"]}, cfg.adapt.batch_size, True, cfg.seed,
                              group_by_length=cfg.adapt.group_by_length)
    with _tracker(live) as tracker, job.monitor(cfg, "adapt", out_dir, opts) as pushed:
        result = loop.train(Finetune(cfg.adapt, model, input_side="teacher"), loader, cfg.adapt, device, desc="adapt",
                            dev=dev_metrics(model, prep, "teacher", device), tracker=tracker, checkpoints=ckpt,
                            monitor=pushed)
        if not distributed.is_main():
            return _follower_done("adapt", out_dir)
        with atomic_dir(out_dir) as tmp:
            models.save(model.cpu(), tokenizer, tmp / "model", {"role": "teacher", "source": source,
                                                                 "label_names": prep.info["label_names"]})
            write_json(tmp / "history.json", {"train": result.history, "dev": result.dev_history})
            metrics = {"train": result.metrics()}
            key = _finish(tmp, cfg, "adapt", inputs, metrics, {"model": source},
                          {"inputs": (data_dir,), "models": {"teacher": source}}, tracker)
        job.finished(cfg, ckpt)
    distributed.barrier()  # followers return once rank 0 has written
    return StepResult("adapt", Path(out_dir), metrics, key)


def dev_metrics(model, prep, side: str, device, batch_size: int = 64):
    """A function returning ``model``'s task metrics on the dev split (``side`` tokenization); None without dev."""
    from ikd.core.metrics import compute
    from ikd.training import loop

    dev = prep.splits["dev"]
    if not len(dev):
        return None
    other = "student" if side == "teacher" else "teacher"
    loader = loop.make_loader(dev.remove_columns(_side_columns(dev, other)), {side: prep.info["pad_ids"][side]},
                              batch_size, False, 0, sort_by_length=True)
    y = np.asarray(dev["label"])
    return lambda: compute(prep.info["metrics"], y, loop.predict(model, loader, side, device).argmax(-1).numpy())


def _tokenizer(prep, side: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(prep.tokenizer_dir(side)))


def _side_columns(ds, side: str) -> list[str]:
    return [c for c in ds.column_names if c.startswith(f"{side}_")]


# ---- distill ---------------------------------------------------------------------------------------
def distill(cfg: Config, data_dir: Path, teacher_dir: Path | None, out_dir: Path,
            live: Path | None = None, opts: JobOptions | None = None) -> StepResult:
    """Train the student with ``cfg.distill.strategy``. Writes out_dir/model/, the cached teacher outputs,
    and for strategies that train more than the student: out_dir/teacher/ (a learning teacher, with its
    optimizer state) and out_dir/strategy_state.safetensors (added modules)."""
    import datasets

    from ikd.core import models
    from ikd.core.data import Prepared
    from ikd.steps import job
    from ikd.strategies import STRATEGIES
    from ikd.training import distributed, loop

    opts = opts or job.JobOptions()
    dc = cfg.distill
    prep = Prepared.load(_require_dir(data_dir, "prepared data"))
    strategy_cls = STRATEGIES[dc.strategy]
    device = _training_device(cfg)
    pretrained_teacher = dc.strategy == "talking" and dc.talking.teacher_source == "pretrained"
    if strategy_cls.uses_teacher and teacher_dir is None and not pretrained_teacher:
        raise ConfigError(f"distill.strategy: {dc.strategy} needs a teacher (--teacher)")
    if strategy_cls.updates_teacher and dc.cache_teacher_outputs:
        raise ConfigError(f"distill.cache_teacher_outputs: the teacher of strategy {dc.strategy} changes "
                          "during training, so its outputs cannot be cached; set it to false or leave it unset")
    teacher, cache, inputs = None, None, {"data": read_key(data_dir)}
    if pretrained_teacher:
        teacher, t_source = models.build(cfg.teacher, prep.num_labels, cfg.seed)
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.to(device)
        inputs["teacher"] = json.dumps(t_source, sort_keys=True)
    elif strategy_cls.uses_teacher:
        teacher = _load_teacher(_require_dir(teacher_dir, "teacher"), prep).to(device)
        inputs["teacher"] = read_key(teacher_dir)
    ckpt = job.checkpoints(cfg, "distill", inputs, out_dir, opts)
    loop.seed_everything(cfg.seed)
    student, source = models.build(cfg.student, prep.num_labels, cfg.seed)
    student.to(device)
    train_ds = prep.splits["train"]
    transfer = prep.splits.get("transfer")
    if teacher is not None and transfer is not None and len(transfer):
        train_ds = datasets.concatenate_datasets([train_ds, transfer])  # unlabeled rows: label -1
    spec = strategy_cls.cache_spec(dc, teacher, student) if teacher is not None else None
    if spec is not None and dc.cache_teacher_outputs is not False:
        cache = teacher_outputs(teacher, prep, train_ds, device, inputs["teacher"], Path(out_dir), spec)
    if teacher is None or (cache is not None and (cache.features is not None or not strategy_cls.updates_teacher)):
        train_ds = train_ds.remove_columns(_side_columns(train_ds, "teacher"))
    pads = {s: prep.info["pad_ids"][s] for s in ("student", "teacher")}  # first side sets the length grouping
    loader = loop.make_loader(train_ds, pads, dc.batch_size, True, cfg.seed, group_by_length=dc.group_by_length)
    quiz = None
    if strategy_cls.uses_quiz and len(prep.splits["quiz"]):
        quiz = loop.make_loader(prep.splits["quiz"], pads, dc.quiz_batch_size or dc.batch_size, True, cfg.seed + 7)
    strategy = strategy_cls(dc, student, teacher, cache, quiz=quiz)
    with _tracker(live) as tracker, job.monitor(cfg, "distill", out_dir, opts) as pushed:
        result = loop.train(strategy, loader, dc, device, desc=f"distill[{dc.strategy}]",
                            dev=dev_metrics(student, prep, "student", device), tracker=tracker, checkpoints=ckpt,
                            monitor=pushed)
        if not distributed.is_main():
            return _follower_done("distill", out_dir)
        with atomic_dir(out_dir) as tmp:
            models.save(student.cpu(), _tokenizer(prep, "student"), tmp / "model",
                        {"role": "student", "source": source, "strategy": dc.strategy,
                         "label_names": prep.info["label_names"]})
            if cache is not None:
                _save_outputs(cache, tmp / "teacher_outputs.safetensors")
            _save_strategy_state(strategy, prep, tmp)
            write_json(tmp / "history.json", {"train": result.history, "dev": result.dev_history})
            metrics = {"strategy": dc.strategy, "world_size": distributed.world_size(),
                       "train_rows": len(prep.splits["train"]),
                       "transfer_rows": len(train_ds) - len(prep.splits["train"]), "train": result.metrics()}
            key = _finish(tmp, cfg, "distill", inputs, metrics, {"model": source},
                          {"inputs": (data_dir, teacher_dir), "models": {"student": source}}, tracker)
        job.finished(cfg, ckpt)
    distributed.barrier()
    return StepResult("distill", Path(out_dir), metrics, key)


def _save_strategy_state(strategy, prep, tmp: Path) -> None:
    """Added modules (safetensors) and a learning teacher (model folder + optimizer state)."""
    import torch
    from safetensors.torch import save_file

    from ikd.core import models
    extra = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in strategy.extra_modules().items()
             for k, v in m.state_dict().items()}
    if extra:
        save_file(extra, str(tmp / "strategy_state.safetensors"), metadata={"strategy": strategy.name})
    if strategy.updates_teacher:
        t_opt = strategy.t_opt.state_dict()
        teacher = strategy.trained_teacher().cpu()
        models.save(teacher, _tokenizer(prep, "teacher"), tmp / "teacher",
                    {"role": "teacher", "strategy": strategy.name, "label_names": prep.info["label_names"],
                     "source": {"name": f"trained by {strategy.name}", "layers": teacher.num_layers},
                     "teacher_updates": strategy.teacher_updates})
        torch.save(t_opt, tmp / "teacher" / "optimizer.pt")  # plain tensors: torch.load(weights_only=True)


def _load_teacher(teacher_dir: Path, prep):
    from ikd.core import models
    record = Path(teacher_dir) / "step.json"
    made_by = read_json(record).get("step") if record.is_file() else None
    if made_by not in (None, "adapt"):
        raise ModelError(f"{teacher_dir}: the output of `ikd {made_by}`, not an adapted teacher (the output of "
                         "`ikd adapt`)")
    model, _, meta = models.load(Path(teacher_dir) / "model")
    models.check_labels(meta, prep.info["label_names"], Path(teacher_dir) / "model", "teacher")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def teacher_outputs(teacher, prep, train_ds, device, teacher_key: str, previous_out: Path, spec):
    """Teacher outputs over the training rows (``spec``: which pooled states besides the logits), computed
    once; reused from ``previous_out`` when the teacher, data and spec match."""
    from safetensors.torch import load_file

    from ikd.strategies import TeacherOutputs
    from ikd.training import loop

    meta = {"teacher": teacher_key, "data": read_key(prep.path), "rows": str(len(train_ds)),
            "hidden": ",".join(map(str, spec.hidden)), "features": str(spec.features)}
    old = previous_out / "teacher_outputs.safetensors"
    if old.is_file():
        from safetensors import safe_open

        with safe_open(str(old), "pt") as f:
            if json.loads((f.metadata() or {}).get("ikd", "null")) == meta:
                return TeacherOutputs.from_tensors(load_file(str(old)), meta)
    ds = train_ds.remove_columns(_side_columns(train_ds, "student"))
    loader = loop.make_loader(ds, {"teacher": prep.info["pad_ids"]["teacher"]}, 64, False, 0, sort_by_length=True)
    out = loop.predict_outputs(teacher, loader, "teacher", device, spec.hidden, spec.features,
                               desc="teacher outputs")
    return TeacherOutputs.from_tensors(out, meta)


def _save_outputs(cache, path: Path) -> None:
    from safetensors.torch import save_file

    # one metadata key: safetensors writes several in a random order, and equal runs must give equal bytes
    save_file(cache.tensors(), str(path), metadata={"ikd": json.dumps(cache.meta, sort_keys=True)})


# ---- evaluate and export live in their own modules; re-exported here as steps ----------------------
def evaluate(cfg: Config, data_dir: Path, teacher_dir: Path | None, student_dir: Path, out_dir: Path,
             live: Path | None = None) -> StepResult:
    """Dev metrics, sizes and measured latency of teacher and student; writes report.md. ``live``: DVCLive
    folder (summary metrics and the dev confusion matrices)."""
    from ikd.steps.evaluate_models import evaluate_models

    prep_key = read_key(_require_dir(data_dir, "prepared data"))
    inputs = {"data": prep_key, "student": read_key(_require_dir(student_dir, "student"))}
    if teacher_dir is not None:
        inputs["teacher"] = read_key(_require_dir(teacher_dir, "teacher"))
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        metrics = evaluate_models(cfg, Path(data_dir), teacher_dir and Path(teacher_dir) / "model",
                                  Path(student_dir) / "model", tmp, tracker)
        key = _finish(tmp, cfg, "evaluate", inputs, metrics, None,
                      {"inputs": (data_dir, teacher_dir, student_dir)}, tracker)
    return StepResult("evaluate", Path(out_dir), metrics, key)


def export(cfg: Config, data_dir: Path, student_dir: Path, out_dir: Path, live: Path | None = None) -> StepResult:
    """The student to ONNX, checked against PyTorch on real dev inputs (ExportMismatchError past atol).
    ``live``: DVCLive folder (summary metrics)."""
    from ikd.steps.export_onnx import export_student

    inputs = {"data": read_key(_require_dir(data_dir, "prepared data")),
              "student": read_key(_require_dir(student_dir, "student"))}
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        metrics = export_student(cfg, Path(data_dir), Path(student_dir) / "model", tmp)
        key = _finish(tmp, cfg, "export", inputs, metrics, None, {"inputs": (data_dir, student_dir)}, tracker)
    return StepResult("export", Path(out_dir), metrics, key)
