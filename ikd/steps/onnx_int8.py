"""int8 for the exported student: dynamic int8 weights by ONNX Runtime's quantizer, one graph per scheme of
``export.int8_schemes``, each measured like every exported file; the fastest within ``export.int8_max_loss`` dev
points of fp32 is kept (:func:`choose_int8`, called by :mod:`ikd.steps.export_onnx`).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

from ikd.config import Config
from ikd.errors import ExportMismatchError


class Checks(Protocol):
    """How each candidate is measured (``export_onnx._Checks``): its record, and the first dev metric in it."""

    def measure(self, path: Path) -> dict[str, Any]: ...

    def primary(self, record: dict[str, Any]) -> float: ...


def quantize(src: Path, dst: Path, scheme: str = "per_channel", exclude: list[str] | tuple = ()) -> list[str]:
    """Dynamic int8 weights of ``src`` into ``dst`` (``scheme``: per_channel or per_tensor), keeping nodes whose
    name matches a pattern of ``exclude`` in fp32. Returns the excluded node names."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The dynamo exporter leaves intermediate shape annotations that the quantizer's strict shape
    # inference rejects after constant deduplication; they are hints only, so drop them first.
    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    patterns = [re.compile(p) for p in exclude]
    skipped = [n.name for n in proto.graph.node if any(p.search(n.name) for p in patterns)]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger every call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clean = Path(tmp) / "clean.onnx"
            onnx.save(proto, str(clean))
            # DefaultTensorType: outputs of fused contrib ops (Attention, SkipLayerNorm) have no inferred type
            quantize_dynamic(
                str(clean),
                str(dst),
                weight_type=QuantType.QInt8,
                per_channel=scheme == "per_channel",
                nodes_to_exclude=skipped,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)
    return skipped


def choose_int8(cfg: Config, src: Path, dst: Path, checks: Checks, fp32: float) -> dict[str, Any] | None:
    """Quantize ``src`` with each scheme of ``export.int8_schemes``, measure each (dev metric against ``fp32``,
    speed), keep the fastest within ``export.int8_max_loss`` points in ``dst``. None (skip) or
    ExportMismatchError (error) when none is."""
    ec = cfg.export
    candidates = []
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        for scheme in ec.int8_schemes:
            path = Path(tmp) / f"{scheme}.onnx"
            excluded = quantize(src, path, scheme, ec.int8_exclude)
            record = {**checks.measure(path), "scheme": scheme, "source": src.name, "excluded_nodes": len(excluded)}
            record["loss_points"] = round((fp32 - checks.primary(record)) * 100, 4)
            candidates.append((record, path))
        ok = [(r, p) for r, p in candidates if r["loss_points"] <= ec.int8_max_loss]
        summary = {
            r["scheme"]: {"loss_points": r["loss_points"], "dev": r["dev"], "rows_per_second": r["rows_per_second"]}
            for r, _ in candidates
        }
        if not ok:
            lost = ", ".join(f"{r['scheme']} loses {r['loss_points']:.2f}" for r, _ in candidates)
            if ec.int8_on_loss == "skip":
                warnings.warn(
                    f"no int8 model written: {lost} points > export.int8_max_loss {ec.int8_max_loss}", stacklevel=2
                )
                return None
            raise ExportMismatchError(
                f"int8 refused: {lost} dev points against fp32, more than export.int8_max_loss "
                f"{ec.int8_max_loss} (try export.int8_exclude, or int8_on_loss=skip)"
            )
        record, path = max(ok, key=lambda rp: rp[0]["rows_per_second"].get("batch_32_sorted", 0.0))
        path.replace(dst)
    record["path"] = dst.name
    record["candidates"] = summary
    return record
