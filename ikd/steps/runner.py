"""``ikd run``: every step of the table in order, into ``<out>/<step>/``.

A step whose output folder already holds a finished result with the same key (config sections and inputs'
keys, :func:`ikd.steps.table.input_keys`, the same function the step itself uses) is skipped. The run's
``metrics.json`` gathers the figures users look at first; its ``report.md`` (pictures in ``plots/``) and
``report.html`` the evaluation, the ONNX files and the pictures (:mod:`ikd.steps.report`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ikd.config import Config
from ikd.core.metrics import read_json, write_json
from ikd.steps import report, table
from ikd.steps.job import JobOptions

log = logging.getLogger("ikd")


def _up_to_date(folder: Path, key: str) -> bool:
    f = folder / "step.json"
    return f.is_file() and read_json(f).get("key") == key


def run(
    cfg: Config,
    source: str,
    out: Path,
    force: bool = False,
    dvc_repo: str | None = None,
    dvc_rev: str | None = None,
    job: JobOptions | None = None,
    live: Path | None = None,
) -> dict[str, Any]:
    """Run every step (skipping up-to-date ones unless ``force``). ``source`` is a local folder or a hub id, or
    with ``dvc_repo`` a path in that DVC repository at ``dvc_rev``. ``job``: checkpoints and Pushgateway of the
    training steps (its checkpoint_dir is a base folder: <dir>/<step>). ``live``: DVCLive base folder, each step
    that runs logs into <live>/<step> as ``ikd <step> --live`` does. Returns the run's metrics dict."""
    out = Path(out)
    job = job or JobOptions()
    folders = {name: out / name for name in table.NAMES}
    # every input of every step: the source, else the folder of the step that produces that kind
    inputs: dict[str, Any] = {
        "source": table.Source(str(source), dvc_repo, dvc_rev),
        **{kind: folders[step] for kind, step in table.PRODUCED_BY.items()},
    }
    status: dict[str, Any] = {}
    fresh = not out.exists()
    try:
        for name, step in table.STEPS.items():
            given: dict[str, Any] = {
                k: inputs[k] for k in step.inputs if k == "source" or table.needs(cfg, name, k, True)
            }
            status[name] = run_step(cfg, name, given, folders[name], force, job, live and Path(live) / name)
    except BaseException:
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed in its first step leaves no empty run folder behind
        raise
    result = summarize(folders, cfg.distill.strategy, status)
    write_json(out / "metrics.json", result)
    if any(s["status"] == "ran" for s in status.values()) or not (out / "report.html").is_file():
        log.info("report: %s", report.run_report(out, folders, result))  # else the one of the same outputs stays
    return result


def run_step(
    cfg: Config,
    name: str,
    given: dict[str, Any],
    folder: Path,
    force: bool = False,
    job: JobOptions | None = None,
    live: Path | None = None,
) -> dict[str, Any]:
    """Run step ``name`` with inputs ``given`` into ``folder`` unless ``folder`` already holds a finished output
    with the same key (or ``force``). ``job``: checkpoints and Pushgateway (its checkpoint_dir is a base folder:
    <dir>/<step>); ``live``: the step's DVCLive folder. Returns the step's status: ``{"status": "skipped"}`` or
    ``{"status": "ran", "seconds": s}``."""
    job = job or JobOptions()
    key = table.step_key(cfg, name, table.input_keys(cfg, name, given))
    if not force and _up_to_date(folder, key):
        log.info("%s: up to date (%s), skipped", name, folder)
        return {"status": "skipped"}
    log.info("%s: running -> %s", name, folder)
    start = time.perf_counter()
    opts = replace(job, checkpoint_dir=job.checkpoint_dir / name) if job.checkpoint_dir else job
    table.call(cfg, name, given, folder, live, opts=opts)
    status = {"status": "ran", "seconds": round(time.perf_counter() - start, 2)}
    log.info("%s: done in %.1f s", name, status["seconds"])
    return status


def summarize(d: dict[str, Path], strategy: str, status: dict[str, Any]) -> dict[str, Any]:
    """The run's ``metrics.json`` from the step folders ``d`` (step name -> folder)."""
    ev = read_json(d["evaluate"] / "metrics.json")
    ex = read_json(d["export"] / "metrics.json")
    names = read_json(d["prepare"] / "schema.json")["metrics"]
    return {
        "task": ev["task"],
        "strategy": strategy,
        "teacher": {n: ev["teacher"][n] for n in names},
        "student": {n: ev["student"][n] for n in names},
        **({"majority": {n: ev["majority"][n] for n in names}} if "majority" in ev else {}),
        "export": {
            "max_abs_diff": ex["max_abs_diff"],
            "path": str((d["export"] / ex["path"]).resolve()),
            "dev": ex["dev"],
            **{k: ex[k] for k in ("calib", "agreement", "judged_on", "optimized", "int8", "served") if k in ex},
            **({"int8_guard": {k: ex["int8_guard"][k] for k in ("kept", "reason")}} if "int8_guard" in ex else {}),
        },
        "cost": {
            "teacher_sentences_per_second": ev["teacher"]["sentences_per_second"],
            "student_sentences_per_second": ev["student"]["sentences_per_second"],
            **ev.get("ratios", {}),
        },
        "steps": status,
    }
