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
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ikd
from ikd.config import Config
from ikd.errors import ConfigError, DataError, ModelError
from ikd.metrics import read_json, write_json

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


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(ikd.__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
            extra: dict[str, Any] | None = None) -> str:
    key = step_key(cfg, step, inputs)
    (tmp / "config.yaml").write_text(cfg.to_yaml())
    write_json(tmp / "metrics.json", metrics)
    write_json(tmp / "step.json", {"step": step, "key": key, "inputs": inputs, "sections": list(STEP_SECTIONS[step]),
                                   "seed": cfg.seed, "ikd_version": ikd.__version__, "git_revision": git_revision(),
                                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   **(extra or {})})
    return key


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


# ---- prepare ---------------------------------------------------------------------------------------
def source_fingerprint(cfg: Config, source: str) -> dict[str, str]:
    """sha256 of the train and dev files of a local source (cheap enough to decide staleness)."""
    from ikd.data import Schema, find_file

    folder = Path(source)
    schema = Schema.from_config(cfg.data)
    if not folder.is_dir():
        return {"hub": f"{source}:{schema.hub_config or ''}"}
    files = [find_file(folder, schema.train_file), find_file(folder, schema.dev_file, ("validation", "valid"))]
    if cfg.data.transfer_file:
        files.append(find_file(folder, cfg.data.transfer_file))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def prepare(cfg: Config, source: str, out_dir: Path) -> StepResult:
    """Read, validate, split (train / quiz / dev) and tokenize for teacher and student."""
    import datasets

    from ikd import data, models

    schema = data.Schema.from_config(cfg.data)
    for m in (cfg.teacher, cfg.student):  # fail now, not after the teacher has trained
        if m.init == "pretrained":
            models.resolve(m.name, m.revision)
    train, dev, fingerprint = data.load_source(str(source), schema)
    names = data.label_names(schema, train)
    if len(names) < 2:
        raise DataError(f"{train.origin[0].rsplit(':', 1)[0]}: train has a single label value ({names[0]})")
    train_y = data.encode_labels(train, names, "train")
    dev_y = data.encode_labels(dev, names, "train")
    rest, quiz = data.carve_quiz(train, train_y, dev, cfg.data.quiz_rows, cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    left_out = np.empty(0, dtype=int)
    if cfg.data.max_train_rows is not None:
        kept = rest[data.stratified_sample(train_y[rest], cfg.data.max_train_rows, rng)]
        left_out = np.setdiff1d(rest, kept) if cfg.data.transfer == "rest" else left_out
        rest = kept
    extra = None
    if cfg.data.transfer_file:
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"data.transfer_file needs a local data folder; {source} is not one")
        extra_path = data.find_file(folder, cfg.data.transfer_file)
        extra = data.read_split(extra_path, schema, labeled=False)
        fingerprint[extra_path.name] = hashlib.sha256(extra_path.read_bytes()).hexdigest()
    transfer = data.transfer_rows(train, left_out, extra, dev, cfg.data.max_transfer_rows, cfg.seed + 2)
    dev_idx = np.arange(len(dev.texts))
    if cfg.data.max_dev_rows is not None:
        dev_idx = data.stratified_sample(dev_y, cfg.data.max_dev_rows, rng)
    if len(rest) == 0:
        raise DataError("no training rows left after carving the quiz split; lower data.quiz_rows")
    tokenizers = {"teacher": models.load_tokenizer(cfg.teacher), "student": models.load_tokenizer(cfg.student)}
    splits = {"train": (train.take(rest), train_y[rest]), "quiz": (train.take(quiz), train_y[quiz]),
              "dev": (dev.take(dev_idx), dev_y[dev_idx]),
              "transfer": (transfer, np.full(len(transfer.texts), -1, dtype=np.int64))}
    with atomic_dir(out_dir) as tmp:
        built, stats = {}, {}
        for name, (split, y) in splits.items():
            cols: dict[str, Any] = {"text_a": [t[0] for t in split.texts], "label": y.tolist(),
                                    "origin": split.origin, "source_row": split.source_rows}
            if len(schema.text_fields) == 2:
                cols["text_b"] = [t[1] for t in split.texts]
            for side, tok in tokenizers.items():
                for k, v in data.tokenize(tok, split.texts, cfg.data.max_length).items():
                    cols[f"{side}_{k}"] = v
            built[name] = datasets.Dataset.from_dict(cols, features=_features(cols))
            stats[name] = {"rows": len(y), "labels": np.bincount(y[y >= 0], minlength=len(names)).tolist(),
                           **{f"{side}_mean_tokens": round(float(np.mean([len(r) for r in cols[f"{side}_input_ids"]]))
                                                           if len(y) else 0.0, 2) for side in tokenizers}}
        # empty splits are not written (datasets cannot read a zero-row split back); Prepared.load restores them
        datasets.DatasetDict({k: v for k, v in built.items() if len(v)}).save_to_disk(str(tmp / "data"))
        for side, tok in tokenizers.items():
            tok.save_pretrained(str(tmp / "tokenizers" / side))
        info = {**data.schema_dict(schema), "label_names": names, "num_labels": len(names),
                "max_length": cfg.data.max_length, "source": str(source), "fingerprint": fingerprint,
                "pad_ids": {s: int(t.pad_token_id) for s, t in tokenizers.items()}, "splits": stats}
        write_json(tmp / "schema.json", info)
        metrics = {"task": schema.task, "num_labels": len(names), **{f"{k}_rows": v["rows"] for k, v in stats.items()}}
        key = _finish(tmp, cfg, "prepare", {"source": json.dumps(fingerprint, sort_keys=True)},
                      metrics, {"fingerprint": fingerprint})
    return StepResult("prepare", Path(out_dir), metrics, key)


