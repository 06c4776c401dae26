"""The bad-input corpus: malformed data files, configs and model folders, each through the real `ikd` command line.

Every case must end the same way: exit code 2, exactly one ``ikd: error:`` line on stderr that names the file and
line, or the config key, no traceback, no output folder and no temporary sibling left behind; where a good output
was already in place, it is still there byte for byte. Most cases run in-process (``ikd.cli.main``); a few run
``ikd`` as a real subprocess, among them the unreadable-file case, which drops root's right to read any file.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NEG, POS, ROOT

TINY = ROOT / "configs" / "tiny.yaml"
CUSTOM = [
    "--set",
    "data.preset=null",
    "--set",
    "data.text_fields=[sentence]",
    "--set",
    "data.label_field=label",
    "--set",
    "data.quiz_rows=4",
]
P = ["--params", TINY, *CUSTOM]
HEADER = "sentence\tlabel\n"
IKD = Path(sys.executable).parent / "ikd"


def blamed(override: str) -> str:
    """How a config error names a bad value that came from ``--set override``: the override, not the line of
    configs/tiny.yaml that it replaced."""
    return f"error: --set {override}: "


def tsv(rows: list[tuple[str, str]]) -> str:
    return HEADER + "".join(f"{t}\t{y}\n" for t, y in rows)


GOOD_TRAIN = tsv(
    [(f"{t} {i}", "1") for i, t in enumerate(POS * 4)] + [(f"{t} {i}", "0") for i, t in enumerate(NEG * 4)]
)  # 48 rows: lines 2-49
GOOD_DEV = tsv([(t, "1") for t in POS] + [(t, "0") for t in NEG])  # 12 rows: lines 2-13


@dataclass
class World:
    """Outputs built once for the module: raw data, prepared folders, an adapted teacher, a student."""

    data: Path  # raw train.tsv / dev.tsv, labels 0/1
    prep: Path  # prepared from `data`
    prep3: Path  # prepared, three labels a/b/c
    prep_names: Path  # prepared, two labels neg/pos
    teacher: Path  # adapted on `prep`
    student: Path  # distilled (finetune) on `prep`


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from ikd.cli import main

    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IKD_CACHE", str(tmp_path_factory.getbasetemp() / "ikd-cache"))
        w = World(*(root / n for n in ("data", "prep", "prep3", "prep_names", "teacher", "student")))
        raw3, raw_names = root / "raw3", root / "raw_names"
        for folder, train, dev in (
            (w.data, GOOD_TRAIN, GOOD_DEV),
            (
                raw3,
                tsv([(f"{t} {i}", "abc"[i % 3]) for i, t in enumerate((POS + NEG) * 3)]),
                tsv([("good", "a"), ("bad", "b"), ("meh", "c")]),
            ),
            (
                raw_names,
                GOOD_TRAIN.replace("\t1\n", "\tpos\n").replace("\t0\n", "\tneg\n"),
                GOOD_DEV.replace("\t1\n", "\tpos\n").replace("\t0\n", "\tneg\n"),
            ),
        ):
            folder.mkdir()
            (folder / "train.tsv").write_text(train)
            (folder / "dev.tsv").write_text(dev)
        for argv in (
            ["prepare", *P, "--data", w.data, "--out", w.prep],
            ["prepare", *P, "--data", raw3, "--out", w.prep3],
            ["prepare", *P, "--data", raw_names, "--out", w.prep_names],
            ["adapt", *P, "--data", w.prep, "--out", w.teacher],
            ["distill", *P, "--set", "distill.strategy=finetune", "--data", w.prep, "--out", w.student],
        ):
            assert main([str(a) for a in argv]) == 0, argv
    return w


class Scratch:
    """One case's scratch space: a copy of the good data to break, config files, the --out folder."""

    def __init__(self, world: World, tmp: Path):
        self.w, self.tmp = world, tmp
        self.outs = tmp / "outs"  # --out's parent holds nothing else, so any leftover shows
        self.outs.mkdir()
        self.out = self.outs / "out"

    def data(
        self,
        train: str | bytes | None = None,
        dev: str | bytes | None = None,
        drop: tuple[str, ...] = (),
        **files: str | bytes,
    ) -> Path:
        """A copy of the good raw data with ``train.tsv`` / ``dev.tsv`` replaced, ``drop`` removed and ``files``
        (name with '_' for '.', e.g. ``train_jsonl``) added."""
        folder = self.tmp / "data"
        shutil.copytree(self.w.data, folder)
        for name, content in {
            "train.tsv": train,
            "dev.tsv": dev,
            **{k.replace("_", "."): v for k, v in files.items()},
        }.items():
            if content is not None:
                _write(folder / name, content)
        for name in drop:
            (folder / name).unlink()
        return folder

    def file(self, name: str, content: str | bytes) -> Path:
        return _write(self.tmp / name, content)

    def copy(self, folder: Path, name: str) -> Path:
        """A copy of a good output folder, to damage."""
        shutil.copytree(folder, self.tmp / name)
        return self.tmp / name


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Scratch], list]  # the command line; its --out is the scratch's `out`
    expect: tuple[str, ...]  # substrings of the one error line: file:line, key, field...
    keep: str | None = None  # a World output copied to --out first: it must come through byte for byte
    subprocess: bool = False  # run `ikd` as a real process
    unreadable: str | None = None  # a file of the data folder the process may not read (implies subprocess)


