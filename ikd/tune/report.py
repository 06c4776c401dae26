"""What ``ikd tune`` writes into its folder once the trials have run:

- ``trials.json`` / ``trials.md``: every trial of the study (values, calibration metric, wall seconds, state);
- ``best-params.yaml``: the whole config with the chosen trial's values, for ``ikd run --params``;
- ``frontier.json`` / ``frontier.md``: when latency was measured, the trials no other trial beats on both the
  calibration metric and the latency (``--min-quality X`` picks the fastest of those reaching X);
- ``base-params.yaml`` and ``katib-experiment.yaml``: the same search as a Katib Experiment (docs/tuning.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from ikd.config import Config
from ikd.core.metrics import write_json
from ikd.errors import IkdError
from ikd.integrations import katib
from ikd.tune.space import Space, shown

log = logging.getLogger("ikd")


def rows(study: Any) -> list[dict[str, Any]]:
    """One record per trial of ``study`` (an Optuna study), in trial order."""
    out = []
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        out.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "values": t.user_attrs.get("values", dict(t.params)),
                "value": t.value,
                "calib": t.user_attrs.get("calib"),
                "last_evaluation": t.intermediate_values[steps[-1]] if steps else None,
                "seconds": t.user_attrs.get("seconds"),
                "latency": t.user_attrs.get("latency"),
                "error": t.user_attrs.get("error"),
            }
        )
    return out


def finished(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["state"] == "complete" and r["value"] is not None]


def frontier(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished trials with a latency that no other beats on both the metric (higher) and the latency
    (lower), fastest first."""
    timed = [r for r in finished(records) if r["latency"]]

    def beaten(r: dict[str, Any]) -> bool:
        v, ms = r["value"], r["latency"]["ms_per_sentence"]
        return any(
            o["value"] >= v
            and o["latency"]["ms_per_sentence"] <= ms
            and (o["value"] > v or o["latency"]["ms_per_sentence"] < ms)
            for o in timed
        )

    return sorted((r for r in timed if not beaten(r)), key=lambda r: (r["latency"]["ms_per_sentence"], -r["value"]))


def choose(records: list[dict[str, Any]], min_quality: float | None) -> tuple[dict[str, Any], str]:
    """The trial whose values go into best-params.yaml, and why: the best calibration metric, or with
    ``min_quality`` the fastest trial reaching it (the best when none does)."""
    done = finished(records)
    if not done:
        raise IkdError("no trial finished (see trials.md: each failed or pruned trial says why)")
    best = max(done, key=lambda r: (r["value"], -r["trial"]))
    if min_quality is None:
        return best, "best calibration metric"
    fast = [r for r in done if r["latency"] and r["value"] >= min_quality]
    if not fast:
        log.warning(
            "tune: no trial reaches --min-quality %g; taking the best one (trial %d)", min_quality, best["trial"]
        )
        return best, f"best calibration metric (none reaches {min_quality:g})"
    pick = min(fast, key=lambda r: (r["latency"]["ms_per_sentence"], -r["value"]))
    return pick, f"fastest with calibration metric >= {min_quality:g}"


def _cell(r: dict[str, Any]) -> str:
    if r["value"] is not None:
        return f"{r['value']:.4f}"
    if r["last_evaluation"] is not None:
        return f"({r['last_evaluation']:.4f} when {r['state']})"
    return "-"


def trials_md(records: list[dict[str, Any]], metric: str, title: str) -> str:
    timed = any(r["latency"] for r in records)
    cols = ["trial", "overrides", f"calib {metric}", "wall s", "state"] + (["ms/sentence (batch 32)"] if timed else [])
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in records:
        cells = [
            str(r["trial"]),
            f"`{shown(r['values'])}`" if r["values"] else "-",
            _cell(r),
            f"{r['seconds']:.1f}" if r["seconds"] is not None else "-",
            r["state"] + (f": {r['error']}" if r["error"] and r["state"] == "fail" else ""),
        ]
        if timed:
            cells.append(f"{r['latency']['ms_per_sentence']:.2f}" if r["latency"] else "-")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def frontier_md(front: list[dict[str, Any]], metric: str) -> str:
    lines = [
        "# Accuracy vs latency: the Pareto frontier",
        "",
        f"Trials that no other trial beats on both calib {metric} and latency (torch, calibration rows), fastest "
        "first. `ikd tune --min-quality X` picks the fastest one reaching X.",
        "",
        f"| trial | layers | parameters | ms/sentence (batch 32) | ms (batch 1) | calib {metric} | overrides |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in front:
        q = r["latency"]
        lines.append(
            f"| {r['trial']} | {q['layers']} | {q['parameters']:,} | {q['ms_per_sentence']:.2f} | "
            f"{q['latency_ms_batch1']:.2f} | {r['value']:.4f} | `{shown(r['values'])}` |"
        )
    return "\n".join(lines) + "\n"


def write(
    study: Any,
    cfg: Config,
    space: Space,
    out: Path,
    metrics: list[str],
    calib_rows: int,
    opts: Any,
    teacher: bool,
) -> dict[str, Any]:
    """Write every output of the study into ``out``; returns the summary (raises IkdError, after writing the
    trial tables, when no trial finished)."""
    records = rows(study)
    metric = metrics[0]
    write_json(
        out / "trials.json",
        {
            "study": study.study_name,
            "objective": f"calib {metric}",
            "direction": "maximize",
            "calib_rows": calib_rows,
            "space": {p.key: p.describe() for p in space.params},
            "fixed": space.fixed,
            "trials": records,
        },
    )
    (out / "trials.md").write_text(
        trials_md(records, metric, f"ikd tune: study {study.study_name} ({calib_rows} calibration rows)")
    )
    (out / katib.BASE_PARAMS).write_text(cfg.to_yaml())
    experiment = katib.experiment(cfg, space, study.study_name, metrics, opts.trials, opts.parallel, teacher)
    (out / "katib-experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    front = frontier(records)
    if any(r["latency"] for r in records):
        write_json(out / "frontier.json", {"metric": f"calib {metric}", "frontier": front})
        (out / "frontier.md").write_text(frontier_md(front, metric))
    pick, why = choose(records, opts.min_quality)
    best_cfg = space.config(cfg, pick["values"], f"trial {pick['trial']}")
    header = (
        f"# ikd tune, study {study.study_name}: trial {pick['trial']} ({why}), calib {metric} "
        f"{pick['value']:.4f} on {calib_rows} rows\n# overrides: {shown(pick['values'])}\n"
    )
    (out / "best-params.yaml").write_text(header + best_cfg.to_yaml())
    states: dict[str, int] = {}
    for r in records:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {
        "study": study.study_name,
        "trials": states,
        "chosen": {k: pick[k] for k in ("trial", "values", "calib", "seconds", "latency") if pick[k] is not None},
        "why": why,
        "best_params": str((out / "best-params.yaml").resolve()),
        "frontier": [r["trial"] for r in front],
    }