def _features(cols: dict[str, Any]):
    import datasets

    f = {}
    for k in cols:
        if k.endswith(("_input_ids", "_token_type_ids")):
            f[k] = datasets.List(datasets.Value("int32"))
        elif k in ("label", "source_row"):
            f[k] = datasets.Value("int64")
        else:
            f[k] = datasets.Value("string")
    return datasets.Features(f)


# ---- adapt -----------------------------------------------------------------------------------------
def _training_device(cfg: Config):
    """The device of this process; joins the process group when launched by torchrun (WORLD_SIZE > 1)."""
    from ikd import distributed, loop

    device = loop.select_device(cfg)
    distributed.setup(device.type)
    return distributed.local_device(device)


def _follower_done(step: str, out_dir: Path) -> StepResult:
    """Ranks > 0 write nothing: wait until rank 0 has written the step's output, then report it."""
    from ikd import distributed

    distributed.barrier()
    f = Path(out_dir) / "metrics.json"
    return StepResult(step, Path(out_dir), read_json(f) if f.is_file() else {}, read_key(out_dir))


def adapt(cfg: Config, data_dir: Path, out_dir: Path) -> StepResult:
    """Fine-tune the teacher on the task (full fine-tuning). Writes out_dir/model/."""
    from ikd import distributed, loop, models
    from ikd.data import Prepared
    from ikd.strategies.finetune import Finetune

    prep = Prepared.load(_require_dir(data_dir, "prepared data"))
    device = _training_device(cfg)
    loop.seed_everything(cfg.seed)
    tokenizer = _tokenizer(prep, "teacher")
    model, source = models.build(cfg.teacher, prep.num_labels, cfg.seed)
    model.to(device)
    ds = prep.splits["train"].remove_columns(_side_columns(prep.splits["train"], "student"))
    loader = loop.make_loader(ds, {"teacher": prep.info["pad_ids"]["teacher"]}, cfg.adapt.batch_size, True, cfg.seed,
                              group_by_length=cfg.adapt.group_by_length)
    result = loop.train(Finetune(cfg.adapt, model, input_side="teacher"), loader, cfg.adapt, device, desc="adapt")
    if not distributed.is_main():
        return _follower_done("adapt", out_dir)
    with atomic_dir(out_dir) as tmp:
        models.save(model.cpu(), tokenizer, tmp / "model", {"role": "teacher", "source": source,
                                                             "label_names": prep.info["label_names"]})
        write_json(tmp / "history.json", {"train": result.history})
        metrics = {"train": result.metrics()}
        key = _finish(tmp, cfg, "adapt", {"data": read_key(data_dir)}, metrics, {"model": source})
    distributed.barrier()  # followers return once rank 0 has written
    return StepResult("adapt", Path(out_dir), metrics, key)


def _tokenizer(prep, side: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(prep.tokenizer_dir(side)))


def _side_columns(ds, side: str) -> list[str]:
    return [c for c in ds.column_names if c.startswith(f"{side}_")]