def prepare(**data) -> Callable[[Scratch], list]:
    return lambda s: ["prepare", *P, "--data", s.data(**data), "--out", s.out]


def prepare_set(*pairs: str) -> Callable[[Scratch], list]:
    sets = [a for kv in pairs for a in ("--set", kv)]
    return lambda s: ["prepare", *P, *sets, "--data", s.w.data, "--out", s.out]


def adapt_set(*pairs: str) -> Callable[[Scratch], list]:
    sets = [a for kv in pairs for a in ("--set", kv)]
    return lambda s: ["adapt", *P, *sets, "--data", s.w.prep, "--out", s.out]


def distill_set(*pairs: str) -> Callable[[Scratch], list]:
    sets = [a for kv in pairs for a in ("--set", kv)]
    return lambda s: ["distill", *P, *sets, "--data", s.w.prep, "--teacher", s.w.teacher, "--out", s.out]


def params(text: str | bytes, command: str = "adapt") -> Callable[[Scratch], list]:
    """`ikd <command> --params FILE` with FILE holding ``text``."""

    def argv(s: Scratch) -> list:
        f = s.file("params.yaml", text)
        inputs = ["--data", s.w.prep] if command != "prepare" else ["--data", s.w.data]
        return [command, "--params", f, *inputs, "--out", s.out]

    return argv


def damaged_student(damage: Callable[[Path, World], object], command: str = "export") -> Callable[[Scratch], list]:
    """`ikd export|evaluate` with a copy of the good student, after ``damage(copy, world)``."""

    def argv(s: Scratch) -> list:
        student = s.copy(s.w.student, "student")
        damage(student, s.w)
        return [command, *P, "--data", s.w.prep, "--student", student, "--out", s.out]

    return argv


def _teacher_weights_in(student: Path, w: World) -> None:
    shutil.copy(w.teacher / "model" / "model.safetensors", student / "model" / "model.safetensors")


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _parquet_cut_short(s: Scratch) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = s.data(drop=("train.tsv",))
    rows = [{"sentence": f"{t} {i}", "label": str(i % 2)} for i, t in enumerate(POS + NEG)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    _cut(folder / "train.parquet")
    return ["prepare", *P, "--data", folder, "--out", s.out]


def _jsonl(*lines: str | bytes) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)


GOOD_JSONL = '{"sentence": "a fine film", "label": "1"}'
CSV = "sentence,label\n" + "".join(f"{t} {i},{i % 2}\n" for i, t in enumerate(POS + NEG))
HUGE = "word " * 30_000  # 150,000 characters in one TSV field: over the reader's 131,072

