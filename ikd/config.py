"""Typed configuration: one section per step, YAML in, ``--set a.b=c`` overrides.

Every key has exactly one default: here, in :mod:`ikd.exportconfig` for the sections of the steps after training
(``evaluate``, ``export``), or in :mod:`ikd.opsconfig` for the sections that never change what a step computes
(``kubeflow``, ``checkpoint``, ``monitor``, ``promote``); all importable from here. Unknown keys and
bad values are collected and reported in a single :class:`~ikd.errors.ConfigError` that names each key (with the
YAML line where there is one) and suggests the closest known key for a typo (:mod:`ikd.configio`: reading,
overrides, error reports). Paths are never part of the config: they are arguments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from ikd.configio import apply_overrides, describe, line_errors, mark_overrides, parse_yaml, read_text
from ikd.errors import ConfigError
from ikd.exportconfig import EvaluateConfig, ExportConfig
from ikd.opsconfig import (
    CheckpointConfig,
    KubeflowConfig,
    MonitorConfig,
    Placement,
    PromoteConfig,
    Toleration,
    TrainPlacement,
)
from ikd.section import Section

# Names importable from here as before the split (evaluate/export in ikd.exportconfig, the ops sections in
# ikd.opsconfig, reading in ikd.configio).
__all__ = [
    "AdaptConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EvaluateConfig",
    "ExportConfig",
    "KubeflowConfig",
    "MetricName",
    "ModelConfig",
    "MonitorConfig",
    "Placement",
    "PromoteConfig",
    "Toleration",
    "TrainConfig",
    "TrainPlacement",
    "apply_overrides",
]

MetricName = Literal["accuracy", "f1", "matthews"]


class DataConfig(Section):
    """How to read the task's files and turn them into model inputs (step ``prepare``)."""

    preset: Literal["glue-sst2", "glue-mrpc", "glue-cola"] | None = Field(
        None, description="A GLUE file layout; fills every schema key left unset (null)."
    )
    task: str | None = Field(None, description="Task name in metrics.json (default: preset or 'custom').")
    train_file: str | None = Field(None, description="Train file name or stem in the data folder; hub split.")
    dev_file: str | None = Field(None, description="Dev file name or stem in the data folder; hub split.")
    hub_config: str | None = Field(None, description="Hub dataset configuration (e.g. 'sst2' of nyu-mll/glue).")
    format: Literal["tsv", "csv", "jsonl", "parquet"] | None = Field(None, description="Default: by suffix.")
    header: bool | None = Field(None, description="Delimited files: first line holds column names (default true).")
    columns: list[str] | None = Field(None, description="Column names for files without a header.")
    text_fields: list[str] | None = Field(None, min_length=1, max_length=2, description="One or two text columns.")
    label_field: str | None = Field(None, description="The label column.")
    label_names: list[str] | None = Field(
        None, min_length=2, description="Label values in class order (default: sorted values seen in train)."
    )
    metrics: list[MetricName] | None = Field(None, min_length=1, description="Dev metrics; the first is primary.")
    max_length: int = Field(128, gt=1, le=4096, description="Tokens per example (truncation).")
    max_train_rows: int | None = Field(None, gt=0, description="Stratified subsample of train after the quiz split.")
    max_dev_rows: int | None = Field(None, gt=0, description="Stratified subsample of dev.")
    quiz_rows: int = Field(256, ge=0, description="Rows carved from train for teacher feedback (never dev).")
    calib_rows: int = Field(
        512,
        ge=0,
        description="Labeled rows carved from train that nothing trains on (never dev, quiz or transfer texts): "
        "the int8 guard's agreement and metric checks and `ikd tune`'s objective; at most a fifth of the train "
        "rows left after the quiz. Dev only reports.",
    )
    transfer: Literal["none", "rest"] = Field(
        "none", description="rest: train rows left out by max_train_rows become unlabeled transfer rows."
    )
    transfer_file: str | None = Field(
        None, description="A file of extra unlabeled rows in the data folder (text columns as train; labels ignored)."
    )
    max_transfer_rows: int | None = Field(None, gt=0, description="Cap on transfer rows (seeded sample).")
    augment: int = Field(
        0,
        ge=0,
        le=64,
        description="Edited variants of each labeled train row added as unlabeled transfer rows (the teacher "
        "labels them), for tasks with little unlabeled text; 0: none (ikd.core.augment).",
    )
    augment_ops: list[Literal["delete", "swap", "crop"]] = Field(
        ["delete", "swap", "crop"], min_length=1, description="Word-level edits drawn from for each variant."
    )


