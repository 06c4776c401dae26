"""The classifier every ikd model is: a transformers encoder, pooling the way the checkpoint was trained, dropout
and a linear head. It knows no config (strategies type against it, and the config reads the strategy registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ikd.core.tensors import layer_list

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class SequenceClassifier(nn.Module):
    """Encoder + pooling + dropout + linear head.

    forward(input_ids [B,T], attention_mask [B,T], token_type_ids [B,T] | None) -> logits [B, num_labels].
    """

    def __init__(self, encoder: PreTrainedModel, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return states[:, 0]

    def forward(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        pooled_layers: tuple[int, ...] = (),
        features: bool = False,
    ):
        """logits [B, C]; with ``pooled_layers`` (hidden-state indices, 0 = embeddings) also a tuple of pooled
        states [B, H], one per index: (logits, pooled). ``features=True``: (logits, pooled last state [B, H])."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(**kwargs, output_hidden_states=bool(pooled_layers))
        pooled = self.pool(out.last_hidden_state, attention_mask)
        logits = self.head(self.dropout(pooled))
        if pooled_layers:
            return logits, tuple(self.pool(out.hidden_states[i], attention_mask) for i in pooled_layers)
        return (logits, pooled) if features else logits

    @property
    def num_layers(self) -> int:
        return int(self.encoder.config.num_hidden_layers)

    @property
    def num_labels(self) -> int:
        return int(self.head.out_features)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def run_layers(self, states: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Run transformer layers start+1..end (hidden-state indices) on ``states`` [B, T, H] with no padding
        mask, as when a message is placed at hidden state ``start``. Returns the states at index ``end``."""
        for layer in layer_list(self.encoder)[start:end]:
            out = layer(states)
            states = out[0] if isinstance(out, tuple) else out
        return states
