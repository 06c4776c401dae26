"""A classifier fine-tuned outside ikd (a transformers ``*ForSequenceClassification`` folder) as ikd's teacher.

Its head is kept as it is: BERT's pooler (dense + tanh) before the classifier, RoBERTa's and MPNet's dense + tanh +
out_proj, DistilBERT's pre_classifier + ReLU are no encoder + linear head, so the model is wrapped, not converted.
:class:`ForeignClassifier` answers like :class:`~ikd.core.classifier.SequenceClassifier` where it can: logits,
and pooled hidden states (the first token's, which is what these heads read) for the hidden-state terms. It has no
``head`` or ``encoder`` to train, no pooled features for a head, no layers to run one by one: the strategies that
need those are refused with a :class:`~ikd.errors.ModelError` that says so.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from ikd.errors import ModelError

log = logging.getLogger(__name__)

#: What ikd_model.json's ``format`` says of a folder whose weights are such a classifier's.
FORMAT = "transformers"


class ForeignClassifier(nn.Module):
    """A transformers sequence classifier behind the teacher's interface. forward(input_ids, attention_mask,
    token_type_ids, pooled_layers=()) -> logits [B, C], or (logits, pooled first-token states) with
    ``pooled_layers``."""

    pooling = "cls"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._types = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        pooled_layers: tuple[int, ...] = (),
        features: bool = False,
    ):
        if features:
            self._refuse("pooled features for its head")
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._types:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, output_hidden_states=bool(pooled_layers))
        if pooled_layers:
            return out.logits, tuple(out.hidden_states[i][:, 0] for i in pooled_layers)
        return out.logits

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        c = self.config
        return int(getattr(c, "num_hidden_layers", None) or c.n_layers)

    @property
    def hidden_size(self) -> int:
        c = self.config
        return int(getattr(c, "hidden_size", None) or c.dim)

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    @property
    def head(self) -> NoReturn:
        self._refuse("a linear head to train or to apply to cached features")

    @property
    def encoder(self) -> NoReturn:
        self._refuse("an encoder to train")

    def run_layers(self, states: torch.Tensor, start: int, end: int) -> NoReturn:
        self._refuse("transformer layers to run one by one")

    def _refuse(self, what: str) -> NoReturn:
        arch = (getattr(self.config, "architectures", None) or [type(self.model).__name__])[0]
        raise ModelError(
            f"the teacher is an imported {arch} (adapt.mode: import), which offers logits and hidden states but not "
            f"{what}: use a strategy that reads only those (kd, finetune), or import a model folder written by ikd"
        )


def load(folder: Path) -> ForeignClassifier:
    """The transformers classifier of ``folder`` (model.safetensors, never a pickle; no remote code), checked to be
    complete: ModelError naming the folder when a weight is missing (a bare encoder has no classifier) or
    misshapen."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{weights}: not found (a classifier is read from one safetensors file)")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(folder), use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(
            f"{folder}: cannot load a transformers sequence classifier ({' '.join(str(exc).split())[:200]})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    for kind in ("missing_keys", "mismatched_keys"):
        bad = sorted(map(str, info.get(kind) or ()))
        if bad:
            raise ModelError(
                f"{weights}: {len(bad)} weights of {type(model).__name__} {kind.split('_')[0]} (e.g. {bad[0][:120]}): "
                "not a fine-tuned sequence classifier folder"
            )
    if getattr(model.config, "problem_type", None) in ("regression", "multi_label_classification"):
        raise ModelError(f"{folder}/config.json: problem_type {model.config.problem_type}; ikd distills one label")
    return ForeignClassifier(model.eval())


def labels_of(config: Any) -> list[str]:
    """The class names of a transformers model config, in id order (``id2label``; transformers leaves the generic
    LABEL_0, LABEL_1, ... out of config.json and puts them back when it reads one)."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]


def match_labels(model_labels: list[str], names: list[str], where: str, meanings: list[str] | None = None) -> None:
    """ModelError unless a model trained for ``model_labels`` (class order) predicts the data's label ``names``:
    the same names in the same order, compared case-insensitively, or the same ``meanings`` (the names a served model
    answers with, :func:`ikd.core.sources.served_label_names`: an SST-2 model whose id2label says NEGATIVE/POSITIVE
    fits data labeled 0/1); a model with generic names (LABEL_0, LABEL_1, ...: transformers' default) and as many
    classes is taken by position, with a warning."""
    folded = [m.casefold() for m in model_labels]
    for wanted in (names, meanings or names):
        if len(model_labels) == len(wanted) and folded == [n.casefold() for n in wanted]:
            return
    if len(model_labels) == len(names) and model_labels == [f"LABEL_{i}" for i in range(len(names))]:
        log.warning("%s: generic labels %s taken to be the data's %s, in this order", where, model_labels, names)
        return
    hint = ""
    if sorted(m.casefold() for m in model_labels) == sorted(n.casefold() for n in names):
        hint = f" (the same names in another order: set data.label_names to {model_labels})"
    raise ModelError(
        f"{where}: the teacher was trained for labels {model_labels} ({len(model_labels)} classes), the data has "
        f"{names}{hint}; labels are compared case-insensitively in class order"
    )
