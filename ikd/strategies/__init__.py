"""Distillation strategies: one explicit registry, one interface (:class:`ikd.strategies.base.Strategy`)."""

from typing import get_args

from ikd.config import StrategyName
from ikd.strategies.base import CacheSpec, Strategy, TeacherOutputs
from ikd.strategies.bilevel import IKD, MetaDistil, ProKT
from ikd.strategies.finetune import Finetune
from ikd.strategies.kd import KD
from ikd.strategies.talking import Talking

STRATEGIES: dict[str, type[Strategy]] = {"finetune": Finetune, "kd": KD, "prokt": ProKT,
                                         "metadistil": MetaDistil, "ikd": IKD, "talking": Talking}
assert set(STRATEGIES) == set(get_args(StrategyName)), "config.StrategyName and STRATEGIES disagree"

__all__ = ["STRATEGIES", "CacheSpec", "Strategy", "TeacherOutputs"]