CASES = [
    # ---- data files: columns, header, rows ----------------------------------------------------------------
    Case(
        "missing-label-column",
        prepare(train="sentence\tlbl\ngood\t1\nbad\t0\n"),
        ("train.tsv:2", "no column 'label'", "data.label_field"),
        keep="prep",
    ),
    Case("wrong-header-dev", prepare(dev="text\tlabel\ngood\t1\n"), ("dev.tsv:2", "no column 'sentence'")),
    Case("headerless-file", prepare(train=GOOD_TRAIN.removeprefix(HEADER)), ("train.tsv:2", "no column 'sentence'")),
    Case(
        "extra-field-in-a-row",
        prepare(train=GOOD_TRAIN + "one\t1\tsurplus\n"),
        ("train.tsv:50", "expected 2 TSV fields", "found 3"),
    ),
    Case("missing-field-in-a-row", prepare(dev=GOOD_DEV + "no label here\n"), ("dev.tsv:14", "found 1")),
    Case(
        "dev-label-unseen-in-train",
        prepare(dev=GOOD_DEV + "so so\tmaybe\n"),
        ("dev.tsv:14", "label 'maybe' is not a train label"),
    ),
    Case(
        "label-names-config-vs-data",
        prepare_set("data.label_names=[neg, pos]"),
        ("train.tsv:2", "label '1' is not a train label (neg, pos)"),
    ),
    Case("single-label-in-train", prepare(train=tsv([(t, "1") for t in POS])), ("train.tsv", "a single label value")),
    Case("blank-line-in-the-middle", prepare(train=HEADER + "good\t1\n\nbad\t0\n"), ("train.tsv:3", "empty line")),
    Case("whitespace-only-line", prepare(train=HEADER + "good\t1\n   \nbad\t0\n"), ("train.tsv:3", "found 1")),
    Case("empty-text", prepare(train=HEADER + "good\t1\n \t0\n"), ("train.tsv:3", "empty text in column 'sentence'")),
    Case("empty-label", prepare(dev=HEADER + "good\t1\nbad\t\n"), ("dev.tsv:3", "empty label in column 'label'")),
    Case("non-utf8-tsv", prepare(train=GOOD_TRAIN.encode() + b"caf\xe9 cr\xe8me\t1\n"), ("train.tsv:50", "not UTF-8")),
    Case("csv-given-as-tsv", prepare(train=CSV), ("train.tsv:1", "looks like CSV", "data.format")),
    Case("tsv-given-as-csv", prepare(drop=("train.tsv",), train_csv=GOOD_TRAIN), ("train.csv:1", "looks like TSV")),
    Case(
        "huge-line",
        prepare(train=HEADER + "good\t1\n" + HUGE + "\t0\n"),
        ("train.tsv:3", "longer than 131072 characters"),
    ),
    # ---- data files: missing, empty, wrong kind ----------------------------------------------------------------
    Case("empty-train-file", prepare(train=""), ("train.tsv", "the file is empty")),
    Case("header-only", prepare(train=HEADER), ("train.tsv", "no data rows")),
    Case("missing-dev-file", prepare(drop=("dev.tsv",)), ("no 'dev' file", "data.dev_file")),
    Case("missing-train-file", prepare(drop=("train.tsv",)), ("no 'train' file", "data.train_file"), keep="prep"),
    Case("two-train-files", prepare(train_csv=CSV), ("several 'train' files", "train.csv, train.tsv")),
    Case(
        "unknown-file-type",
        lambda s: [
            "prepare",
            *P,
            "--set",
            "data.train_file=train.txt",
            "--data",
            s.data(train_txt=GOOD_TRAIN),
            "--out",
            s.out,
        ],
        ("train.txt", "unknown file type", "data.format"),
    ),
    Case(
        "missing-data-folder",
        lambda s: ["prepare", *P, "--data", s.tmp / "nowhere", "--out", s.out],
        ("nowhere", "no such data folder"),
    ),
    Case(
        "data-folder-is-a-file",
        lambda s: ["prepare", *P, "--data", s.file("data.tsv", GOOD_TRAIN), "--out", s.out],
        ("data.tsv", "not a folder"),
    ),
    Case(
        "directory-where-train-file-expected",
        lambda s: ["prepare", *P, "--data", _train_is_a_folder(s), "--out", s.out],
        ("train.tsv", "is a folder"),
    ),
    Case(
        "unreadable-train-file",
        prepare(),
        ("train.tsv", "cannot read", "Permission denied"),
        unreadable="train.tsv",
        subprocess=True,
    ),
    # ---- JSONL / parquet ---------------------------------------------------------------------------------------
    Case(
        "jsonl-invalid-line",
        prepare(drop=("train.tsv",), train_jsonl=_jsonl(GOOD_JSONL, GOOD_JSONL, '{"sentence": "x", "label": ')),
        ("train.jsonl:3", "not valid JSON"),
    ),
    Case(
        "jsonl-non-utf8",
        prepare(drop=("train.tsv",), train_jsonl=_jsonl(GOOD_JSONL, b'{"sentence": "\xff"}')),
        ("train.jsonl:2", "not UTF-8"),
    ),
    Case(
        "jsonl-line-not-an-object",
        prepare(drop=("train.tsv",), train_jsonl=_jsonl(GOOD_JSONL, "[1, 2]")),
        ("train.jsonl:2", "expected a JSON object"),
    ),
    Case(
        "jsonl-label-is-a-list",
        prepare(drop=("train.tsv",), train_jsonl=_jsonl(GOOD_JSONL, '{"sentence": "dull", "label": [0]}')),
        ("train.jsonl:2", "label in column 'label' is a list"),
    ),
    Case(
        "jsonl-text-is-an-object",
        prepare(drop=("train.tsv",), train_jsonl=_jsonl(GOOD_JSONL, '{"sentence": {"en": "dull"}, "label": "0"}')),
        ("train.jsonl:2", "text in column 'sentence' is an object"),
    ),
    Case("parquet-cut-short", _parquet_cut_short, ("train.parquet", "cannot read parquet")),
    # ---- data settings -----------------------------------------------------------------------------------------
    Case(
        "quiz-rows-larger-than-train",
        prepare_set("data.quiz_rows=1000"),
        ("train.tsv", "data.quiz_rows (1000)", "48 train rows"),
    ),
    Case(
        "max-length-below-range",
        prepare_set("data.max_length=1"),
        (blamed("data.max_length=1"), "data.max_length", "greater than 1"),
    ),
    Case("max-length-above-range", prepare_set("data.max_length=5000"), ("data.max_length", "4096")),
    Case(
        "max-length-over-model-positions",
        prepare_set("data.max_length=1000"),
        ("data.max_length", "tiny-teacher", "64 positions"),
        keep="prep",
    ),
    # ---- hyperparameters: negative, zero, NaN, inf, wrong types ------------------------------------------------
    Case("lr-negative", distill_set("distill.lr=-1"), ("distill.lr", "greater than 0")),
    Case("lr-zero", adapt_set("adapt.lr=0"), ("adapt.lr", "greater than 0")),
    Case("lr-nan", distill_set("distill.lr=.nan"), ("distill.lr", "finite number")),
    Case("batch-size-zero", adapt_set("adapt.batch_size=0"), ("adapt.batch_size", "greater than or equal to 1")),
    Case("batch-size-fractional", distill_set("distill.batch_size=1.5"), ("distill.batch_size", "valid integer")),
    Case("epochs-negative", distill_set("distill.epochs=-2"), (blamed("distill.epochs=-2"), "distill.epochs")),
    Case("epochs-not-a-number", distill_set("distill.epochs=two"), ("distill.epochs", "valid integer")),
    Case("weight-decay-negative", adapt_set("adapt.weight_decay=-0.1"), ("adapt.weight_decay",)),
    Case("weight-decay-inf", distill_set("distill.weight_decay=.inf"), ("distill.weight_decay", "finite number")),
    Case("temperature-zero", distill_set("distill.temperature=0"), ("distill.temperature", "greater than 0")),
    Case("temperature-inf", distill_set("distill.temperature=.inf"), ("distill.temperature", "finite number")),
    Case("alpha-above-one", distill_set("distill.alpha=1.5"), ("distill.alpha", "less than or equal to 1")),
    Case("grad-clip-nan", adapt_set("adapt.grad_clip=.nan"), ("adapt.grad_clip", "finite number")),
    Case(
        "every-problem-at-once",
        distill_set("distill.lr=0", "adapt.batch_size=-1", "export.atol=.inf"),
        ("distill.lr", "adapt.batch_size", "export.atol"),
    ),
    Case("text-fields-not-a-list", prepare_set("data.text_fields=sentence"), ("data.text_fields", "valid list")),
    Case(
        "strategy-does-not-exist",
        distill_set("distill.strategy=distilbert"),
        ("distill.strategy", "must be one of finetune, kd", "got 'distilbert'"),
    ),
    Case("device-not-known", adapt_set("device=gpu"), (blamed("device=gpu"), "device", "'cpu'")),
    Case(
        "random-model-without-model-type", adapt_set("teacher.arch={hidden_size: 32}"), ("teacher", "arch.model_type")
    ),
    Case(
        "arch-sizes-do-not-fit",
        adapt_set("teacher.arch={model_type: bert, hidden_size: 30, num_attention_heads: 4}"),
        ("arch for 'tiny-teacher'", "hidden size (30)"),
        keep="teacher",
    ),
    # ---- config files ------------------------------------------------------------------------------------------
    Case(
        "unknown-key-suggests",
        params("seed: 1\ndistill:\n  epoch: 2\n"),
        ("params.yaml", "line 3", "unknown key 'distill.epoch'", "did you mean 'distill.epochs'"),
    ),
    Case(
        "unknown-section-suggests",
        params("seed: 1\ndistil:\n  lr: 0.001\n"),
        ("params.yaml", "line 2", "did you mean 'distill'"),
    ),
    Case(
        "yaml-syntax-error",
        params("seed: 1\ndistill:\n  lr: [0.001\n  epochs: 2\n"),
        ("params.yaml", "line 4", "not valid YAML"),
        subprocess=True,
    ),
    Case(
        "yaml-bad-indentation",
        params("seed: 1\nadapt:\n  lr: 0.001\n epochs: 2\n", "prepare"),
        ("params.yaml", "line 4", "not valid YAML"),
    ),
    Case("empty-config", params(""), ("params.yaml", "the file is empty")),
    Case("comments-only-config", params("# nothing here yet\n\n"), ("params.yaml", "the file is empty")),
    Case("config-is-a-list", params("- seed: 1\n- adapt: {}\n"), ("params.yaml", "must be a mapping, got list")),
    Case("config-non-utf8", params(b"seed: 1\n# na\xefve\n"), ("params.yaml", "line 2", "not valid UTF-8")),
    Case(
        "config-duplicate-key",
        params("seed: 1\nadapt:\n  lr: 0.001\n  lr: 0.1\n"),
        ("params.yaml", "line 4", "'adapt.lr' is set twice", "line 3"),
        subprocess=True,
    ),
    Case("config-wrong-type", params("seed: 1\nadapt: 3\n"), ("params.yaml", "line 2", "adapt", "valid dictionary")),
    Case(
        "config-is-a-folder",
        lambda s: ["adapt", "--params", s.tmp, "--data", s.w.prep, "--out", s.out],
        ("is a folder, not a config file",),
    ),
    Case(
        "config-missing",
        lambda s: ["adapt", "--params", s.tmp / "params.yml", "--data", s.w.prep, "--out", s.out],
        ("params.yml", "file not found"),
    ),
    # ---- --set overrides ---------------------------------------------------------------------------------------
    Case("set-without-equals", adapt_set("adapt.lr"), ("'adapt.lr'", "must look like section.key=value")),
    Case(
        "set-unknown-key-suggests",
        distill_set("distill.temprature=3"),
        ("unknown key 'distill.temprature'", "did you mean 'distill.temperature'"),
        subprocess=True,
    ),
    Case("set-below-a-value", distill_set("distill.lr.max=1"), ("distill.lr.max=1", "lr is not a section")),
    Case("set-section-to-a-value", distill_set("distill=3"), (blamed("distill=3"), "distill", "valid dictionary")),
    # ---- prepared data, teacher and student folders ------------------------------------------------------------
    Case(
        "distill-teacher-other-label-count",
        lambda s: ["distill", *P, "--data", s.w.prep3, "--teacher", s.w.teacher, "--out", s.out],
        ("teacher", "trained for labels ['0', '1']", "['a', 'b', 'c']"),
        keep="student",
        subprocess=True,
    ),
    Case(
        "distill-teacher-other-label-names",
        lambda s: ["distill", *P, "--data", s.w.prep_names, "--teacher", s.w.teacher, "--out", s.out],
        ("teacher", "['neg', 'pos']"),
        keep="student",
    ),
    Case(
        "export-student-other-labels",
        lambda s: ["export", *P, "--data", s.w.prep3, "--student", s.w.student, "--out", s.out],
        ("student/model", "the student was trained for labels ['0', '1']", "['a', 'b', 'c']"),
    ),
    Case(
        "evaluate-student-other-labels",
        lambda s: ["evaluate", *P, "--data", s.w.prep_names, "--student", s.w.student, "--out", s.out],
        ("student/model", "the student was trained for labels", "['neg', 'pos']"),
    ),
    Case(
        "evaluate-teacher-other-labels",
        lambda s: [
            "evaluate",
            *P,
            "--data",
            s.w.prep3,
            "--teacher",
            s.w.teacher,
            "--student",
            s.w.student,
            "--out",
            s.out,
        ],
        ("teacher/model", "the teacher was trained for labels"),
    ),
    Case(
        "teacher-folder-not-an-ikd-output",
        lambda s: ["distill", *P, "--data", s.w.prep, "--teacher", s.copy(s.w.data, "teacher"), "--out", s.out],
        ("teacher/model", "not an ikd model folder"),
    ),
    Case(
        "teacher-is-the-prepared-data",
        lambda s: ["distill", *P, "--data", s.w.prep, "--teacher", s.w.prep, "--out", s.out],
        ("prep: the output of `ikd prepare`", "not an adapted teacher"),
    ),
    Case(
        "teacher-is-a-student",
        lambda s: ["distill", *P, "--data", s.w.prep, "--teacher", s.w.student, "--out", s.out],
        ("student: the output of `ikd distill`", "not an adapted teacher"),
    ),
    Case(
        "teacher-folder-missing",
        lambda s: ["distill", *P, "--data", s.w.prep, "--teacher", s.tmp / "teacher", "--out", s.out],
        ("teacher", "teacher folder not found"),
    ),
    Case(
        "strategy-needs-a-teacher",
        lambda s: ["distill", *P, "--data", s.w.prep, "--out", s.out],
        ("distill.strategy", "needs a teacher"),
    ),
    Case(
        "data-is-not-prepared",
        lambda s: ["adapt", *P, "--data", s.w.data, "--out", s.out],
        ("data", "no schema.json", "ikd prepare"),
    ),
    Case(
        "prepared-schema-corrupt",
        lambda s: ["adapt", *P, "--data", _damaged_prep(s, "schema.json"), "--out", s.out],
        ("schema.json", "unreadable"),
    ),
    Case(
        "prepared-splits-missing",
        lambda s: ["adapt", *P, "--data", _damaged_prep(s, "data"), "--out", s.out],
        ("prep/data", "cannot be read"),
    ),
    Case(
        "student-weights-missing",
        damaged_student(lambda d, _: (d / "model" / "model.safetensors").unlink()),
        ("student/model", "no model.safetensors"),
    ),
    Case(
        "student-weights-corrupt",
        damaged_student(lambda d, _: _cut(d / "model" / "model.safetensors")),
        ("model.safetensors", "cannot load the encoder"),
    ),
    Case(
        "student-weights-of-another-model",
        damaged_student(_teacher_weights_in, "evaluate"),
        ("model.safetensors", "encoder weights mismatched"),
    ),
    Case(
        "student-head-corrupt",
        damaged_student(lambda d, _: (d / "model" / "ikd_head.safetensors").write_bytes(b"x")),
        ("ikd_head.safetensors", "cannot load the head"),
    ),
    Case(
        "student-meta-corrupt",
        damaged_student(lambda d, _: _cut(d / "model" / "ikd_model.json")),
        ("ikd_model.json", "unreadable"),
    ),
    Case(
        "student-tokenizer-missing",
        damaged_student(lambda d, _: (d / "model" / "tokenizer.json").unlink()),
        ("student/model", "cannot load the tokenizer"),
    ),
    Case(
        "student-step-record-missing",
        damaged_student(lambda d, _: (d / "step.json").unlink()),
        ("student", "no step.json"),
    ),
    Case(
        "student-step-record-corrupt",
        damaged_student(lambda d, _: _cut(d / "step.json")),
        ("step.json", "not valid JSON"),
    ),
]


