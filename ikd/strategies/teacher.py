"""A teacher that learns: which of its parameters train (``teacher_scope``), LoRA adapters, its optimizer.

Scopes: ``full`` (every parameter), ``top:N`` (the last N transformer layers and the head), ``head`` (the
classification head only: the encoder is frozen, so its pooled features can be computed once), ``lora``
(rank-r adapters on the attention query and value projections, plus the head; merged into the weights
when the teacher is saved).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ikd.errors import ConfigError
from ikd.training import distributed

if TYPE_CHECKING:
    from ikd.core.classifier import SequenceClassifier

#: Attention projections that get LoRA adapters (BERT: query/value; MPNet: q/v).
LORA_TARGETS = ("query", "value", "q", "v")


class LoRALinear(nn.Module):
    """y = W x + b + (B A x) * scale, with W, b frozen; A [r, in] small random, B [out, r] zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = (alpha or rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        """The plain Linear with the adapter folded into its weight."""
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def add_lora(model: nn.Module, rank: int) -> int:
    """Wrap every attention query/value Linear of ``model`` in :class:`LoRALinear`. Returns how many."""
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if name in LORA_TARGETS and isinstance(child, nn.Linear)
    ]
    for parent, name in targets:
        setattr(parent, name, LoRALinear(getattr(parent, name), rank))
    return len(targets)


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRALinear back into a plain Linear, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())


def configure(teacher: SequenceClassifier, scope: str, lora_rank: int = 8) -> list[nn.Parameter]:
    """Set requires_grad on the teacher for ``scope``. Returns the trainable parameters."""
    from ikd.core.tensors import layer_list

    for p in teacher.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Module] = [teacher.head]
    if scope == "full":
        trainable = [teacher]
    elif scope.startswith("top:"):
        n = int(scope[4:])
        layers = layer_list(teacher.encoder)
        if n > len(layers):
            raise ConfigError(f"distill.teacher_scope: top:{n} but the teacher has {len(layers)} layers")
        trainable += list(layers[len(layers) - n :])
    elif scope == "lora":
        if add_lora(teacher.encoder, lora_rank) == 0:
            raise ConfigError("distill.teacher_scope: lora found no attention query/value projections in the teacher")
        trainable += [m for m in teacher.modules() if isinstance(m, LoRALinear)]
    for m in trainable:
        for name, p in m.named_parameters():
            if not (isinstance(m, LoRALinear) and name.startswith("base.")):
                p.requires_grad_(True)
    return [p for p in teacher.parameters() if p.requires_grad]


class TeacherOptimizer:
    """AdamW over the trainable teacher parameters, with optional gradient clipping."""

    def __init__(self, params: list[nn.Parameter], lr: float, grad_clip: float | None):
        self.params = params
        self.grad_clip = grad_clip
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)

    def apply(self, grads: list[torch.Tensor | None]) -> float:
        """One step with the given gradients (one per parameter, None: zero). Returns the gradient norm."""
        for p, g in zip(self.params, grads, strict=True):
            p.grad = None if g is None else g.detach().to(p.dtype)
        distributed.average_gradients(self.params)  # no-op in one process
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self):
        return self.opt.state_dict()
