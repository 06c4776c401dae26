"""torch -> ONNX for the student, checked against PyTorch with ONNX Runtime; optional optimized and int8 graphs.

Export uses ``torch.onnx.export`` with dynamic batch and sequence axes: the dynamo exporter by default, or the
legacy TorchScript one with eager attention (``export.exporter``), the graph whose attention ONNX Runtime's
transformer optimizer fuses. The IR version is capped at what ONNX Runtime reads. Every file written is compared
with PyTorch on real dev rows: the fp32 and optimized graphs past ``export.atol`` fail the export with
:class:`~ikd.errors.ExportMismatchError` and nothing is written. Every file is also run on the prepared ``calib``
rows and on all dev rows: its metrics there and how often its argmax agrees with the PyTorch student's. The int8
guard (:mod:`ikd.steps.onnx_int8`) decides on the calib figures (``export.int8_min_agreement``,
``export.int8_max_loss``), on dev only when the prepared data has no calib rows (one warning, ``judged_on: dev``);
dev figures are reported, never used to decide. Each file's parity, agreement, calib and dev metrics, speed and
sha256 go to ``metadata.json``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ikd.config import Config
from ikd.core import models
from ikd.core.data import Prepared
from ikd.core.metrics import Tracker, write_json
from ikd.core.sources import served_label_names
from ikd.errors import ExportMismatchError
from ikd.steps import model_card
from ikd.steps.io import StepResult, atomic_dir, finish, require_dir
from ikd.steps.onnx_checks import FileChecks
from ikd.steps.onnx_int8 import choose_int8
from ikd.steps.table import input_keys

MAX_IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; torch writes 10; onnx 1.23's helpers default to 14
MODEL_FILE = "model.onnx"
OPT_FILE = "model.opt.onnx"
INT8_FILE = "model.int8.onnx"
VARIANT_FILES = {"fp32": MODEL_FILE, "optimized": OPT_FILE, "int8": INT8_FILE}
log = logging.getLogger("ikd")


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
    return [*names, "token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else names


def to_onnx(
    model: models.SequenceClassifier,
    names: list[str],
    example: dict[str, torch.Tensor],
    path: Path,
    opset: int,
    exporter: str = "dynamo",
) -> None:
    """Write ``model`` as ONNX with inputs ``names`` ([batch, seq] int64) and output ``logits`` [batch, C]."""
    import onnx

    wrapper = _Logits(model.eval(), names).eval()
    args = tuple(example[n] for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            _eager_attention(model)
            axes = {**{n: {0: "batch", 1: "seq"} for n in names}, "logits": {0: "batch"}}
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=min(opset, 17),
                do_constant_folding=True,
            )
        else:
            from torch.export import Dim

            batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=1, max=8192)
            dyn = tuple({0: batch, 1: seq} for _ in names)
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=dyn,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
            assert program is not None  # the dynamo exporter returns its ONNXProgram
            program.save(str(path))
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def _eager_attention(model: models.SequenceClassifier) -> None:
    """Plain matmul-softmax attention, the pattern ONNX Runtime's attention fusion recognises (SDPA exports as
    one opaque op sequence it does not match). Same numbers; the parity check confirms it."""
    setter = getattr(model.encoder, "set_attn_implementation", None)
    if setter is not None:
        setter("eager")
    else:
        model.encoder.config._attn_implementation = "eager"


def _checked(record: dict[str, Any], atol: float, what: str) -> dict[str, Any]:
    if record["max_abs_diff"] > atol:
        raise ExportMismatchError(
            f"{what}: output 'logits' differs from PyTorch by {record['max_abs_diff']:.3g} "
            f"> export.atol {atol} on {record['rows']} dev rows"
        )
    log.info(
        "export: %s matches PyTorch (max |diff| %.2g on %d dev rows)", what, record["max_abs_diff"], record["rows"]
    )
    return record


def export_student(cfg: Config, data_dir: Path, student_dir: Path, out: Path) -> dict[str, Any]:
    """Export, check and describe the student in ``out``. Returns the export metrics."""
    ec = cfg.export
    prep = Prepared.load(data_dir)
    model, tokenizer, meta = models.load(student_dir)
    models.check_labels(meta, prep.info["label_names"], student_dir, "student")
    names = input_names(tokenizer)
    checks = FileChecks(cfg, prep, model, names)
    first = checks.parity_batches[0]
    example = {k: v[:2] for k, v in first["student"].items()} if len(first["labels"]) >= 2 else None
    if example is None or example["input_ids"].shape[1] < 2:
        example = {n: torch.ones((2, 8), dtype=torch.long) for n in names}
    path = out / MODEL_FILE
    log.info("export: torch -> %s (%s exporter, opset %d)", MODEL_FILE, ec.exporter, ec.opset)
    to_onnx(model, names, example, path, ec.opset, ec.exporter)
    result: dict[str, Any] = {
        **_checked(checks.measure(path), ec.atol, MODEL_FILE),
        "atol": ec.atol,
        "opset": min(ec.opset, 17) if ec.exporter == "torchscript" else ec.opset,
        "exporter": ec.exporter,
    }
    source = path
    if ec.optimize:
        log.info("export: optimizing -> %s (ONNX Runtime's transformer optimizer)", OPT_FILE)
        fused = optimize(path, out / OPT_FILE, model)
        result["optimized"] = {**_checked(checks.measure(out / OPT_FILE), ec.atol, OPT_FILE), "fused_ops": fused}
        source = out / OPT_FILE
    if ec.quantize:
        record, guard = choose_int8(cfg, source, out / INT8_FILE, checks, model.num_layers)
        result["int8_guard"] = guard
        if record is not None:
            record["speedup"] = {
                f"vs_{name}": _ratios(record, base)
                for name, base in (("fp32", result), ("optimized", result.get("optimized")))
                if base
            }
            result["int8"] = record
    written = {"fp32": result, "optimized": result.get("optimized"), "int8": result.get("int8")}
    variant = serve_variant(ec.serve, {k for k, v in written.items() if v is not None})
    result["served"] = VARIANT_FILES[variant]
    result["judged_on"] = checks.judged_on
    if ec.quantize and result.get("int8") is None:
        result["int8_guard"]["served_instead"] = result["served"]
        log.warning("%s; serving %s (fp32)", result["int8_guard"]["reason"], result["served"])
    elif ec.quantize:
        log.info("%s", result["int8_guard"]["reason"])
    if ec.triton:
        result["triton"] = triton_repository(
            cfg, out / result["served"], out / "triton", names, len(prep.info["label_names"])
        )
    tokenizer.save_pretrained(str(out))
    served_labels = served_label_names(prep.info["task"], prep.info["label_names"])
    write_json(out / "labels.json", {"labels": served_labels, "values": prep.info["label_names"]})
    files = {
        VARIANT_FILES[k]: {
            "variant": k,
            "sha256": v["sha256"],
            "agreement": v["agreement"],
            **{split: v[split] for split in ("calib", "dev") if split in v},
            "rows_per_second": v["rows_per_second"],
            "size_bytes": v["size_bytes"],
        }
        for k, v in written.items()
        if v is not None
    }
    write_json(
        out / "metadata.json",
        {
            "name": ec.triton_name,
            "model_file": result["served"],
            "sha256": files[result["served"]]["sha256"],
            "files": files,
            "judged_on": result["judged_on"],
            **({"int8_guard": result["int8_guard"]} if "int8_guard" in result else {}),
            "inputs": names,
            "outputs": ["logits"],
            "opset": result["opset"],
            "ir_version": MAX_IR_VERSION,
            "task": prep.info["task"],
            "text_fields": prep.info["text_fields"],
            "max_length": prep.info["max_length"],
            "label_names": prep.info["label_names"],
            "labels": served_labels,
            "student": meta["source"],
            "strategy": meta.get("strategy"),
            "metrics": {k: v for k, v in result.items() if k not in ("path", "sha256", "int8_guard", "judged_on")},
            "config": cfg.to_dict(),
        },
    )
    return result


def _ratios(record: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    mine, theirs = record["rows_per_second"], base["rows_per_second"]
    return {k: round(mine[k] / theirs[k], 3) for k in mine if theirs.get(k)}


def serve_variant(wanted: str, written: set[str]) -> str:
    """The variant ``metadata.json`` points ``ikd serve`` at: ``export.serve`` (the config makes sure its option is
    on; int8 can still be refused by the int8 guard)."""
    if wanted == "auto":
        return next(v for v in ("int8", "optimized", "fp32") if v in written)
    if wanted not in written:
        raise ExportMismatchError(
            f"export.serve: {wanted}, but no {wanted} model was written (no int8 candidate passed "
            "export.int8_min_agreement and export.int8_max_loss; int8_on_loss: skip)"
        )
    return wanted


def optimize(src: Path, dst: Path, model: models.SequenceClassifier) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (offline, provider-neutral: ``opt_level=0`` keeps ONNX Runtime's own
    graph passes for load time). Returns the fused operators it made."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    conf = model.encoder.config
    level = logging.getLogger("onnxruntime.transformers").level
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        opt = optimize_model(
            str(src),
            model_type="bert",
            num_heads=int(conf.num_attention_heads),
            hidden_size=int(conf.hidden_size),
            opt_level=0,
        )
    finally:
        logging.getLogger("onnxruntime.transformers").setLevel(level)
    opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def triton_repository(cfg: Config, model_file: Path, root: Path, names: list[str], num_labels: int) -> dict[str, Any]:
    """A Triton model repository under ``root``: ``<name>/1/model.onnx`` (the checked export, copied) and
    ``<name>/config.pbtxt`` (inputs, logits output, dynamic batching), what KServe's ``modelFormat: onnx`` runtime
    loads from a ``storageUri``. Returns the layout's record for metrics.json."""
    import shutil

    ec = cfg.export
    version = root / ec.triton_name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version / "model.onnx")
    inputs = "\n".join(
        f'  {{ name: "{n}" data_type: TYPE_INT64 dims: [ -1 ] }}' + ("," if i < len(names) - 1 else "")
        for i, n in enumerate(names)
    )
    text = (
        f'name: "{ec.triton_name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {ec.triton_max_batch_size}\n'
        f"input [\n{inputs}\n]\n"
        f'output [\n  {{ name: "logits" data_type: TYPE_FP32 dims: [ {num_labels} ] }}\n]\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: {ec.triton_max_delay_us} }}\n"
    )
    (root / ec.triton_name / "config.pbtxt").write_text(text)
    return {"path": f"triton/{ec.triton_name}", "max_batch_size": ec.triton_max_batch_size}


def run(cfg: Config, inputs: dict[str, Any], out_dir: Path, live: Path | None = None) -> StepResult:
    """The ``export`` step: the student to ONNX, checked against PyTorch on real dev inputs (ExportMismatchError
    past atol), and its model card README.md. ``live``: DVCLive folder (summary metrics)."""
    data_dir = require_dir(inputs.get("data"), "prepared data")
    student_dir = require_dir(inputs.get("student"), "student")
    keys = input_keys(cfg, "export", inputs)
    with Tracker(live) as tracker, atomic_dir(out_dir) as tmp:
        metrics = export_student(cfg, data_dir, student_dir / "model", tmp)
        key = finish(tmp, cfg, "export", keys, metrics, None, {"inputs": (data_dir, student_dir)}, tracker)
        model_card.write_export(tmp, student_dir)
    return StepResult("export", Path(out_dir), metrics, key)
