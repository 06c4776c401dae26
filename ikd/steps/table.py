"""The step table: every step's name, the config sections it reads, the inputs it takes and the function it runs.

This is the one place that says how the pipeline is wired. The CLI (``ikd <step>``), ``ikd run``, the Kubeflow
components and their cache keys, and the DVC stages (checked by a test) all read it; nothing else spells out which
step takes which inputs.

Inputs come in four kinds: ``source`` (a data folder, hub id or DVC path: :class:`Source`), ``data`` (the output of
``prepare``), ``teacher`` (of ``adapt``) and ``student`` (of ``distill``). A step's **key** digests its config
sections, the seed, the ikd version and the keys of its inputs (:func:`input_keys`): an output folder whose
``step.json`` holds the same key is up to date. Reading the table imports no torch; running a step does.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import ikd
from ikd.errors import ConfigError, DataError

if TYPE_CHECKING:  # the table is read by `ikd serve`'s parser too, where no config library need be installed
    from ikd.config import Config

InputKind = Literal["source", "data", "teacher", "scores", "student"]


@dataclass(frozen=True)
class Source:
    """Where ``prepare`` reads from: a local folder or a hub dataset id; with ``dvc_repo``, the path of a folder in
    that DVC (git) repository at ``dvc_rev``."""

    path: str
    dvc_repo: str | None = None
    dvc_rev: str | None = None


@dataclass(frozen=True)
class Step:
    """One row of the table. ``target`` ("module:function") is imported only when the step runs; the function is
    called as ``function(cfg, inputs, out_dir, live=..., opts=...)`` by :func:`call`."""

    name: str
    sections: tuple[str, ...]  # config sections it reads: its key, DVC params, KFP cache keys
    inputs: tuple[InputKind, ...]  # what it takes, in this order
    optional: tuple[InputKind, ...]  # inputs it can do without (distill's teacher: as the strategy says)
    output: InputKind | None  # what its output folder is to the steps after it
    target: str
    trains: bool = False  # takes checkpoint / Pushgateway options (ikd.steps.job.JobOptions)

    @property
    def function(self) -> Callable[..., Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("prepare", ("data", "teacher", "student"), ("source",), (), "data", "ikd.steps.prepare_data:run"),
        Step("adapt", ("adapt", "teacher"), ("data",), (), "teacher", "ikd.steps.adapt_teacher:run", trains=True),
        Step(
            "score", ("distill", "student"), ("data", "teacher"), ("teacher",), "scores", "ikd.steps.score_teacher:run"
        ),
        Step(
            "distill",
            ("distill", "student"),
            ("data", "teacher", "scores"),
            ("teacher", "scores"),
            "student",
            "ikd.steps.distill_student:run",
            trains=True,
        ),
        Step(
            "evaluate",
            ("evaluate",),
            ("data", "teacher", "student"),
            ("teacher",),
            None,
            "ikd.steps.evaluate_models:run",
        ),
        Step("export", ("export",), ("data", "student"), (), None, "ikd.steps.export_onnx:run"),
    )
}
#: Step names in pipeline order (also the CLI commands, DVC stages and KFP task names).
NAMES = tuple(STEPS)
#: Which step's output each input kind is.
PRODUCED_BY: dict[str, str] = {s.output: s.name for s in STEPS.values() if s.output}


def teacher_source(cfg: Config) -> str | None:
    """What ``distill`` takes as its teacher under ``cfg``: "adapted" (the adapt step's output), "pretrained"
    (``cfg.teacher`` as loaded, no adapt step needed) or None (the strategy uses no teacher)."""
    from ikd.strategies import get_strategy

    return get_strategy(cfg.distill.strategy).teacher_source(cfg.distill)


def needs(cfg: Config, step: str, kind: str, given: bool = False) -> bool:
    """Whether ``step`` reads an input of ``kind`` under ``cfg`` (``given``: one was passed)."""
    s = STEPS[step]
    if kind not in s.inputs:
        return False
    if step in ("distill", "score") and kind == "teacher":
        return teacher_source(cfg) == "adapted"
    if step == "distill" and kind == "scores" and not given:
        return False
    return kind not in s.optional or given


#: How an input folder is named in errors.
_FOLDER = {"data": "prepared data", "teacher": "teacher", "scores": "teacher scores", "student": "student"}


def check_inputs(cfg: Config, step: str, inputs: Mapping[str, Any]) -> None:
    """Every input folder ``step`` needs under ``cfg`` is given and is a folder: ConfigError naming the option for
    a missing one (``distill.strategy: kd needs a teacher (--teacher)``), DataError naming the path otherwise."""
    for kind in STEPS[step].inputs:
        value = inputs.get(kind)
        if kind == "source" or not needs(cfg, step, kind, value is not None):
            continue
        if value is None:
            why = f"distill.strategy: {cfg.distill.strategy} needs" if step == "distill" else f"{step} needs"
            raise ConfigError(f"{why} a {kind} (--{kind})")
        if not Path(value).is_dir():
            raise DataError(f"{value}: {_FOLDER[kind]} folder not found")


def input_keys(cfg: Config, step: str, inputs: Mapping[str, Any]) -> dict[str, str]:
    """The keys of the inputs ``step`` reads under ``cfg``: a source's fingerprint, a finished step folder's key,
    the model a pretrained or imported (``adapt.mode: import``) teacher comes from.
    Raises ConfigError/DataError for a missing or unfinished input."""
    check_inputs(cfg, step, inputs)
    keys: dict[str, str] = {}
    for kind in STEPS[step].inputs:
        value = inputs.get(kind)
        if kind == "source":
            keys["source"] = json.dumps(source_key(cfg, _as_source(value)), sort_keys=True)
        elif step in ("distill", "score") and kind == "teacher" and teacher_source(cfg) == "pretrained":
            from ikd.core.models import source_key as model_key

            keys["teacher"] = json.dumps(model_key(cfg.teacher), sort_keys=True)
        elif value is not None and needs(cfg, step, kind, True):  # check_inputs: a needed one is given
            keys[kind] = read_key(Path(value))
    if step == "adapt" and cfg.adapt.mode == "import":  # the classifier taken as it is: its weights' sha256
        from ikd.core.models import source_key as model_key

        keys["teacher"] = json.dumps(model_key(cfg.teacher), sort_keys=True)
    return keys


def step_key(cfg: Config, step: str, inputs: Mapping[str, str]) -> str:
    """Digest of the step's config sections and its inputs' keys: equal keys mean equal outputs."""
    payload = json.dumps(
        {"sections": cfg.section_hash(*STEPS[step].sections), "inputs": dict(inputs), "version": ikd.__version__},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_key(folder: Path) -> str:
    """The key of a finished step's output folder; raises DataError if it is not one."""
    from ikd.core.metrics import read_json

    f = Path(folder) / "step.json"
    if not f.is_file():
        raise DataError(f"{folder}: not a finished ikd step output (no step.json)")
    return str(read_json(f)["key"])


def source_key(cfg: Config, source: Source) -> dict[str, str]:
    """The fingerprint of a data source, the key ``prepare`` is made from: file sha256s of a local folder, the
    hub id and config, or a DVC repository's md5 (:func:`ikd.core.data.source_fingerprint`)."""
    if source.dvc_repo:
        from ikd.integrations import dvc

        return dvc_fingerprint(dvc.resolve(source.dvc_repo, source.path, source.dvc_rev))
    from ikd.core.data import source_fingerprint

    return source_fingerprint(cfg.data, source.path)


def dvc_fingerprint(record: Mapping[str, Any]) -> dict[str, str]:
    """The data fingerprint of a source in a DVC repository (``ikd.integrations.dvc.resolve``'s record): its DVC
    md5, else (a path git tracks itself) the commit and path."""
    return {"dvc": record["md5"]} if record.get("md5") else {"git": f"{record['commit']}:{record['path']}"}


def _as_source(value: Any) -> Source:
    if isinstance(value, Source):
        return value
    if value is None:
        raise ConfigError("prepare needs a data source (--data)")
    return Source(str(value))


def call(
    cfg: Config,
    step: str,
    inputs: Mapping[str, Any],
    out_dir: Path,
    live: Path | None = None,
    opts: Any = None,
) -> Any:
    """Run ``step`` with ``inputs`` (kind -> folder, or a :class:`Source`) into ``out_dir``; returns its
    :class:`~ikd.steps.io.StepResult`. ``opts`` (checkpoints, Pushgateway) only for training steps."""
    s = STEPS[step]
    given = {k: (v if isinstance(v, Source) or v is None else Path(v)) for k, v in inputs.items() if k in s.inputs}
    if "source" in s.inputs:
        given["source"] = _as_source(inputs.get("source"))
    kwargs: dict[str, Any] = {"live": live}
    if s.trains:
        kwargs["opts"] = opts
    return s.function(cfg, given, Path(out_dir), **kwargs)
