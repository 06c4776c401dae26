"""Small tensor and module helpers that know nothing of configs: what a classifier takes from a batch, moving a
(nested) batch to a device, and finding an encoder's stack of transformer layers. Strategies use them, so this
module must stay free of config imports (the config reads the strategy registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ikd.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def model_inputs(side: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments a classifier takes from one side of a batch (ids, mask, token types)."""
    return {k: side[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in side}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a (nested) batch on ``device``."""
    return {k: (to_device(v, device) if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


def layer_list(encoder: PreTrainedModel) -> nn.ModuleList:
    """The encoder's transformer layers (the ModuleList as long as ``config.num_hidden_layers``)."""
    n = encoder.config.num_hidden_layers
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"cannot find the {n} transformer layers of {type(encoder).__name__}")
