"""The search space of ``ikd tune``: config keys mapped to distributions, read from YAML or JSON and checked against
the config model before any trial runs.

```yaml
distill.temperature: {type: float, low: 1.0, high: 8.0, log: true}
distill.epochs: {type: int, low: 1, high: 4}
distill.strategy: {type: categorical, choices: [kd, metadistil]}
distill.alpha: 0.5          # a plain value: fixed for every trial, not searched
```

A trial varies only what the distill step reads (``distill.*`` and ``student.*``), and not the student keys the
prepared data is made from (its name, init, tokenizer, revision, arch): the data and the adapted teacher are made
once for the whole study. Every problem is reported at once, each naming the file, the YAML line and the key.
Nothing here imports torch or Optuna (a trial object is passed in).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ikd.config import Config
from ikd.configio import apply_overrides, parse_yaml, read_text
from ikd.errors import ConfigError

#: Sections a trial may vary: those of the distill step.
VARIED = ("distill", "student")
#: Student keys the prepared data (tokenization, length checks) is made from: a trial may not vary them.
PREPARED_FROM = ("student.name", "student.init", "student.tokenizer", "student.revision", "student.arch")
#: The built-in space: the knowledge-distillation loss and the learning rate, strategy and student as configured.
DEFAULT = """\
distill.temperature: {type: float, low: 1.0, high: 8.0, log: true}
distill.alpha: {type: float, low: 0.0, high: 1.0}
distill.lr: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
"""
_FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class Param:
    """One searched key. ``kind`` float/int: ``low`` <= value <= ``high`` (``log``: sampled on a log scale;
    ``step``: a grid); categorical: one of ``choices``."""

    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this key."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """Values that must validate for the space to make sense: the bounds, a value between them (a float range
        on an integer key shows there), every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return [self.low, mid, self.high]

    def describe(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        d: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        return d | ({"log": True} if self.log else {}) | ({"step": self.step} if self.step is not None else {})


@dataclass(frozen=True)
class Space:
    """The searched keys (``params``, in file order) and the fixed ones (``fixed``: key -> value) of ``source``."""

    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "(built-in space)"

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One trial's values: the fixed keys and a draw of every searched key."""
        return {**self.fixed, **{p.key: p.suggest(trial) for p in self.params}}

    def config(self, base: Config, values: dict[str, Any], source: str | None = None) -> Config:
        """``base`` with ``values`` applied, validated (ConfigError naming ``source`` when the combination is
        invalid)."""
        return Config.from_dict(apply_overrides(base.to_dict(), overrides(values), source), source)

    def digest(self) -> str:
        payload = {"params": [[p.key, p.describe()] for p in self.params], "fixed": self.fixed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @classmethod
    def load(cls, path: str | Path | None, base: Config) -> Space:
        """The space in the YAML/JSON file at ``path`` (None: :data:`DEFAULT`), checked against ``base``: every key a
        config key a trial may vary, every distribution well formed, every bound and choice a valid value."""
        source = str(path) if path is not None else "(built-in space)"
        raw, lines = parse_yaml(read_text(path) if path is not None else DEFAULT, source)
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(
                "a search space is a mapping of config keys to distributions, e.g. "
                "'distill.lr: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}'",
                source,
            )
        params, fixed, problems = [], {}, []
        for key, spec in raw.items():
            where = f"line {lines[key]}: " if key in lines else ""
            if not isinstance(key, str):
                problems.append(f"{where}key {key!r} is not a config key such as distill.lr")
                continue
            if isinstance(spec, dict):
                param, bad = _param(key, spec)
                problems += [f"{where}{key}: {b}" for b in bad]
                if param is not None:
                    params.append(param)
            elif spec is None or isinstance(spec, str | int | float | bool):
                fixed[key] = spec
            else:
                problems.append(f"{where}{key}: a distribution ({{type: float|int|categorical, ...}}) or a plain value")
        if problems:
            raise ConfigError(problems, source)
        space = cls(tuple(params), fixed, source)
        space.check(base, lines)
        return space

    def check(self, base: Config, lines: dict[str, int]) -> None:
        """Every key is a config key a trial may vary and every probe value validates (ConfigError otherwise)."""
        problems: list[str] = []
        probes = [(k, [v]) for k, v in self.fixed.items()] + [(p.key, p.probes()) for p in self.params]
        for key, values in probes:
            where = f"line {lines[key]}: " if key in lines else ""
            found = []
            for v in values:
                try:
                    self.config(base, {key: v})
                except ConfigError as exc:
                    found += [
                        p if "(got " in p or "unknown key" in p else f"{p} (value {v!r})" for p in _lined(exc, where)
                    ]
            if found:
                problems.append(found[0])  # one per key: an unknown key fails every probe the same way
                continue
            if not key.startswith(tuple(s + "." for s in VARIED)) or key.startswith(PREPARED_FROM):
                problems.append(
                    f"{where}{key}: a trial reruns the distill step only, so the space may vary distill.* and "
                    f"student.* keys except {', '.join(PREPARED_FROM)} (the prepared data is made from them); "
                    f"set {key} with --set instead"
                )
        if problems:
            raise ConfigError(problems, self.source)


def _lined(exc: ConfigError, where: str) -> list[str]:
    """The problems of a probe's validation, with the space file's line (a probe has no line of its own)."""
    return [p if p.startswith("line ") else where + p for p in exc.problems]


def _param(key: str, spec: dict[str, Any]) -> tuple[Param | None, list[str]]:
    """The distribution ``spec`` of ``key`` as a Param, or the problems with it."""
    kind = spec.get("type")
    if kind not in _FIELDS:
        return None, [f"type must be float, int or categorical (got {kind!r})"]
    extra = sorted(set(spec) - _FIELDS[kind])
    if extra:
        return None, [
            f"unknown field {', '.join(map(repr, extra))} for type {kind} (fields: {', '.join(sorted(_FIELDS[kind]))})"
        ]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            return None, ["choices must be a non-empty list"]
        bad = [c for c in choices if not (c is None or isinstance(c, str | int | float | bool))]
        if bad:
            return None, [f"choices must be plain values (strings, numbers, booleans); got {bad[0]!r}"]
        if len({json.dumps(c) for c in choices}) < len(choices):
            return None, ["choices must not repeat"]
        return Param(key, "categorical", choices=tuple(choices)), []
    low, high, log, step = (_number(spec.get(k)) for k in ("low", "high", "log", "step"))
    log = False if log is None else log
    num = int if kind == "int" else (int, float)
    problems = [
        f"{name} must be {'an integer' if kind == 'int' else 'a number'} (got {v!r})"
        for name, v in (("low", low), ("high", high))
        if not isinstance(v, num) or isinstance(v, bool)
    ]
    if step is not None and (not isinstance(step, num) or isinstance(step, bool) or step <= 0):
        problems.append(f"step must be a positive {'integer' if kind == 'int' else 'number'} (got {step!r})")
    if not isinstance(log, bool):
        problems.append(f"log must be true or false (got {log!r})")
    if problems:
        return None, problems
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if not low < high:
        problems.append(f"low ({low}) must be less than high ({high}); fix a value with a plain '{key}: {low}'")
    if log and low <= 0:
        problems.append(f"log: true needs low > 0 (got {low})")
    if log and step is not None:
        problems.append("step and log: true cannot be combined")
    if problems:
        return None, problems
    return Param(
        key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high, log, step
    ), []


def _number(v: Any) -> Any:
    """A number written as a string YAML 1.1 does not read as one (``1e-5``: no dot) as that number."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def overrides(values: dict[str, Any]) -> list[str]:
    """``values`` as ``--set`` overrides (``key=value``, the value as JSON, which YAML reads back unchanged)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def shown(values: dict[str, Any]) -> str:
    """``values`` for a table or a log line: ``key=value`` with floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
