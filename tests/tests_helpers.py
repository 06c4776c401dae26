"""Tiny random BERT classifiers and batches for strategy tests."""

import torch

from ikd.config import ModelConfig
from ikd.core import models

ARCH = {
    "model_type": "bert",
    "num_attention_heads": 2,
    "vocab_size": 50,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def tiny(hidden=16, layers=2, seed=0):
    cfg = ModelConfig(
        name="t",
        init="random",
        dropout=0.0,
        arch={**ARCH, "hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": 2 * hidden},
    )
    return models.build(cfg, 2, seed)[0].double()


def batch(n=6, t=7, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, -2:] = 0
    side = {"input_ids": ids, "attention_mask": mask}
    y = labels if labels is not None else torch.randint(0, 2, (n,), generator=g)
    return {"labels": y, "index": torch.arange(n), "student": side, "teacher": dict(side)}
