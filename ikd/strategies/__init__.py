"""Distillation strategies: one explicit registry, one interface (:class:`ikd.strategies.base.Strategy`)."""

from ikd.strategies.base import Strategy, TeacherOutputs
from ikd.strategies.finetune import Finetune
from ikd.strategies.kd import KD

STRATEGIES: dict[str, type[Strategy]] = {"finetune": Finetune, "kd": KD}

__all__ = ["STRATEGIES", "Strategy", "TeacherOutputs"]
