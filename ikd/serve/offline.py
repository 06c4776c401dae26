"""``ikd predict``: a file of texts through an exported model, in batches of similar length, to JSONL or CSV.

The same :class:`~ikd.serve.predictor.Predictor` as the server (ONNX Runtime, the export's tokenizer, no torch),
so a row gets the answer the server would give it. Input: TSV, CSV (a header row, or ``columns``) or JSONL (one
object per line); the text columns are the exported model's (``text_fields`` in its metadata.json) unless given.
Output is written whole or not at all: a bad row anywhere leaves an earlier output file as it was.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ikd.errors import IkdError, InvalidInput
from ikd.progress import bar
from ikd.serve.predictor import Prediction, Predictor

FORMATS = ("jsonl", "csv")
_DELIMITERS = {".tsv": "\t", ".csv": ","}


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in _DELIMITERS:
        return suffix[1:]
    raise InvalidInput(f"{path}: unknown file type '{suffix}' (use .tsv, .csv or .jsonl)")


def read_rows(path: Path, text_fields: list[str], columns: list[str] | None = None) -> list[tuple[str, ...]]:
    """The rows of ``path`` as tuples of the ``text_fields`` columns. Errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    kind = _format_of(path)
    rows: list[tuple[str, ...]] = []
    with path.open(encoding="utf-8", newline="") as f:
        try:
            if kind == "jsonl":
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise InvalidInput(f"{path}:{line_no}: not a JSON object ({exc})") from None
                    if not isinstance(obj, dict):
                        raise InvalidInput(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
                    rows.append(_texts(obj, text_fields, f"{path}:{line_no}"))
            else:
                reader = csv.reader(f, delimiter=_DELIMITERS[f".{kind}"])
                header = columns or next(reader, None)
                if header is None:
                    raise InvalidInput(f"{path}: empty file (no header row; or give --columns)")
                missing = [c for c in text_fields if c not in header]
                if missing:
                    raise InvalidInput(
                        f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)}); "
                        "name the text columns with --text-fields, or the columns of a file without a header "
                        "with --columns"
                    )
                first = 1 if columns is None else 0
                for line_no, cells in enumerate(reader, first + 1):
                    if not cells:
                        continue
                    if len(cells) != len(header):
                        raise InvalidInput(f"{path}:{line_no}: {len(cells)} fields, the header has {len(header)}")
                    rows.append(_texts(dict(zip(header, cells, strict=True)), text_fields, f"{path}:{line_no}"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InvalidInput(f"{path}: no rows")
    return rows


def _texts(obj: dict[str, Any], fields: list[str], where: str) -> tuple[str, ...]:
    out = []
    for name in fields:
        if name not in obj:
            raise InvalidInput(f"{where}: no field {name!r}")
        value = obj[name]
        if not isinstance(value, str):
            raise InvalidInput(f"{where}: field {name!r} is {type(value).__name__}, not text")
        out.append(value)
    return tuple(out)


def predict_rows(
    predictor: Predictor,
    rows: list[tuple[str, ...]],
    batch_size: int = 64,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[Prediction]:
    """Predictions in the order of ``rows``; batches of similar token length (less padding), longest first."""
    if batch_size < 1:
        raise InvalidInput("batch size must be at least 1")
    ids, types = predictor.encode(rows)
    order = np.argsort([-len(r) for r in ids], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[Prediction | None] = [None] * len(rows)
    for batch in progress(batches) if progress else batches:
        feeds = predictor.feeds([ids[i] for i in batch], [types[i] for i in batch])
        for i, pred in zip(batch, predictor.answer(predictor.logits(feeds)), strict=True):
            out[int(i)] = pred
    return [p for p in out if p is not None]


def write_predictions(path: Path | None, preds: list[Prediction], labels: list[str], fmt: str) -> None:
    """JSONL (``row``, ``label``, ``probabilities`` by label name) or CSV (``row``, ``label``, ``p_<label>``...), to
    ``path`` (replaced only once complete) or stdout."""
    if fmt not in FORMATS:
        raise InvalidInput(f"--format {fmt}: choose one of {', '.join(FORMATS)}")

    def emit(f) -> None:
        if fmt == "jsonl":
            for i, p in enumerate(preds):
                probs = {name: round(float(v), 6) for name, v in zip(labels, p.probabilities, strict=True)}
                f.write(json.dumps({"row": i, "label": p.label, "probabilities": probs}) + "\n")
        else:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["row", "label", *(f"p_{name}" for name in labels)])
            for i, p in enumerate(preds):
                w.writerow([i, p.label, *(f"{v:.6f}" for v in p.probabilities)])

    if path is None:
        emit(sys.stdout)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            emit(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_format(out: Path | None, fmt: str | None) -> str:
    """``fmt`` if given, else from the output file's suffix (.csv: csv), else JSONL."""
    if fmt:
        return fmt
    return "csv" if out is not None and Path(out).suffix.lower() == ".csv" else "jsonl"


def add_parser(sub) -> None:
    """``ikd predict``'s arguments (``sub``: the ``ikd`` subparsers)."""
    p = sub.add_parser(
        "predict",
        help="predict a file of texts (TSV, CSV, JSONL) with an exported model: labels and probabilities as "
        "JSONL or CSV (ONNX Runtime; no torch; the server's answers)",
    )
    p.add_argument("--model-dir", required=True, help="the output folder of `ikd export`")
    p.add_argument("--input", required=True, help="a .tsv, .csv (header row) or .jsonl file of texts")
    p.add_argument("--out", help="output file (.jsonl or .csv; default: stdout); replaced only when complete")
    p.add_argument(
        "--format", choices=["jsonl", "csv"], help="output format (default: from --out's suffix, else jsonl)"
    )
    p.add_argument(
        "--text-fields",
        help="the text column(s), comma-separated (default: the model's, from its metadata.json)",
    )
    p.add_argument(
        "--columns",
        help="column names of a TSV/CSV file without a header row, comma-separated (default: the header row)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="rows per ONNX Runtime batch (default 64)")
    p.add_argument("--model-file", help="model file in --model-dir (default: the one metadata.json names)")
    p.add_argument("--providers", default="CPUExecutionProvider", help="ONNX Runtime providers, comma-separated")
    p.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's choice)")


def command(args: argparse.Namespace) -> None:
    """``ikd predict``: load, read, predict, write."""
    predictor = Predictor.load(
        args.model_dir,
        providers=tuple(args.providers.split(",")),
        threads=args.threads,
        model_file=args.model_file,
    )
    fields = args.text_fields.split(",") if args.text_fields else list(predictor.metadata.get("text_fields") or [])
    if not fields:
        raise IkdError(f"{args.model_dir}/metadata.json names no text_fields: give --text-fields")
    rows = read_rows(Path(args.input), fields, args.columns.split(",") if args.columns else None)
    progress: Callable[[Iterable], Iterable] | None = None
    if importlib.util.find_spec("tqdm") is not None:  # the serving install has none: no bar
        progress = partial(bar, desc="predict", unit="batch", disable=None)
    preds = predict_rows(predictor, rows, args.batch_size, progress)
    out = Path(args.out) if args.out else None
    write_predictions(out, preds, predictor.labels, output_format(out, args.format))
    if out is not None:
        logging.getLogger("ikd").info("predict: %d rows -> %s", len(preds), out)
