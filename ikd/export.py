"""torch -> ONNX for the student, checked against PyTorch with ONNX Runtime; optional int8.

Export uses ``torch.onnx.export(dynamo=True)`` with dynamic batch and sequence axes (the example batch
has batch >= 2 and seq >= 2, so torch.export does not specialise them). The IR version is capped at what
ONNX Runtime reads. Every export is compared with PyTorch on real dev inputs: past ``export.atol`` it
fails with :class:`~ikd.errors.ExportMismatchError` and nothing is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ikd import loop, models
from ikd.config import Config
from ikd.data import Prepared
from ikd.errors import ExportMismatchError
from ikd.metrics import compute, write_json

MAX_IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; torch writes 10; onnx 1.23's helpers default to 14
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"


class _Logits(nn.Module):
    """The classifier with positional inputs in a fixed order (what the ONNX graph's inputs will be)."""

    def __init__(self, model: models.SequenceClassifier, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids, attention_mask, token_type_ids)


def input_names(tokenizer) -> list[str]:
    names = ["input_ids", "attention_mask"]
    return names + ["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else names


def to_onnx(model: models.SequenceClassifier, names: list[str], example: dict[str, torch.Tensor], path: Path,
            opset: int) -> None:
    """Write ``model`` as ONNX with inputs ``names`` ([batch, seq] int64) and output ``logits`` [batch, C]."""
    import onnx
    from torch.export import Dim

    batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=1, max=8192)
    wrapper = _Logits(model.eval(), names).eval()
    args = tuple(example[n] for n in names)
    dyn = tuple({0: batch, 1: seq} for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names, output_names=["logits"],
                                    dynamic_shapes=dyn, opset_version=opset, external_data=False, verbose=False)
    program.save(str(path))
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _batches(prep: Prepared, rows: int, batch_size: int):
    dev = prep.splits["dev"]
    dev = dev.select(range(min(rows, len(dev)))).remove_columns(
        [c for c in dev.column_names if c.startswith("teacher_")])
    return list(loop.make_loader(dev, {"student": prep.info["pad_ids"]["student"]}, batch_size, False, 0))


def _run(sess, names: list[str], side: dict[str, torch.Tensor]) -> np.ndarray:
    feed = {n: side[n].numpy().astype(np.int64) for n in names}
    return sess.run(["logits"], feed)[0]


def parity(model, sess, names: list[str], batches) -> dict[str, Any]:
    """Max |ORT - torch| over ``batches`` and how often the argmax agrees."""
    worst, agree, n = 0.0, 0, 0
    with torch.no_grad():
        for b in batches:
            ref = model(*(b["student"].get(k) for k in names)).numpy()
            got = _run(sess, names, b["student"])
            worst = max(worst, float(np.abs(ref - got).max()))
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            n += len(ref)
    return {"max_abs_diff": worst, "argmax_agreement": agree / max(n, 1), "rows": n}


def ort_metrics(sess, names: list[str], batches, metric_names: list[str]) -> dict[str, float]:
    preds, ys = [], []
    for b in batches:
        preds.append(_run(sess, names, b["student"]).argmax(-1))
        ys.append(b["labels"].numpy())
    return compute(metric_names, np.concatenate(ys), np.concatenate(preds))


def export_student(cfg: Config, data_dir: Path, student_dir: Path, out: Path) -> dict[str, Any]:
    """Export, check and describe the student in ``out``. Returns the export metrics."""
    prep = Prepared.load(data_dir)
    model, tokenizer, meta = models.load(student_dir)
    names = input_names(tokenizer)
    parity_batches = _batches(prep, cfg.export.parity_rows, 16)
    example = {k: v[:2] for k, v in parity_batches[0]["student"].items()} if len(parity_batches[0]["labels"]) >= 2 \
        else None
    if example is None or example["input_ids"].shape[1] < 2:
        example = {n: torch.ones((2, 8), dtype=torch.long) for n in names}
    path = out / MODEL_FILE
    to_onnx(model, names, example, path, cfg.export.opset)
    sess = session(path, cfg.threads)
    check = parity(model, sess, names, parity_batches)
    if check["max_abs_diff"] > cfg.export.atol:
        raise ExportMismatchError(f"ONNX output 'logits' differs from PyTorch by {check['max_abs_diff']:.3g} "
                                  f"> export.atol {cfg.export.atol} on {check['rows']} dev rows")
    all_dev = _batches(prep, len(prep.splits["dev"]), 32)
    metric_names = prep.info["metrics"]
    result: dict[str, Any] = {"path": MODEL_FILE, **check, "atol": cfg.export.atol, "opset": cfg.export.opset,
                              "dev": ort_metrics(sess, names, all_dev, metric_names),
                              "size_bytes": path.stat().st_size, "sha256": models.sha256_file(path)}
    if cfg.export.quantize:
        result["int8"] = quantize(path, out / INT8_FILE, model, names, parity_batches, all_dev, metric_names,
                                  cfg.threads)
    if cfg.export.triton:
        result["triton"] = triton_repository(cfg, path, out / "triton", names, len(prep.info["label_names"]))
    tokenizer.save_pretrained(str(out))
    write_json(out / "labels.json", {"labels": prep.info["label_names"]})
    write_json(out / "metadata.json", {
        "model_file": MODEL_FILE, "sha256": result["sha256"], "inputs": names, "outputs": ["logits"],
        "opset": cfg.export.opset, "ir_version": MAX_IR_VERSION, "task": prep.info["task"],
        "text_fields": prep.info["text_fields"], "max_length": prep.info["max_length"],
        "label_names": prep.info["label_names"], "student": meta["source"], "strategy": meta.get("strategy"),
        "metrics": {k: v for k, v in result.items() if k not in ("path", "sha256")}, "config": cfg.to_dict()})
    return result


def quantize(src: Path, dst: Path, model, names, parity_batches, all_dev, metric_names, threads) -> dict[str, Any]:
    """Dynamic int8 (per-channel weights) with its own parity and accuracy figures."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The dynamo exporter leaves intermediate shape annotations that the quantizer's strict shape
    # inference rejects after constant deduplication; they are hints only, so drop them first.
    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "clean.onnx"
        onnx.save(proto, str(clean))
        quantize_dynamic(str(clean), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    sess = session(dst, threads)
    return {"path": dst.name, **parity(model, sess, names, parity_batches),
            "dev": ort_metrics(sess, names, all_dev, metric_names), "size_bytes": dst.stat().st_size,
            "sha256": models.sha256_file(dst)}


def triton_repository(cfg: Config, model_file: Path, root: Path, names: list[str], num_labels: int) -> dict[str, Any]:
    """A Triton model repository under ``root``: ``<name>/1/model.onnx`` (the checked export, copied) and
    ``<name>/config.pbtxt`` (inputs, logits output, dynamic batching), what KServe's ``modelFormat: onnx`` runtime
    loads from a ``storageUri``. Returns the layout's record for metrics.json."""
    import shutil

    ec = cfg.export
    version = root / ec.triton_name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version / "model.onnx")
    inputs = "\n".join(f'  {{ name: "{n}" data_type: TYPE_INT64 dims: [ -1 ] }}' + ("," if i < len(names) - 1 else "")
                       for i, n in enumerate(names))
    text = (f'name: "{ec.triton_name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {ec.triton_max_batch_size}\n'
            f"input [\n{inputs}\n]\n"
            f'output [\n  {{ name: "logits" data_type: TYPE_FP32 dims: [ {num_labels} ] }}\n]\n'
            f"dynamic_batching {{ max_queue_delay_microseconds: {ec.triton_max_delay_us} }}\n")
    (root / ec.triton_name / "config.pbtxt").write_text(text)
    return {"path": f"triton/{ec.triton_name}", "max_batch_size": ec.triton_max_batch_size}
