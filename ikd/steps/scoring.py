"""Teacher outputs over the distillation rows, computed once and kept as an artifact of their own.

A **scores folder** holds one ``.npy`` file per output (``logits.npy`` [N, C], ``features.npy`` [N, H],
``hidden.<i>.npy`` [N, H]) written batch by batch into memory-mapped arrays, so that 100k+ rows never sit in
memory twice, and ``scores.json`` (written last: a folder without it is unfinished) with what the outputs are of:

- ``teacher``: the teacher's key (the adapt step's key, or the pretrained weights' digest),
- ``data``: the prepared data's key, ``rows``: the distillation rows (train, then transfer) and which of them,
- ``hidden`` / ``features``: which outputs (a strategy's :class:`~ikd.strategies.base.CacheSpec`),
- ``backend``: ``torch`` or ONNX Runtime (``onnx`` fp32, ``onnx-int8`` dynamic int8 weights).

The digest of those facts names the folder in the shared cache (``$IKD_CACHE/teacher-outputs/<digest>``,
default ``~/.cache/ikd``), so that every strategy, seed and output folder distilling from the same teacher and
data reads the same outputs (:func:`cached`). ``ikd score`` writes one folder for a row range (a shard) and
merges shard folders into one (:func:`merge`): the Kubeflow pipeline scores a large transfer set as parallel
shard tasks.

The ONNX backends export the teacher with :func:`ikd.steps.export_onnx.to_onnx`, check the graph against PyTorch
on the first rows (max logit difference and argmax agreement: the check is in the folder's record) and score
logits only; a strategy that wants pooled states from the teacher is scored with torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ikd import progress
from ikd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RECORD = "scores.json"
BACKENDS = ("torch", "onnx", "onnx-int8")
#: Rows scored by both PyTorch and an ONNX graph before the graph scores the rest.
CHECK_ROWS = 256


def cache_root() -> Path:
    """Where shared scores folders live: ``<ikd cache>/teacher-outputs`` (``$IKD_CACHE``, default ``~/.cache/ikd``;
    the model packs' cache too)."""
    from ikd.core.packs import cache_dir

    return cache_dir() / "teacher-outputs"


def identity(teacher: str, data: str, rows: tuple[int, int], hidden: tuple[int, ...], features: bool, backend: str):
    """The facts scores are of (``scores.json``'s ``of``) and their digest (the shared cache's folder name)."""
    of = {
        "teacher": teacher,
        "data": data,
        "rows": [int(rows[0]), int(rows[1])],
        "hidden": [int(h) for h in hidden],
        "features": bool(features),
        "backend": backend,
    }
    return of, hashlib.sha256(json.dumps(of, sort_keys=True).encode()).hexdigest()[:20]


def read(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The outputs of a finished scores folder (memory-mapped, read-only) and its record."""
    folder = Path(folder)
    record_path = folder / RECORD
    if not record_path.is_file():
        raise DataError(f"{folder}: not a finished teacher scores folder (no {RECORD}); run `ikd score` again")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        tensors = {}
        for name in record["outputs"]:
            array = np.load(folder / f"{name}.npy", mmap_mode="c")  # copy-on-write: the file is never changed
            if len(array) != record["rows"]:
                raise ValueError(f"{name}.npy holds {len(array)} rows, the record says {record['rows']}")
            tensors[name] = torch.from_numpy(np.asarray(array))  # float32 [N, ...], pages read on demand
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{folder}: unreadable teacher scores ({exc}); run `ikd score` again") from None
    return tensors, record


def matches(record: dict[str, Any], of: dict[str, Any]) -> bool:
    return record.get("of") == of


class _Sink:
    """Memory-mapped ``.npy`` arrays in a temporary folder, filled batch by batch at the rows' positions."""

    def __init__(self, folder: Path, rows: int):
        self.folder, self.rows = folder, rows
        self.arrays: dict[str, np.memmap] = {}

    def put(self, name: str, index: np.ndarray, values: np.ndarray) -> None:
        if name not in self.arrays:
            shape = (self.rows, *values.shape[1:])
            self.arrays[name] = np.lib.format.open_memmap(
                self.folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape
            )
        self.arrays[name][index] = values

    def close(self) -> list[str]:
        for a in self.arrays.values():
            a.flush()
        names = sorted(self.arrays)
        self.arrays.clear()
        return names


def score(
    teacher,
    ds,
    pad_id: int,
    out: Path,
    of: dict[str, Any],
    device: torch.device,
    batch_size: int = 64,
    threads: int | None = None,
    desc: str = "teacher outputs",
) -> Path:
    """Score the rows ``of["rows"]`` of ``ds`` (a prepared split with ``teacher_*`` columns) with ``teacher`` on
    ``of["backend"]`` into the scores folder ``out`` (atomic; memory-mapped as it fills). Returns ``out``."""
    from ikd.training import loop

    start, stop = of["rows"]
    if not 0 <= start <= stop <= len(ds):
        raise DataError(f"teacher scores: rows {start}:{stop} are outside the {len(ds)} distillation rows")
    part = ds.select(range(start, stop))
    part = part.remove_columns([c for c in part.column_names if c.startswith("student_")])
    loader = loop.make_loader(part, {"teacher": pad_id}, batch_size, False, 0, sort_by_length=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    began = time.perf_counter()
    try:
        sink = _Sink(tmp, len(part))
        extra: dict[str, Any] = {}
        backend = of["backend"]
        if backend == "torch":
            _score_torch(teacher, loader, device, of, sink, desc)
        else:
            extra["check"] = _score_onnx(teacher, loader, of, sink, tmp, threads, desc)
        names = sink.close()
        if not names:  # no rows: an empty logits array, so that the folder reads back
            np.save(tmp / "logits.npy", np.zeros((0, teacher.num_labels), dtype=np.float32))
            names = ["logits"]
        seconds = time.perf_counter() - began
        extra |= {"seconds": round(seconds, 3), "rows_per_second": round(len(part) / max(seconds, 1e-9), 2)}
        record = {"of": of, "rows": len(part), "outputs": names, **extra}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _place(tmp, out, of)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _place(tmp: Path, out: Path, of: dict[str, Any]) -> None:
    """Rename the finished ``tmp`` to ``out``. Another process (a torchrun rank, a parallel run) may have placed
    the same scores there meanwhile: then those are kept and ``tmp`` is dropped."""

    def same() -> bool:
        try:
            return matches(json.loads((out / RECORD).read_text(encoding="utf-8")), of)
        except (OSError, ValueError):
            return False

    if out.exists():
        if same():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:
        if not same():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@torch.no_grad()
def _score_torch(teacher, loader, device, of, sink: _Sink, desc: str) -> None:

    from ikd.core.tensors import model_inputs, to_device

    teacher.eval()
    hidden, features = tuple(of["hidden"]), bool(of["features"])
    want = hidden + ((teacher.num_layers,) if features else ())
    for batch in progress.bar(loader, desc=desc, unit="batch", dynamic_ncols=True, mininterval=1.0):
        inputs = model_inputs(to_device(batch, device)["teacher"])
        index = batch["index"].numpy()
        if want:
            logits, states = teacher(**inputs, pooled_layers=want)
            for i, s in zip(hidden, states, strict=False):
                sink.put(f"hidden.{i}", index, s.float().cpu().numpy())
            if features:
                sink.put("features", index, states[-1].float().cpu().numpy())
        else:
            logits = teacher(**inputs)
        sink.put("logits", index, logits.float().cpu().numpy())


def onnx_teacher(teacher, tokenizer_names: list[str], folder: Path, int8: bool) -> Path:
    """The teacher as an ONNX graph in ``folder``: exported (eager attention), optimized by ONNX Runtime's
    transformer optimizer, and with dynamic int8 weights when ``int8``. Returns the graph to run."""
    import copy

    from ikd.core.foreign import ForeignClassifier
    from ikd.steps.export_onnx import optimize, to_onnx
    from ikd.steps.onnx_int8 import quantize

    if isinstance(teacher, ForeignClassifier):
        raise ConfigError(
            "distill.score_backend: onnx exports ikd's classifier only; an imported transformers teacher "
            "(adapt.mode: import) scores with torch"
        )
    model = copy.deepcopy(teacher).cpu().eval()  # the export switches attention to eager: not the caller's model
    length = 16
    example = {
        "input_ids": torch.ones(2, length, dtype=torch.long),
        "attention_mask": torch.ones(2, length, dtype=torch.long),
        "token_type_ids": torch.zeros(2, length, dtype=torch.long),
    }
    fp32 = folder / "teacher.onnx"
    to_onnx(model, tokenizer_names, example, fp32, 17, exporter="torchscript")
    graph = fp32
    try:
        opt = folder / "teacher.opt.onnx"
        optimize(fp32, opt, model)
        graph = opt
    except Exception as exc:
        log.info("teacher scores: ONNX Runtime's optimizer left the teacher graph as exported (%s)", exc)
    if int8:
        q = folder / "teacher.int8.onnx"
        quantize(graph, q, "per_channel")
        graph = q
    return graph


def _score_onnx(teacher, loader, of, sink: _Sink, work: Path, threads: int | None, desc: str) -> dict[str, Any]:
    """Score logits with ONNX Runtime; the first batches are also scored by PyTorch and compared."""

    from ikd.core.tensors import model_inputs
    from ikd.steps.onnx_checks import session

    if of["hidden"] or of["features"]:
        raise DataError(
            f"teacher scores: backend {of['backend']} gives logits only; this strategy also wants the teacher's "
            "pooled states (set distill.score_backend: torch, or auto)"
        )
    names = ["input_ids", "attention_mask"]
    if "teacher_token_type_ids" in loader.dataset.ds.column_names:
        names.append("token_type_ids")
    graph_dir = work / ".graph"
    graph_dir.mkdir()
    cpu_teacher = teacher.cpu().eval()
    began = time.perf_counter()
    graph = onnx_teacher(cpu_teacher, names, graph_dir, of["backend"] == "onnx-int8")
    sess = session(graph, threads)
    export_seconds = time.perf_counter() - began
    wanted = [i.name for i in sess.get_inputs()]
    checked, worst, agree = 0, 0.0, 0
    for batch in progress.bar(loader, desc=desc, unit="batch", dynamic_ncols=True, mininterval=1.0):
        side = batch["teacher"]
        feed = {}
        for n in wanted:
            value = side.get(n)
            feed[n] = (value if value is not None else torch.zeros_like(side["input_ids"])).numpy().astype(np.int64)
        logits = sess.run(["logits"], feed)[0]
        if checked < CHECK_ROWS:
            with torch.no_grad():
                ref = cpu_teacher(**model_inputs(side)).float().numpy()
            worst = max(worst, float(np.abs(ref - logits).max()))
            agree += int((ref.argmax(-1) == logits.argmax(-1)).sum())
            checked += len(ref)
        sink.put("logits", batch["index"].numpy(), logits)
    shutil.rmtree(graph_dir, ignore_errors=True)
    return {
        "graph": graph.name,
        "export_seconds": round(export_seconds, 3),
        "check_rows": checked,
        "max_abs_diff": round(worst, 6),
        "argmax_agreement": round(agree / max(checked, 1), 6),
    }


def merge(parts: list[Path], out: Path) -> Path:
    """Join shard folders (contiguous row ranges of one teacher, data and spec) into one scores folder."""
    records = []
    for p in parts:
        _, record = read(p)
        records.append((record["of"]["rows"][0], Path(p), record))
    if not records:
        raise DataError("teacher scores: no shard folders to merge")
    records.sort(key=lambda r: r[0])
    first = records[0][2]["of"]
    same = {k: v for k, v in first.items() if k != "rows"}
    edge = first["rows"][0]
    for _, path, record in records:
        other = {k: v for k, v in record["of"].items() if k != "rows"}
        if other != same:
            diff = sorted(k for k in same if same[k] != other.get(k))
            raise DataError(f"{path}: scores of another {', '.join(diff)} than {records[0][1]}; cannot merge them")
        if record["of"]["rows"][0] != edge:
            raise DataError(f"{path}: starts at row {record['of']['rows'][0]}, the shards before it end at {edge}")
        edge = record["of"]["rows"][1]
    of = {**same, "rows": [first["rows"][0], edge]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sink, at = _Sink(tmp, edge - first["rows"][0]), 0
        for _, path, record in records:
            n = int(record["rows"])
            for name in record["outputs"]:
                sink.put(name, np.arange(at, at + n), np.load(path / f"{name}.npy", mmap_mode="r"))
            at += n
        names = sink.close()
        seconds = sum(float(r.get("seconds", 0.0)) for _, _, r in records)
        record = {"of": of, "rows": at, "outputs": names, "shards": len(records), "seconds": round(seconds, 3)}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def shard_rows(total: int, shards: int, index: int) -> tuple[int, int]:
    """Row range ``[start, stop)`` of shard ``index`` of ``shards`` contiguous, nearly equal shards."""
    if shards < 1 or not 0 <= index < shards:
        raise DataError(f"teacher scores: shard {index} of {shards} does not exist (0 <= index < shards)")
    base, extra = divmod(total, shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def cached(of: dict[str, Any], digest: str) -> Path | None:
    """The shared cache's finished folder for these facts, if there is one."""
    folder = cache_root() / digest
    if (folder / RECORD).is_file():
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        except ValueError:
            return None
        if matches(record, of):
            return folder
    return None