# ---- distill ---------------------------------------------------------------------------------------
def distill(cfg: Config, data_dir: Path, teacher_dir: Path | None, out_dir: Path) -> StepResult:
    """Train the student with ``cfg.distill.strategy``. Writes out_dir/model/, the cached teacher outputs,
    and for strategies that train more than the student: out_dir/teacher/ (a learning teacher, with its
    optimizer state) and out_dir/strategy_state.safetensors (added modules)."""
    import datasets

    from ikd import distributed, loop, models
    from ikd.data import Prepared
    from ikd.strategies import STRATEGIES

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
    result = loop.train(strategy, loader, dc, device, desc=f"distill[{dc.strategy}]")
    if not distributed.is_main():
        return _follower_done("distill", out_dir)
    with atomic_dir(out_dir) as tmp:
        models.save(student.cpu(), _tokenizer(prep, "student"), tmp / "model",
                    {"role": "student", "source": source, "strategy": dc.strategy,
                     "label_names": prep.info["label_names"]})
        if cache is not None:
            _save_outputs(cache, tmp / "teacher_outputs.safetensors")
        _save_strategy_state(strategy, prep, tmp)
        write_json(tmp / "history.json", {"train": result.history})
        metrics = {"strategy": dc.strategy, "world_size": distributed.world_size(),
                   "train_rows": len(prep.splits["train"]),
                   "transfer_rows": len(train_ds) - len(prep.splits["train"]), "train": result.metrics()}
        key = _finish(tmp, cfg, "distill", inputs, metrics, {"model": source})
    distributed.barrier()
    return StepResult("distill", Path(out_dir), metrics, key)


def _save_strategy_state(strategy, prep, tmp: Path) -> None:
    """Added modules (safetensors) and a learning teacher (model folder + optimizer state)."""
    import torch
    from safetensors.torch import save_file

    from ikd import models

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
    from ikd import models

    model, _, meta = models.load(Path(teacher_dir) / "model")
    if meta["num_labels"] != prep.num_labels or meta.get("label_names") != prep.info["label_names"]:
        raise ModelError(f"{teacher_dir}: the teacher was trained for labels {meta.get('label_names')}, "
                         f"the data has {prep.info['label_names']}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def teacher_outputs(teacher, prep, train_ds, device, teacher_key: str, previous_out: Path, spec):
    """Teacher outputs over the training rows (``spec``: which pooled states besides the logits), computed
    once; reused from ``previous_out`` when the teacher, data and spec match."""
    from safetensors.torch import load_file

    from ikd import loop
    from ikd.strategies import TeacherOutputs

    meta = {"teacher": teacher_key, "data": read_key(prep.path), "rows": str(len(train_ds)),
            "hidden": ",".join(map(str, spec.hidden)), "features": str(spec.features)}
    old = previous_out / "teacher_outputs.safetensors"
    if old.is_file():
        from safetensors import safe_open

        with safe_open(str(old), "pt") as f:
            if f.metadata() == meta:
                return TeacherOutputs.from_tensors(load_file(str(old)), meta)
    ds = train_ds.remove_columns(_side_columns(train_ds, "student"))
    loader = loop.make_loader(ds, {"teacher": prep.info["pad_ids"]["teacher"]}, 64, False, 0, sort_by_length=True)
    out = loop.predict_outputs(teacher, loader, "teacher", device, spec.hidden, spec.features,
                               desc="teacher outputs")
    return TeacherOutputs.from_tensors(out, meta)


def _save_outputs(cache, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(cache.tensors(), str(path), metadata=cache.meta)


# ---- evaluate and export live in their own modules; re-exported here as steps ----------------------
def evaluate(cfg: Config, data_dir: Path, teacher_dir: Path | None, student_dir: Path, out_dir: Path) -> StepResult:
    """Dev metrics, sizes and measured latency of teacher and student; writes report.md."""
    from ikd.evaluate import evaluate_models

    prep_key = read_key(_require_dir(data_dir, "prepared data"))
    inputs = {"data": prep_key, "student": read_key(_require_dir(student_dir, "student"))}
    if teacher_dir is not None:
        inputs["teacher"] = read_key(_require_dir(teacher_dir, "teacher"))
    with atomic_dir(out_dir) as tmp:
        metrics = evaluate_models(cfg, Path(data_dir), teacher_dir and Path(teacher_dir) / "model",
                                  Path(student_dir) / "model", tmp)
        key = _finish(tmp, cfg, "evaluate", inputs, metrics)
    return StepResult("evaluate", Path(out_dir), metrics, key)


def export(cfg: Config, data_dir: Path, student_dir: Path, out_dir: Path) -> StepResult:
    """The student to ONNX, checked against PyTorch on real dev inputs (ExportMismatchError past atol)."""
    from ikd.export import export_student

    inputs = {"data": read_key(_require_dir(data_dir, "prepared data")),
              "student": read_key(_require_dir(student_dir, "student"))}
    with atomic_dir(out_dir) as tmp:
        metrics = export_student(cfg, Path(data_dir), Path(student_dir) / "model", tmp)
        key = _finish(tmp, cfg, "export", inputs, metrics)
    return StepResult("export", Path(out_dir), metrics, key)
