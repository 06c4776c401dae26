"""int8 for the exported student, and the guard that decides whether it is served.

Candidates are dynamic int8 weights by ONNX Runtime's quantizer: one graph per scheme of ``export.int8_schemes``
(nodes matching ``export.int8_exclude`` kept in fp32), and, when none of those passes and
``export.int8_retry_fp32_tail`` is on, each scheme again with the classifier head and the last transformer layer
kept in fp32 (:func:`tail_nodes`). Each candidate is measured like every exported file and judged on the rows of
``Checks.judged_on``: the prepared ``calib`` split (labeled rows nothing trained on), or dev when the data has
none. It passes when its argmax equals the PyTorch student's on at least ``export.int8_min_agreement`` of those
rows AND its first metric there is at most ``export.int8_max_loss`` points below the student's. The fastest
passing one (rows/s at batch 32) is kept (:func:`choose_int8`, called by :mod:`ikd.steps.export_onnx`); when none
passes, ``export.int8_on_loss`` says ``skip`` (no int8 file; an fp32 graph is served) or ``error``. Dev figures
are measured and reported for every candidate but never decide.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ikd.config import Config
from ikd.errors import ExportMismatchError

#: Normalization operators as the exporters and ONNX Runtime's transformer optimizer write them.
NORMS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "EmbedLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
    }
)
#: Operators with weights that the dynamic quantizer turns into int8 ones (its IntegerOpsRegistry, less Transpose,
#: which only follows a quantized input), and Gemm (a classifier head; the dynamic quantizer leaves it in fp32):
#: what the fp32 tail lists, when a weight (an initializer) is among the node's inputs.
WEIGHTED = frozenset({"MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "LSTM"})
log = logging.getLogger("ikd")
TAIL = "+fp32_tail"  # the suffix of a candidate that keeps the head and the last layer in fp32
SPEED_KEY = "batch_32_sorted"
SPLIT_WORDS = {"calib": "calibration", "dev": "dev"}


class Checks(Protocol):
    """How each candidate is measured (``onnx_checks.FileChecks``).

    ``measure`` returns a file's record with, per measured split, its task metrics (``record[split]``) and its
    argmax agreement with the PyTorch student (``record["agreement"][split]``: ``argmax`` fraction, ``rows``);
    ``reference[split]`` holds the student's own metrics there; ``judged_on`` names the split that decides."""

    judged_on: str
    metric: str
    reference: dict[str, dict[str, float]]

    def measure(self, path: Path) -> dict[str, Any]: ...


def _named(src: Path):
    """``src`` as an ONNX proto ready for the quantizer: intermediate shape annotations dropped (the dynamo
    exporter leaves some that its strict shape inference rejects after constant deduplication; hints only) and
    every node named (a node is excluded by name)."""
    import onnx

    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"ikd_{node.op_type}_{i}"
    return proto


