"""``ikd tune``: a hyperparameter search over a declared space (:mod:`ikd.tune.space`) with Optuna.

The data is prepared and the teacher adapted once, into ``<out>/prepare`` and ``<out>/adapt`` with ``ikd run``'s
machinery (:func:`ikd.steps.runner.run_step`: a finished folder with the same key is reused). Each trial then runs
the distill step with its values into one scratch folder (``<out>/trial``), scored on the calibration split (rows
carved from train that nothing trains on; dev is never read): the evaluations during training feed Optuna's
MedianPruner, the last one is the trial's value. The teacher's outputs are scored once, by the first trial, into
the shared teacher scores cache (:mod:`ikd.steps.scoring`) that every later trial reads. The study lives in
``<out>/study.db`` (SQLite), so a re-run adds trials to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ikd.config import Config
from ikd.errors import ConfigError, DataError, IkdError
from ikd.tune.space import Space, shown

log = logging.getLogger("ikd")


@dataclass(frozen=True)
class TuneOptions:
    """``trials``: trials to add to the study; ``space``: the space file (None: the built-in one); ``timeout``:
    seconds after which no new trial starts; ``study_name``: default from the config, space and data;
    ``min_quality``: pick the fastest trial whose calibration metric reaches it; ``parallel``: the Katib
    Experiment's parallel trials."""

    trials: int
    out: Path
    space: str | None = None
    timeout: float | None = None
    study_name: str | None = None
    min_quality: float | None = None
    parallel: int = 2


def _optuna():
    try:
        import optuna
    except ImportError:
        raise IkdError("ikd tune needs Optuna: pip install 'ikd[tune]'") from None
    return optuna


def prepared_folder(data: str) -> bool:
    """Whether ``data`` is already a prepared data folder (the output of ``ikd prepare``), not a source."""
    from ikd.core.metrics import read_json

    f = Path(data) / "step.json"
    return f.is_file() and read_json(f).get("step") == "prepare"