class ModelConfig(Section):
    """A teacher or student: where the weights come from and how the head pools."""

    name: str = Field(min_length=1, description="Hub id, local folder, or a label for init: random.")
    init: Literal["pretrained", "random"] = "pretrained"
    arch: dict[str, Any] = Field(default_factory=dict, description="Config overrides; init: random needs model_type.")
    tokenizer: str | None = Field(None, description="Tokenizer source: 'char' (built in) or a model name.")
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch).")
    layers: int | None = Field(None, gt=0, description="Keep only the first N transformer layers.")
    pooling: Literal["auto", "mean", "cls"] = Field("auto", description="auto: as the checkpoint was trained.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before the classification head.")

    @model_validator(mode="after")
    def _random_needs_type(self) -> ModelConfig:
        if self.init == "random" and "model_type" not in self.arch:
            raise ValueError("init: random needs arch.model_type (e.g. bert)")
        return self


class TrainConfig(Section):
    """Optimisation settings shared by ``adapt`` and ``distill``."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-5, gt=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    log_every: int = Field(20, ge=1, description="Steps between training-curve records.")
    eval_every: int | Literal["epoch", "never"] = Field(
        "epoch", description="Dev metrics during training: at the end of each epoch, every N steps, or never."
    )
    group_by_length: bool = Field(True, description="Batch rows of similar length (less padding, faster).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Autocast of the forward passes: bf16 (CPU or GPU), fp16 (CUDA only, with a gradient "
        "scaler); weights and optimizer state stay fp32.",
    )
    accumulation: int = Field(
        1,
        ge=1,
        description="Micro-batches of batch_size rows per optimizer step: one update of accumulation x "
        "batch_size rows (steps, max_steps and eval_every count updates).",
    )

    @field_validator("eval_every", mode="before")
    @classmethod
    def _when(cls, v: Any) -> Any:
        if v in ("epoch", "never") or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be 'epoch', 'never' or a positive number of steps")


class AdaptConfig(TrainConfig):
    """Fine-tune the teacher on the task (full fine-tuning), or import one already fine-tuned."""

    mode: Literal["finetune", "import"] = Field(
        "finetune",
        description="finetune: train teacher.name (an encoder) on the task. import: teacher.name is a classifier "
        "already fine-tuned on this task (a transformers *ForSequenceClassification folder, or an ikd model folder), "
        "used as it is, head kept; its id2label must name the data's labels, or a GLUE preset's meanings of them "
        "(docs/architecture.md).",
    )


class DistillConfig(TrainConfig):
    """Train the student with a strategy of the registry (:mod:`ikd.strategies`).

    The keys here are shared by every strategy (the KD loss is the student's loss in all that use a teacher);
    each strategy with options of its own reads them from its own section, ``distill.<strategy name>``, whose
    model the strategy declares (``Strategy.options``). Every registered strategy's section is present, with its
    defaults, so that switching ``strategy`` needs no other edit.
    """

    model_config = ConfigDict(extra="allow")  # the strategy sections; any other unknown key is refused below

    lr: float = Field(5e-5, gt=0.0, lt=1.0)
    epochs: int = Field(2, ge=1)
    strategy: str = Field("kd", description="A name in the strategy registry (ikd.strategies.STRATEGIES).")
    temperature: float = Field(2.0, gt=0.0, description="tau of the softened distributions.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the KL term; 1 - alpha weighs CE.")
    soft_loss: Literal["kl", "mse"] = Field("kl", description="kl: KL(p_T||p_S); mse: MSE of softened probabilities.")
    hidden_weight: float = Field(0.0, ge=0.0, description="beta of the PKD hidden-state term (0: off).")
    hidden_loss: Literal["centered", "relation", "pkd"] = Field(
        "centered",
        description="Form of the hidden term: centered (PKD on batch-centered states), relation (row-similarity "
        "matrices, MiniLM-style, no projection) or pkd (as published; collapses when weighted up).",
    )
    hidden_layers: list[tuple[int, int]] | None = Field(
        None, description="[student, teacher] hidden-state index pairs; default: evenly spaced over the student."
    )
    cache_teacher_outputs: bool | None = Field(
        None, description="Compute teacher outputs once (default: when the strategy's teacher is frozen)."
    )
    score_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="What scores the frozen teacher over the distillation rows (`ikd score`): torch, or ONNX "
        "Runtime fp32 / int8 weights (CPU, logits only, checked against torch on the first rows). On this "
        "project's 2-core AVX2 benchmark neither ONNX backend was faster, and int8 changed the teacher's answers "
        "(docs/strategies.md).",
    )
    score_batch_size: int = Field(64, ge=1, description="Rows per teacher batch when scoring (sorted by length).")

    @model_validator(mode="wrap")
    @classmethod
    def _strategy_sections(cls, data: Any, handler: Any) -> DistillConfig:
        """Validate each registered strategy's section with the strategy's own model, and the rest as usual;
        every problem of both is reported at once, with its full key."""
        if isinstance(data, DistillConfig):
            return data
        if not isinstance(data, dict):
            return handler(data)
        from ikd.strategies import STRATEGIES

        models = cls.extra_sections()
        raw, sections = dict(data), {}
        errors: list[InitErrorDetails] = []
        for key in [k for k in raw if k not in cls.model_fields and k not in models]:
            errors.append({"type": "extra_forbidden", "loc": (key,), "input": raw.pop(key)})
        for name, model in models.items():
            value = raw.pop(name, None)
            try:
                sections[name] = value if isinstance(value, model) else model.model_validate(value or {})
            except ValidationError as exc:
                errors.extend(line_errors(exc, (name,)))
        obj = None
        try:
            obj = handler(raw)
        except ValidationError as exc:
            errors = line_errors(exc, ()) + errors
        if obj is not None and obj.strategy not in STRATEGIES:
            errors.append(
                {
                    "type": "value_error",
                    "loc": ("strategy",),
                    "input": obj.strategy,
                    "ctx": {"error": ValueError(f"must be one of {', '.join(STRATEGIES)}")},
                }
            )
        if errors or obj is None:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        assert obj.__pydantic_extra__ is not None
        obj.__pydantic_extra__.update(sections)
        return obj

    @classmethod
    def extra_sections(cls) -> dict[str, type[BaseModel]]:
        """The strategies' own sections (``distill.<name>``): strategy name -> its options model."""
        from ikd.strategies import STRATEGIES

        return {name: s.options for name, s in STRATEGIES.items() if s.options is not None}

    def options(self, strategy: str | None = None) -> Any:
        """The section of ``strategy`` (default: the configured one); None for a strategy without options."""
        return (self.__pydantic_extra__ or {}).get(strategy or self.strategy)


class Config(Section):
    """The whole experiment. ``params.yaml`` is its serialized form."""

    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelConfig = Field(default_factory=lambda: ModelConfig(name="sentence-transformers/all-mpnet-base-v2"))
    student: ModelConfig = Field(default_factory=lambda: ModelConfig(name="sentence-transformers/all-MiniLM-L6-v2"))
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    kubeflow: KubeflowConfig = Field(default_factory=KubeflowConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)

    @model_validator(mode="after")
    def _import_as_is(self) -> Config:
        if self.adapt.mode == "import" and (self.teacher.init != "pretrained" or self.teacher.layers is not None):
            raise ValueError(
                "adapt.mode: import uses teacher.name as it is: it needs teacher.init: pretrained and no teacher.layers"
            )
        if self.adapt.mode == "import" and self.teacher.tokenizer not in (None, self.teacher.name):
            # the rows would be tokenized for another vocabulary than the imported model's: a silent garbage teacher
            raise ValueError(
                f"adapt.mode: import tokenizes with teacher.name's own tokenizer: leave teacher.tokenizer unset "
                f"(it is '{self.teacher.tokenizer}'; --set teacher.tokenizer=null)"
            )
        return self

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None, lines: dict[str, int | str] | None = None) -> Config:
        """Validate a plain dict. Raises ConfigError listing every problem at once; ``lines``: where each key came
        from (:func:`ikd.configio.mark_overrides`). Problems that all come from overrides do not name ``source``."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"the top level must be a mapping, got {type(raw).__name__}", source)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = describe(exc, lines or {}, cls)
            raise ConfigError(problems, None if all(p.startswith("--set ") for p in problems) else source) from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """Read YAML at ``path`` (None: defaults only), apply ``a.b=c`` overrides, validate."""
        if path is None:
            return cls.from_dict(apply_overrides({}, overrides, None), lines=mark_overrides({}, overrides))
        return cls.from_text(read_text(path), str(path), overrides)

    @classmethod
    def from_text(cls, text: str, source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """Validate YAML (or JSON) text, e.g. a Kubeflow pipeline parameter; errors name ``source`` and lines."""
        raw, lines = parse_yaml(text, source)
        raw = apply_overrides(raw, overrides, source) if isinstance(raw, dict) else raw
        return cls.from_dict(raw, source, mark_overrides(lines, overrides))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """One line of JSON (valid YAML too): the form of a Kubeflow pipeline parameter."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def section_hash(self, *sections: str) -> str:
        """Stable digest of the named sections (plus seed), used to decide whether a step is stale."""
        d = self.to_dict()
        payload = {s: d[s] for s in sections} | {"seed": self.seed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
