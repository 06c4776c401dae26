"""The student optimizer (AdamW, fused, no decay on biases and norms) and the linear warm-up / decay schedule."""

from __future__ import annotations

import torch

from ikd.config import TrainConfig
from ikd.strategies.base import Strategy


def make_optimizer(strategy: Strategy, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in _named_trainable(strategy):
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters; the for-each default costs ~0.7 s a step on a 110M model on CPU
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def _named_trainable(strategy: Strategy):
    yield from (("student." + n, p) for n, p in strategy.student.named_parameters() if p.requires_grad)
    for mname, m in strategy.extra_modules().items():
        yield from ((f"{mname}.{n}", p) for n, p in m.named_parameters() if p.requires_grad)


def linear_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