def study_name(cfg: Config, space: Space, data_key: str) -> str:
    """The default study: one per config, space and prepared data (a changed one starts a new study)."""
    import hashlib
    import json

    payload = json.dumps({"config": cfg.to_dict(), "space": space.digest(), "data": data_key}, sort_keys=True)
    return f"ikd-tune-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def tune(cfg: Config, data: str, opts: TuneOptions) -> dict[str, Any]:
    """Run ``opts.trials`` trials (see the module docstring) and write the study's outputs into ``opts.out``
    (:func:`ikd.tune.report.write`). Returns the summary printed by the CLI."""
    from ikd.core.data import Prepared
    from ikd.steps import runner, table
    from ikd.tune import report

    optuna = _optuna()
    if opts.trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {opts.trials})")
    space = Space.load(opts.space, cfg)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if prepared_folder(data):
        prep_dir = Path(data)
        log.info("tune: %s is prepared data (ikd prepare), used as it is", prep_dir)
    else:
        prep_dir = out / "prepare"
        runner.run_step(cfg, "prepare", {"source": table.Source(str(data))}, prep_dir)
    prep = Prepared.load(prep_dir)
    calib_rows = len(prep.splits["calib"])
    if not calib_rows:
        raise DataError(
            f"{prep_dir}: no calibration rows (data.calib_rows is 0, or train is too small to carve them); "
            "ikd tune scores every trial on them"
        )
    metrics = list(prep.info["metrics"])
    name = opts.study_name or study_name(cfg, space, table.read_key(prep_dir))
    objective = Objective(
        cfg, space, prep_dir, out, metrics[0], measure="student.layers" in space.keys or opts.min_quality is not None
    )
    if table.needs(cfg, "distill", "teacher"):
        objective.teacher(cfg)  # adapt once, before the first trial
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from here instead
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        # a smaller student is a frontier candidate even when it scores less: no pruning when latency counts
        pruner=optuna.pruners.NopPruner() if objective.measure else optuna.pruners.MedianPruner(n_startup_trials=2),
    )
    before = len(study.trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if done:  # a resumed study: "best so far" counts the earlier trials
        best = max(done, key=lambda t: t.value)
        objective.best = (float(best.value), best.number)
    log.info(
        "tune: study %s (%s), %d trials so far; %d more over %s; objective calib %s on %d rows",
        name,
        storage,
        before,
        opts.trials,
        ", ".join(space.keys) or "(fixed values only)",
        metrics[0],
        calib_rows,
    )
    study.optimize(objective, n_trials=opts.trials, timeout=opts.timeout, catch=(IkdError,))
    teacher = any(table.needs(space.config(cfg, v), "distill", "teacher") for v in _strategy_probes(space))
    return report.write(study, cfg, space, out, metrics, calib_rows, opts, teacher)


def _strategy_probes(space: Space) -> list[dict[str, Any]]:
    """Values that decide whether a trial needs the adapted teacher: the fixed keys with each strategy choice."""
    choices = next((p.choices for p in space.params if p.key == "distill.strategy"), ())
    return [{**space.fixed, "distill.strategy": c} for c in choices] or [space.fixed]


class Objective:
    """One trial: the config with the trial's values, the distill step into ``<out>/trial``, the calibration
    metric (reported per evaluation to the pruner), and with ``measure`` the student's latency."""

    def __init__(self, cfg: Config, space: Space, prep_dir: Path, out: Path, metric: str, measure: bool):
        self.cfg, self.space, self.prep_dir, self.out, self.metric = cfg, space, prep_dir, out, metric
        self.measure = measure
        self.scratch = out / "trial"
        self._teacher: Path | None = None
        self.best: tuple[float, int] | None = None

    def teacher(self, cfg: Config) -> Path | None:
        """The adapted teacher when ``cfg``'s strategy reads one: ``<out>/adapt``, adapted on first need."""
        from ikd.steps import runner, table

        if not table.needs(cfg, "distill", "teacher"):
            return None
        if self._teacher is None:
            runner.run_step(self.cfg, "adapt", {"data": self.prep_dir}, self.out / "adapt")
            self._teacher = self.out / "adapt"
        return self._teacher

    def __call__(self, trial) -> float:
        import optuna

        from ikd.steps import distill_student

        start = time.perf_counter()
        values = self.space.suggest(trial)
        trial.set_user_attr("values", values)
        try:
            cfg = self.space.config(self.cfg, values, f"trial {trial.number}")
            run_cfg = Config.from_dict({**cfg.to_dict(), "checkpoint": {"every": 0}})  # trials are not resumed
            inputs = {"data": self.prep_dir, "teacher": self.teacher(cfg)}
            evaluations = 0

            def watch(m: dict[str, float]) -> None:
                nonlocal evaluations
                trial.report(m[self.metric], evaluations)
                evaluations += 1
                if trial.should_prune():
                    raise optuna.TrialPruned(f"calib {self.metric} {m[self.metric]:.4f} after evaluation {evaluations}")

            result = distill_student.run(run_cfg, inputs, self.scratch, watch=watch)
            calib = result.metrics["calib"]
            trial.set_user_attr("calib", calib)
            if self.measure:
                trial.set_user_attr("latency", latency(cfg, self.prep_dir, self.scratch / "model"))
        except (optuna.TrialPruned, IkdError) as exc:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
            trial.set_user_attr("error", str(exc))
            state = "pruned" if isinstance(exc, optuna.TrialPruned) else "failed"
            log.info("tune: trial %d %s: %s (%s)%s", trial.number, shown(values), state, exc, self._best_text())
            raise
        seconds = round(time.perf_counter() - start, 2)
        trial.set_user_attr("seconds", seconds)
        value = float(calib[self.metric])
        if self.best is None or value > self.best[0]:
            self.best = (value, trial.number)
        speed = trial.user_attrs.get("latency")
        log.info(
            "tune: trial %d %s: calib %s=%.4f%s, %.1f s%s",
            trial.number,
            shown(values),
            self.metric,
            value,
            f", {speed['ms_per_sentence']:.2f} ms/sentence" if speed else "",
            seconds,
            self._best_text(),
        )
        return value

    def _best_text(self) -> str:
        return f"; best {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""


def latency(cfg: Config, prep_dir: Path, model_dir: Path, rows: int = 256, batch_size: int = 32) -> dict[str, float]:
    """The student's speed on calibration rows with torch: ms per sentence at ``batch_size`` (and at batch 1),
    its parameters and layers (``ikd evaluate``'s measurement, on calib instead of dev)."""
    from ikd.core import models
    from ikd.core.data import Prepared
    from ikd.steps.evaluate_models import throughput
    from ikd.steps.fit import side_columns
    from ikd.training import loop

    prep = Prepared.load(prep_dir)
    device = loop.select_device(cfg)
    model, _, meta = models.load(model_dir)
    model.to(device)
    calib = prep.splits["calib"]
    ds = calib.remove_columns(side_columns(calib, "teacher"))
    speed = throughput(model, ds, prep.info["pad_ids"]["student"], "student", batch_size, rows, device)
    return {
        "ms_per_sentence": round(1000.0 / speed["sentences_per_second"], 4),
        "batch_size": batch_size,
        "latency_ms_batch1": speed["latency_ms_batch1"],
        "parameters": models.count_parameters(model),
        "layers": meta["source"]["layers"],
    }
