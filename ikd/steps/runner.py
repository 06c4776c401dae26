"""``ikd run``: prepare -> adapt -> distill -> evaluate -> export into ``<out>/<step>/``.

A step whose output folder already holds a finished result for the same config sections and the same
inputs is skipped. The run's ``metrics.json`` gathers the figures users look at first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ikd import steps
from ikd.config import Config
from ikd.core.metrics import read_json, write_json
from ikd.steps.job import JobOptions
from ikd.strategies import STRATEGIES

log = logging.getLogger("ikd")


def _up_to_date(folder: Path, key: str) -> bool:
    f = folder / "step.json"
    return f.is_file() and read_json(f).get("key") == key


def run(cfg: Config, source: str, out: Path, force: bool = False, dvc_repo: str | None = None,
        dvc_rev: str | None = None, job: JobOptions | None = None) -> dict[str, Any]:
    """Run every step (skipping up-to-date ones unless ``force``). ``source`` is a local folder or a hub id, or
    with ``dvc_repo`` a path in that DVC repository at ``dvc_rev``. ``job``: checkpoints and Pushgateway of the
    training steps (its checkpoint_dir is a base folder: <dir>/<step>). Returns the run's metrics dict."""
    out = Path(out)
    job = job or JobOptions()

    def opts(step: str) -> JobOptions:
        return replace(job, checkpoint_dir=job.checkpoint_dir / step) if job.checkpoint_dir else job

    d = {s: out / s for s in steps.STEPS}
    uses_teacher = STRATEGIES[cfg.distill.strategy].uses_teacher
    plan = [
        ("prepare", lambda: {"source": _source_key(cfg, source, dvc_repo, dvc_rev)},
         lambda: steps.prepare(cfg, source, d["prepare"], dvc_repo=dvc_repo, dvc_rev=dvc_rev)),
        ("adapt", lambda: {"data": steps.read_key(d["prepare"])},
         lambda: steps.adapt(cfg, d["prepare"], d["adapt"], opts=opts("adapt"))),
        ("distill", lambda: {"data": steps.read_key(d["prepare"]),
                             **({"teacher": steps.read_key(d["adapt"])} if uses_teacher else {})},
         lambda: steps.distill(cfg, d["prepare"], d["adapt"] if uses_teacher else None, d["distill"],
                               opts=opts("distill"))),
        ("evaluate", lambda: {"data": steps.read_key(d["prepare"]), "student": steps.read_key(d["distill"]),
                              "teacher": steps.read_key(d["adapt"])},
         lambda: steps.evaluate(cfg, d["prepare"], d["adapt"], d["distill"], d["evaluate"])),
        ("export", lambda: {"data": steps.read_key(d["prepare"]), "student": steps.read_key(d["distill"])},
         lambda: steps.export(cfg, d["prepare"], d["distill"], d["export"])),
    ]
    status: dict[str, Any] = {}
    fresh = not out.exists()
    try:
        for name, inputs, call in plan:
            key = steps.step_key(cfg, name, inputs())
            if not force and _up_to_date(d[name], key):
                log.info("%s: up to date (%s), skipped", name, d[name])
                status[name] = {"status": "skipped"}
                continue
            log.info("%s: running -> %s", name, d[name])
            start = time.perf_counter()
            call()
            status[name] = {"status": "ran", "seconds": round(time.perf_counter() - start, 2)}
            log.info("%s: done in %.1f s", name, status[name]["seconds"])
    except BaseException:
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed in its first step leaves no empty run folder behind
        raise
    result = summarize(d, cfg.distill.strategy, status)
    write_json(out / "metrics.json", result)
    return result


def summarize(d: dict[str, Path], strategy: str, status: dict[str, Any]) -> dict[str, Any]:
    """The run's ``metrics.json`` from the step folders ``d`` (step name -> folder)."""
    ev = read_json(d["evaluate"] / "metrics.json")
    ex = read_json(d["export"] / "metrics.json")
    names = read_json(d["prepare"] / "schema.json")["metrics"]
    return {"task": ev["task"], "strategy": strategy,
            "teacher": {n: ev["teacher"][n] for n in names}, "student": {n: ev["student"][n] for n in names},
            "export": {"max_abs_diff": ex["max_abs_diff"], "path": str((d["export"] / ex["path"]).resolve()),
                       "dev": ex["dev"], **{k: ex[k] for k in ("optimized", "int8", "served") if k in ex}},
            "cost": {"teacher_sentences_per_second": ev["teacher"]["sentences_per_second"],
                     "student_sentences_per_second": ev["student"]["sentences_per_second"], **ev.get("ratios", {})},
            "steps": status}


def _source_key(cfg: Config, source: str, dvc_repo: str | None, dvc_rev: str | None) -> str:
    import json

    if dvc_repo:
        from ikd.integrations import dvc
        return json.dumps(steps.dvc_fingerprint(dvc.resolve(dvc_repo, source, dvc_rev)), sort_keys=True)
    return json.dumps(steps.source_fingerprint(cfg, source), sort_keys=True)
