"""The modelling code ikd writes beside every model folder it saves, as ``modeling_ikd.py``.

It lets a folder written by ikd (``ikd adapt``, ``ikd distill``) load in the transformers ecosystem:
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` and
``pipeline("text-classification", model=folder, trust_remote_code=True)``. No standard transformers class pools
the way ikd's head does (mean over the unpadded tokens for sentence-transformers checkpoints, or the first token's
state, then one linear layer), hence this class, named in the folder's ``config.json`` through ``auto_map``.

This file is copied as it is into model folders, which are read where ikd may not be installed: it imports only
torch and transformers, never ikd. The encoder is built from the same config with ``AutoModel.from_config`` (any
encoder transformers knows: BERT, MiniLM, MPNet, RoBERTa, ...). ``model.safetensors`` holds the encoder's weights
under its own key names and the head's as ``head.weight`` / ``head.bias``; the encoder's keys get this class's
``base_model_prefix`` ("encoder") added when they are loaded.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class IkdForSequenceClassification(PreTrainedModel):
    """Encoder + pooling (``config.ikd_pooling``: "mean" or "cls") + dropout + linear head over
    ``config.num_labels`` classes: the same numbers as ikd's ``SequenceClassifier``."""

    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        self.pooling = getattr(config, "ikd_pooling", "cls")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"config.json: ikd_pooling must be 'mean' or 'cls', not {self.pooling!r}")
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1) if dropout is None else dropout)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return states[:, 0]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]  # type: ignore[union-attr]
        device = input_ids.device if input_ids is not None else inputs_embeds.device  # type: ignore[union-attr]
        if attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        inputs: dict[str, torch.Tensor | None] = {"attention_mask": attention_mask}
        if input_ids is not None:
            inputs["input_ids"] = input_ids
        else:
            inputs["inputs_embeds"] = inputs_embeds
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs, output_hidden_states=output_hidden_states)
        logits = self.head(self.dropout(self.pool(out.last_hidden_state, attention_mask)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
