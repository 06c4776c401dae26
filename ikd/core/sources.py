"""Data sources and the task schema: reading local files and hub datasets into :class:`Split` rows.

A source is a local folder (TSV/CSV/JSONL/parquet train and dev files) or a Hugging Face hub id.
Local files are parsed here, row by row, so that every error names the file and the line. Hub sources go through
``datasets.load_dataset``. What becomes of the rows (labels, the quiz split, tokens, Arrow) is :mod:`ikd.core.data`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ikd.config import DataConfig
from ikd.core.reach import HINT
from ikd.errors import DataError

#: Layouts of the GLUE tasks. A preset only fills keys the config leaves null; the file type comes from the suffix
#: (the GLUE copies are .tsv; parquet exported from the hub reads the same way).
PRESETS: dict[str, dict[str, Any]] = {
    "glue-sst2": {
        "header": True,
        "text_fields": ["sentence"],
        "label_field": "label",
        "metrics": ["accuracy"],
        "task": "sst2",
        "hub_config": "sst2",
    },
    "glue-mrpc": {
        "header": True,
        "text_fields": ["#1 String", "#2 String"],
        "label_field": "Quality",
        "metrics": ["f1", "accuracy"],
        "task": "mrpc",
    },
    "glue-cola": {
        "header": False,
        "columns": ["source", "label", "mark", "sentence"],
        "text_fields": ["sentence"],
        "label_field": "label",
        "metrics": ["matthews", "accuracy"],
        "task": "cola",
        "hub_config": "cola",
    },
}
#: What the GLUE tasks' label values mean, as the task definitions fix them (the hub's integer classes; RTE and
#: QNLI's own TSV files already spell their labels out): the names ``ikd export`` gives the served labels.
GLUE_LABELS: dict[str, dict[str, str]] = {
    "sst2": {"0": "negative", "1": "positive"},
    "mrpc": {"0": "not_equivalent", "1": "equivalent"},
    "cola": {"0": "unacceptable", "1": "acceptable"},
    "qqp": {"0": "not_duplicate", "1": "duplicate"},
    "qnli": {"0": "entailment", "1": "not_entailment"},
    "rte": {"0": "entailment", "1": "not_entailment"},
    "wnli": {"0": "not_entailment", "1": "entailment"},
    "mnli": {"0": "entailment", "1": "neutral", "2": "contradiction"},
}
SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Schema:
    """The resolved task schema: what the config says, with preset and defaults filled in."""

    task: str
    text_fields: list[str]
    label_field: str
    metrics: list[str]
    format: str | None = None
    header: bool = True
    columns: list[str] | None = None
    train_file: str = "train"
    dev_file: str = "dev"
    hub_config: str | None = None
    label_names: list[str] | None = None

    @classmethod
    def from_config(cls, cfg: DataConfig) -> Schema:
        preset = PRESETS.get(cfg.preset or "", {})
        values = {k: v for k, v in cfg.model_dump().items() if v is not None}
        merged = {**preset, **values}
        missing = [k for k in ("text_fields", "label_field") if k not in merged]
        if missing:
            raise DataError(f"config data.{missing[0]} is required (or set data.preset to a GLUE layout)")
        if merged.get("header") is False and not merged.get("columns"):
            raise DataError("config data.header is false, so data.columns must name the columns")
        return cls(
            task=merged.get("task", "custom"),
            text_fields=list(merged["text_fields"]),
            label_field=merged["label_field"],
            metrics=list(merged.get("metrics", ["accuracy"])),
            format=merged.get("format"),
            header=merged.get("header", True),
            columns=merged.get("columns"),
            train_file=merged.get("train_file", "train"),
            dev_file=merged.get("dev_file", "dev"),
            hub_config=merged.get("hub_config"),
            label_names=merged.get("label_names"),
        )


def served_label_names(task: str, label_names: list[str]) -> list[str]:
    """The names a served model answers with, in class order: the GLUE meaning of each value for a GLUE task whose
    values are exactly that task's classes (SST-2's "0"/"1" are "negative"/"positive"), else the values as they are."""
    meanings = GLUE_LABELS.get(task, {})
    if sorted(label_names) != sorted(meanings):
        return list(label_names)
    return [meanings[v] for v in label_names]


@dataclass
class Split:
    """Rows of one split: texts, string labels, and where each row came from (for error messages)."""

    texts: list[tuple[str, ...]]
    labels: list[str]
    origin: list[str]  # "file:line"
    source_rows: list[int] = field(default_factory=list)  # row index in the source split

    def take(self, idx: np.ndarray | list[int]) -> Split:
        return Split(
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            [self.origin[i] for i in idx],
            [self.source_rows[i] for i in idx],
        )


# ---- reading ---------------------------------------------------------------------------------------
def find_file(folder: Path, stem: str, fallbacks: tuple[str, ...] = ()) -> Path:
    """The file named ``stem`` (exact name, or stem plus a known suffix) in ``folder``, checked to be readable."""
    if (folder / stem).is_file():
        return _readable(folder / stem)
    for s in (stem, *fallbacks):
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.stem == s and p.suffix in SUFFIXES)
        if len(found) > 1:
            raise DataError(
                f"{folder}: several '{s}' files ({', '.join(p.name for p in found)}); "
                f"set data.train_file / data.dev_file to the one to use"
            )
        if found:
            return _readable(found[0])
    folders = sorted(
        p.name
        for s in (stem, *fallbacks)
        for p in folder.iterdir()
        if p.is_dir() and (p.name == s or (p.stem == s and p.suffix in SUFFIXES))
    )
    if folders:
        raise DataError(f"{folder / folders[0]}: is a folder, not a data file")
    tried = ", ".join(f"{s}{x}" for s in (stem, *fallbacks) for x in (".tsv", ".csv", ".jsonl", ".parquet"))
    raise DataError(
        f"{folder}: no '{stem}' file (looked for {tried}); set data.{'train' if stem == 'train' else 'dev'}_file"
    )


def _readable(path: Path) -> Path:
    """``path``, after checking that it can be opened for reading (DataError naming it otherwise)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    return path


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, optional BOM). DataError naming the file and line of the first bad byte."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _records_delimited(path: Path, fmt: str, schema: Schema):
    """Yield (line number, dict) for each data row of a TSV/CSV file."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    delim = "\t" if fmt == "tsv" else ","
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL  # csv's _QuotingType
    reader = csv.reader(text.splitlines(), delimiter=delim, quoting=quoting, strict=True)
    try:
        if schema.header:
            columns = next(reader)
            start = 2
            other, real = ("\t", "tsv") if fmt == "csv" else (",", "csv")
            if len(columns) == 1 and other in columns[0]:  # the other delimiter: the whole header is one column
                fix = f"name it {path.stem}.{real} or " if path.suffix != f".{real}" else ""
                raise DataError(
                    f"{path}:1: the header is a single {fmt.upper()} column {columns[0]!r}: the file looks "
                    f"like {real.upper()}; {fix}set data.format: {real}"
                )
        else:
            columns = list(schema.columns or [])
            start = 1
        for lineno, row in enumerate(reader, start=start):
            if not row:
                raise DataError(f"{path}:{lineno}: empty line")
            if len(row) != len(columns):
                raise DataError(
                    f"{path}:{lineno}: expected {len(columns)} {fmt.upper()} fields "
                    f"({', '.join(columns)}), found {len(row)}"
                )
            yield lineno, dict(zip(columns, row, strict=True))
    except csv.Error as exc:
        if "field limit" in str(exc):  # a line with a field over the csv module's limit: refused, never cut
            raise DataError(
                f"{path}:{reader.line_num}: a field is longer than {csv.field_size_limit()} characters "
                "(the reader's limit); is a delimiter or line break missing?"
            ) from None
        raise DataError(f"{path}:{reader.line_num}: {exc}") from None


def _records(path: Path, schema: Schema):
    fmt = schema.format or SUFFIXES.get(path.suffix)
    if fmt is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; set data.format (tsv, csv, jsonl, parquet)")
    if fmt in ("tsv", "csv"):
        yield from _records_delimited(path, fmt, schema)
    elif fmt == "jsonl":
        lines = _read_text(path).splitlines()
        if not any(s.strip() for s in lines):
            raise DataError(f"{path}: the file is empty")
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, obj
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{path}: cannot read parquet ({exc})") from None
        if table.num_rows == 0:
            raise DataError(f"{path}: the file is empty")
        for i, obj in enumerate(table.to_pylist(), start=1):
            yield i, obj


def read_split(path: Path, schema: Schema, labeled: bool = True) -> Split:
    """Read one local file into a Split, checking that the schema's columns are present.

    ``labeled=False`` (transfer files): the label column is optional and ignored; labels are "".
    """
    texts, labels, origin = [], [], []
    needed = [*schema.text_fields, schema.label_field] if labeled else list(schema.text_fields)
    for lineno, rec in _records(path, schema):
        missing = [c for c in needed if c not in rec]
        if missing:
            raise DataError(
                f"{path}:{lineno}: no column '{missing[0]}' (columns: {', '.join(map(str, rec))}); "
                f"set data.text_fields / data.label_field"
            )
        row = []
        for c in schema.text_fields:
            v = _scalar(rec[c], path, lineno, c, "text")
            if v is None or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{path}:{lineno}: empty text in column '{c}'")
            row.append(str(v))
        label = _scalar(rec[schema.label_field], path, lineno, schema.label_field, "label") if labeled else ""
        if labeled and (label is None or str(label).strip() == ""):
            raise DataError(f"{path}:{lineno}: empty label in column '{schema.label_field}'")
        texts.append(tuple(row))
        labels.append(str(label).strip())
        origin.append(f"{path}:{lineno}")
    if not texts:
        raise DataError(f"{path}: no data rows")
    return Split(texts, labels, origin, list(range(len(texts))))


def _scalar(value: Any, path: Path, lineno: int, column: str, what: str) -> Any:
    """``value`` if it is a string or a number (NaN, a missing value: None); DataError for an object, a list..."""
    if isinstance(value, float) and value != value:
        return None
    if value is None or isinstance(value, (str, int, float)):
        return value
    kinds: dict[type, str] = {dict: "an object", list: "a list", bytes: "bytes"}
    kind = kinds.get(type(value), f"a {type(value).__name__}")
    raise DataError(f"{path}:{lineno}: the {what} in column '{column}' is {kind}, not a string or a number")


def _read_hub(source: str, schema: Schema, split: str) -> Split:
    import datasets

    try:
        ds = datasets.load_dataset(source, schema.hub_config, split=split)
    except Exception as exc:  # network, missing dataset or split: all reported the same way
        raise DataError(
            f"cannot load '{source}' split '{split}' from the Hugging Face hub: "
            f"{' '.join(str(exc).split())[:300]} "
            f"(for a local folder, check that the path exists); {HINT}"
        ) from None
    for c in [*schema.text_fields, schema.label_field]:
        if c not in ds.column_names:
            raise DataError(f"{source}[{split}]: no column '{c}' (columns: {', '.join(ds.column_names)})")
    names = ds.features[schema.label_field].names if hasattr(ds.features[schema.label_field], "names") else None
    texts = list(zip(*(ds[c] for c in schema.text_fields), strict=True))
    labels = [names[v] if names and isinstance(v, int) and v >= 0 else str(v) for v in ds[schema.label_field]]
    origin = [f"{source}[{split}]:row {i}" for i in range(len(texts))]
    return Split([tuple(t) for t in texts], labels, origin, list(range(len(texts))))


def source_files(folder: Path, schema: Schema, transfer_file: str | None = None) -> dict[str, Path]:
    """The files of a local data folder that ``prepare`` reads: "train", "dev" (a ``validation``/``valid`` file
    stands in for the default stem ``dev``) and, when named, "transfer"."""
    files = {
        "train": find_file(folder, schema.train_file),
        "dev": find_file(folder, schema.dev_file, ("validation", "valid") if schema.dev_file == "dev" else ()),
    }
    if transfer_file:
        files["transfer"] = find_file(folder, transfer_file)
    return files


def source_fingerprint(cfg: DataConfig, source: str) -> dict[str, str]:
    """The one fingerprint of a data source: sha256 of each file ``prepare`` reads from a local folder (file name
    -> digest), or ``{"hub": "id:config"}`` for a hub dataset."""
    schema = Schema.from_config(cfg)
    folder = Path(source)
    if not folder.is_dir():
        return {"hub": f"{source}:{schema.hub_config or ''}"}
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in source_files(folder, schema, cfg.transfer_file).values()
    }


def load_source(source: str, schema: Schema) -> tuple[Split, Split]:
    """Read train and dev from a local folder or a hub id."""
    folder = Path(source)
    if folder.exists():
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder (a data source is a folder holding train and dev files)")
        files = source_files(folder, schema)
        return read_split(files["train"], schema), read_split(files["dev"], schema)
    if "/" not in source or source.startswith((".", "/")):
        raise DataError(f"{source}: no such data folder (and not a hub id of the form owner/name); {HINT}")
    dev_split = schema.dev_file if schema.dev_file != "dev" else "validation"
    return _read_hub(source, schema, schema.train_file), _read_hub(source, schema, dev_split)


def schema_dict(schema: Schema) -> dict[str, Any]:
    return asdict(schema)