def _train_is_a_folder(s: Scratch) -> Path:
    folder = s.data(drop=("train.tsv",))
    (folder / "train.tsv").mkdir()
    return folder


def _damaged_prep(s: Scratch, part: str) -> Path:
    prep = s.copy(s.w.prep, "prep")
    if part == "data":
        shutil.rmtree(prep / "data")
    else:
        _cut(prep / part)
    return prep


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- running `ikd` as another process ---------------------------------------------------------------------------
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def _without_read_override() -> None:
    """In the child, before exec: drop root's capabilities to bypass file permissions (from the bounding set,
    so the exec'd `ikd` does not get them back); uid 0 then reads a mode-000 file no better than anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def _no_read_access(path: Path):
    """chmod 000 ``path``; returns the preexec_fn that makes it unreadable for the child as well (root: drop the
    capabilities that bypass permissions), after checking that it really is unreadable there."""
    path.chmod(0)
    preexec = _without_read_override if os.geteuid() == 0 else None
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(path)!r}, 'rb')"],
            preexec_fn=preexec,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.SubprocessError as exc:  # prctl refused: no CAP_SETPCAP in this container
        pytest.skip(f"cannot take root's file-permission override away here ({exc}); unreadable-file case not run")
    assert "PermissionError" in probe.stderr, f"{path} is still readable by the child: {probe.stderr}"
    return preexec


def _run_process(argv: list, preexec) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [str(IKD), *map(str, argv)], capture_output=True, text=True, env=env, timeout=300, preexec_fn=preexec
    )
    return proc.returncode, proc.stderr


# ---- the test ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_leaves_nothing_behind(case: Case, world: World, tmp_path, cli):
    s = Scratch(world, tmp_path)
    argv = case.argv(s)
    assert str(s.out) in map(str, argv)
    before = None
    if case.keep:
        shutil.copytree(getattr(world, case.keep), s.out)
        before = _snapshot(s.out)
    if case.subprocess or case.unreadable:
        preexec = _no_read_access(Path(argv[argv.index("--data") + 1]) / case.unreadable) if case.unreadable else None
        code, err = _run_process(argv, preexec)
    else:
        code, _, err = cli(*argv)
    errors = [ln for ln in err.splitlines() if ln.startswith("ikd: error:")]
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(errors) == 1, f"expected one error line, stderr:\n{err}"
    for part in case.expect:
        assert part in errors[0], f"{part!r} not in: {errors[0]}"
    left = sorted(p.name for p in s.outs.iterdir())  # no .out.tmp-* / .out.old-* sibling, no partial out
    if case.keep:
        assert left == ["out"], left
        assert _snapshot(s.out) == before, "the previous good output changed"
    else:
        assert left == [], left


def test_the_corpus_is_wide_enough():
    """The issue asks for at least 30 malformed inputs, a few of them through a real process, some over a good
    output that must survive."""
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.subprocess for c in CASES) >= 3 and any(c.unreadable for c in CASES)
    assert sum(c.keep is not None for c in CASES) >= 2