def quantize(
    src: Path,
    dst: Path,
    scheme: str = "per_channel",
    exclude: list[str] | tuple = (),
    keep: list[str] | tuple = (),
    reduce_range: bool = False,
) -> list[str]:
    """Dynamic int8 weights of ``src`` into ``dst`` (``scheme``: per_channel or per_tensor; ``reduce_range``: 7-bit
    weights), keeping in fp32 the nodes whose name matches a pattern of ``exclude`` or is in ``keep``. Returns the
    excluded node names."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = _named(src)
    patterns = [re.compile(p) for p in exclude]
    wanted = set(keep)
    excluded = [n for n in proto.graph.node if n.name in wanted or any(p.search(n.name) for p in patterns)]
    skipped = [n.name for n in excluded]
    # In dynamic mode the quantizer first rewrites each Gemm as a MatMul named "<gemm>_MatMul" (+ an Add), then
    # matches nodes_to_exclude: a Gemm (a classifier head) is kept in fp32 under that name.
    renamed = [f"{n.name}_MatMul" for n in excluded if n.op_type == "Gemm"]
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
                reduce_range=reduce_range,
                nodes_to_exclude=skipped + renamed,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)
    return skipped


def tail_nodes(src: Path, layers: int) -> tuple[list[str], str]:
    """The nodes with weights (:data:`WEIGHTED`) of the classifier head and the last transformer layer of the graph
    in ``src``, and what they are, in words.

    A post-LN encoder (BERT, MiniLM, MPNet: what ikd exports) has one normalization after the embeddings and two
    per layer, so with ``2 * layers + 1`` of them the last layer starts from the output of the third from the end;
    the tail is every node computed from that output (the head, pooling included, comes after the last one). With
    another count the layer bounds are unknown and the tail is the head alone (the words say so)."""
    graph = _named(src).graph
    norms = [n for n in graph.node if n.op_type in NORMS]
    if len(norms) == 2 * layers + 1:
        cut, what = norms[-3], f"the classifier head and the last transformer layer (layer {layers - 1})"
    elif norms:
        cut = norms[-1]
        what = (
            f"the classifier head only ({len(norms)} normalization nodes for {layers} layers: "
            "the last layer's bounds are unknown)"
        )
    else:
        return [], "nothing (no normalization node to find the head by)"
    weights = {i.name for i in graph.initializer}
    tainted, names = set(cut.output), []
    for node in graph.node:  # ONNX nodes are in topological order
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            if node.op_type in WEIGHTED and weights.intersection(node.input):
                names.append(node.name)
    return names, what


def _verdict(c: dict[str, Any], ec) -> list[str]:
    """Why candidate ``c`` fails the guard (empty: it passes)."""
    why = []
    if c["agreement"] < ec.int8_min_agreement:
        why.append(f"argmax agreement {c['agreement']:.4f} < export.int8_min_agreement {ec.int8_min_agreement}")
    if c["loss_points"] > ec.int8_max_loss:
        why.append(f"loses {c['loss_points']:.2f} points > export.int8_max_loss {ec.int8_max_loss}")
    return why


def choose_int8(
    cfg: Config, src: Path, dst: Path, checks: Checks, layers: int
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Quantize ``src`` into each candidate (``layers``: the student's transformer layers, for the fp32 tail),
    measure each and keep the fastest passing one in ``dst``. Returns (its record or None, the guard's record:
    what was judged on which rows, every candidate with its figures and verdict, what was kept and why).
    ExportMismatchError when none passes and ``export.int8_on_loss`` is ``error``."""
    ec = cfg.export
    split, metric = checks.judged_on, checks.metric
    base = checks.reference[split][metric]
    tried: list[tuple[dict[str, Any], dict[str, Any], Path]] = []
    guard: dict[str, Any] = {
        "judged_on": split,
        "rows": 0,
        "reference": "torch student",
        "reference_metrics": checks.reference[split],
        "min_agreement": ec.int8_min_agreement,
        "max_loss": ec.int8_max_loss,
        "reduce_range": ec.int8_reduce_range,
        "candidates": [],
    }
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:

        def attempt(name: str, scheme: str, keep: list[str]) -> None:
            path = Path(tmp) / f"{name}.onnx"
            log.info("export: int8 candidate %s: quantizing, then measuring on %s rows", name, split)
            excluded = quantize(src, path, scheme, ec.int8_exclude, keep, ec.int8_reduce_range)
            record = checks.measure(path)
            agreement = record["agreement"][split]
            c: dict[str, Any] = {
                "name": name,
                "scheme": scheme,
                "excluded_nodes": excluded,
                "agreement": agreement["argmax"],
                "rows": agreement["rows"],
                **({"dev_agreement": record["agreement"]["dev"]["argmax"]} if split != "dev" else {}),
                "loss_points": round((base - record[split][metric]) * 100, 4),
                **{s: record[s] for s in ("calib", "dev") if s in record},
                "rows_per_second": record["rows_per_second"],
                "size_bytes": record["size_bytes"],
            }
            guard["rows"] = c["rows"]
            tried.append((c, record, path))

        for scheme in ec.int8_schemes:
            attempt(scheme, scheme, [])
        if ec.int8_retry_fp32_tail and all(_verdict(c, ec) for c, _, _ in tried):  # every scheme refused
            keep, what = tail_nodes(src, layers)
            guard["fp32_tail"] = {"nodes": keep, "what": what}
            if keep:
                for scheme in ec.int8_schemes:
                    attempt(scheme + TAIL, scheme, keep)
        passing = [t for t in tried if not _verdict(t[0], ec)]
        best = max(passing, key=lambda t: t[0]["rows_per_second"].get(SPEED_KEY, 0.0)) if passing else None
        for c, _, _ in tried:
            why = _verdict(c, ec)
            if why:
                c["verdict"] = "refused: " + "; ".join(why)
            else:  # a passing candidate: best is one of them
                assert best is not None
                c["verdict"] = "kept: the fastest passing" if c is best[0] else f"passed, slower than {best[0]['name']}"
            guard["candidates"].append(c)
        rows = f"{guard['rows']} {SPLIT_WORDS.get(split, split)} rows"
        if best is None:
            figures = ", ".join(f"{c['name']} {c['agreement']:.3f} (loss {c['loss_points']:+.2f})" for c, _, _ in tried)
            guard["kept"] = None
            guard["reason"] = (
                f"int8: no candidate kept argmax agreement >= {ec.int8_min_agreement} and {metric} loss <= "
                f"{ec.int8_max_loss} points on {rows} ({figures})"
            )
            if ec.int8_on_loss == "error":
                raise ExportMismatchError(
                    f"{guard['reason']}; lower export.int8_min_agreement or raise export.int8_max_loss, keep nodes "
                    "in fp32 with export.int8_exclude, or set export.int8_on_loss: skip to serve the fp32 graph"
                )
            return None, guard
        c, record, path = best
        path.replace(dst)
    guard["kept"] = c["name"]
    guard["reason"] = (
        f"int8: {c['name']} kept: argmax agreement {c['agreement']:.4f} >= {ec.int8_min_agreement} and {metric} "
        f"loss {c['loss_points']:+.2f} <= {ec.int8_max_loss} points on {rows}; the fastest of "
        f"{len(passing)} passing"
    )
    record.update(
        path=dst.name,
        candidate=c["name"],
        scheme=c["scheme"],
        source=src.name,
        excluded_nodes=c["excluded_nodes"],
        judged_on=split,
        loss_points=c["loss_points"],
    )
    return record, guard
