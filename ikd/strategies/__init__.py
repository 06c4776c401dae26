"""Distillation strategies: one registry, one interface (:class:`ikd.strategies.base.Strategy`).

A strategy is one file plus one entry in :data:`STRATEGIES` (or a call to :func:`register` from your own code):
its class names itself (``name``), says what it needs (``uses_teacher``, ``updates_teacher``, ``uses_quiz``,
``owns_step``, ``teacher_source``) and declares its config section (``options``, read as ``distill.<name>``).
The config's strategy names and sections come from here.
"""

from __future__ import annotations

from ikd.errors import ConfigError
from ikd.strategies.base import Batch, CacheSpec, Strategy, TeacherOutputs
from ikd.strategies.bilevel import IKD, MetaDistil
from ikd.strategies.finetune import Finetune
from ikd.strategies.kd import KD
from ikd.strategies.prokt import ProKT
from ikd.strategies.talking import Talking

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Finetune, KD, ProKT, MetaDistil, IKD, Talking)}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy class to the registry under ``cls.name`` (usable as a class decorator). Its section
    ``distill.<name>`` is part of every config validated afterwards."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)) or cls.name in ("", "base"):
        raise TypeError(f"{cls!r}: a strategy is a Strategy subclass with a name of its own")
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} is already registered ({STRATEGIES[cls.name].__qualname__})")
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> type[Strategy]:
    """The registered strategy ``name``; ConfigError naming the known ones otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"distill.strategy: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})") from None


__all__ = ["STRATEGIES", "Batch", "CacheSpec", "Strategy", "TeacherOutputs", "get_strategy", "register"]
