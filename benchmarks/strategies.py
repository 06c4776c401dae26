"""Benchmark: every distillation strategy on one protocol, several seeds, measured side by side in one run.

Same prepared data, same adapted teacher, same student initialisation per seed, same budget of student
updates (``distill.max_steps``). Prints a table: dev metric mean ± std, step time and peak memory as
ratios to ``kd`` (teacher logits cached, its default), teacher/student passes per step.

    python benchmarks/strategies.py --quick --json out.json         # fast pass (minutes)
    python benchmarks/strategies.py --protocol quick --seeds 3        # the SST-2 quick protocol
    python benchmarks/strategies.py --protocol medium                 # + unlabeled transfer rows
    python benchmarks/strategies.py --protocol quick --student-layers 2   # larger capacity gap

Prepared data and the adapted teacher are kept in --work and reused by later runs with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Protocols: overrides of configs/quick.yaml. Budgets are student updates (max_steps), equal for all strategies.
# The protocols pin what they need of the base config, so that a change of configs/quick.yaml's recipe does not
# change what an earlier table measured (the smoke, quick and medium tables predate the transfer rows in quick.yaml).
_BEFORE_TRANSFER = ["data.transfer=none", "data.max_transfer_rows=null", "distill.lr=5e-5"]
PROTOCOLS = {
    # the fast pass: small slices and few updates, for checking that everything runs and what it costs
    "smoke": [
        *_BEFORE_TRANSFER,
        "data.max_train_rows=600",
        "data.max_dev_rows=400",
        "data.max_length=48",
        "data.quiz_rows=128",
        "adapt.epochs=1",
        "distill.max_steps=40",
        "distill.batch_size=16",
    ],
    # the SST-2 quick protocol of the README before transfer rows: 2,000 labeled rows, 2 epochs of 125 updates
    "quick": [*_BEFORE_TRANSFER, "distill.max_steps=250"],
    # a transfer set: 2,000 labeled rows plus 6,000 unlabeled rows of the rest of train, 1 pass over all
    "medium": [*_BEFORE_TRANSFER[2:], "data.transfer=rest", "data.max_transfer_rows=6000", "distill.max_steps=500"],
    # the transfer protocol: the teacher adapted on the same 2,000 labeled rows, every other train row (about
    # 64,000, deduplicated against dev, quiz and calibration texts) as unlabeled transfer rows scored once by the
    # teacher (shared by all runs); 3,000 updates of 32 rows (about 1.5 passes). --set data.max_transfer_rows=N
    # for a smaller slice of it (the table header says how many rows a run had)
    "transfer": [
        "data.transfer=rest",
        "data.max_transfer_rows=null",
        "distill.max_steps=3000",
        "distill.batch_size=32",
        "distill.lr=1e-4",
    ],
}
#: Two-sided 95 % Student t quantiles by degrees of freedom (seeds - 1), for the mean's confidence interval.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
# Strategy variants: name -> distill overrides. ":fast" rows use the levers of ALGORITHMS.md; ":head" rows
# train only the teacher's head (body frozen, pooled features cached) at a head's usual learning rate (1e-3,
# chosen before any run: at the body's 1e-5 the head barely moves and the student matches kd seed for seed).
VARIANTS = {
    "finetune": ["distill.strategy=finetune"],
    "kd": ["distill.strategy=kd"],
    "kd:live": ["distill.strategy=kd", "distill.cache_teacher_outputs=false"],
    "kd+hidden": ["distill.strategy=kd", "distill.hidden_weight=10.0"],
    "kd+hidden:pkd": ["distill.strategy=kd", "distill.hidden_weight=10.0", "distill.hidden_loss=pkd"],
    "kd+relation": ["distill.strategy=kd", "distill.hidden_weight=10.0", "distill.hidden_loss=relation"],
    "kd+hidden:w1": ["distill.strategy=kd", "distill.hidden_weight=1.0"],
    "kd+relation:w1": ["distill.strategy=kd", "distill.hidden_weight=1.0", "distill.hidden_loss=relation"],
    # recipe points of kd (not in the default set): the manual search behind configs/quick.yaml's recipe
    "kd:lr2e-4": ["distill.strategy=kd", "distill.lr=2e-4"],
    "kd:T1": ["distill.strategy=kd", "distill.temperature=1.0"],
    "prokt": ["distill.strategy=prokt"],
    "metadistil": ["distill.strategy=metadistil"],
    "ikd": ["distill.strategy=ikd"],
    "metadistil:fast": [
        "distill.strategy=metadistil",
        "distill.metadistil.teacher_scope=top:1",
        "distill.metadistil.teacher_every=4",
    ],
    "ikd:fast": ["distill.strategy=ikd", "distill.ikd.teacher_scope=top:1", "distill.ikd.teacher_every=4"],
    "metadistil:head": [
        "distill.strategy=metadistil",
        "distill.metadistil.teacher_scope=head",
        "distill.metadistil.teacher_every=2",
        "distill.metadistil.teacher_lr=1e-3",
    ],
    "ikd:head": [
        "distill.strategy=ikd",
        "distill.ikd.teacher_scope=head",
        "distill.ikd.teacher_every=2",
        "distill.ikd.teacher_lr=1e-3",
    ],
    # metadistil:head at half the teacher updates: a pilot every 4th step, within 2x a kd step (issue 15's cost bar)
    "metadistil:head4": [
        "distill.strategy=metadistil",
        "distill.metadistil.teacher_scope=head",
        "distill.metadistil.teacher_every=4",
        "distill.metadistil.teacher_lr=1e-3",
    ],
    "talking": ["distill.strategy=talking"],
    # meta-gradient modes, for their cost (not in the default set): python benchmarks/strategies.py --variants ...
    "metadistil:exact": ["distill.strategy=metadistil", "distill.metadistil.meta_grad=exact"],
    "metadistil:finite_diff": ["distill.strategy=metadistil", "distill.metadistil.meta_grad=finite_diff"],
    # mixed precision of the loop (loss-only strategies): autocast bf16 (emulated on CPUs without AVX-512 BF16)
    "kd:bf16": ["distill.strategy=kd", "distill.precision=bf16"],
    "talking:bf16": ["distill.strategy=talking", "distill.precision=bf16"],
}
DEFAULT_VARIANTS = [
    v for v in VARIANTS if not v.endswith((":exact", ":finite_diff", ":bf16")) and not v.startswith(("kd:lr", "kd:T"))
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"), help="SST-2 data folder")
    p.add_argument("--params", default=str(ROOT / "configs" / "quick.yaml"), help="base config")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="quick")
    p.add_argument("--quick", action="store_true", help="the fast pass: --protocol smoke")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS)
    )
    p.add_argument(
        "--define",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="one more variant: its name, then its config overrides, e.g. --define kd:tuned distill.strategy=kd "
        "distill.lr=1.2e-4 (the values of an `ikd tune` study's best trial); repeatable",
    )
    p.add_argument("--student-layers", type=int, help="truncate the student to its first N layers")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench"), help="folder for data, teacher and runs")
    p.add_argument(
        "--teacher",
        help="an adapted teacher folder (ikd adapt) to use instead of adapting one, e.g. to compare data settings "
        "(transfer rows, data.augment) with one teacher; it must have been adapted on the same labeled rows",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the table (Markdown) here")
    p.add_argument("--reference", default="kd", help="the variant paired differences are taken against")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import logging

    logging.getLogger("ikd").setLevel(logging.WARNING)
    import numpy as np

    from ikd import steps
    from ikd.config import Config
    from ikd.core.data import Prepared
    from ikd.core.metrics import compute, write_json
    from ikd.training import loop

    if args.teacher and not (Path(args.teacher) / "model").is_dir():
        print(f"strategies.py: --teacher {args.teacher}: not an adapted teacher (no model/)", file=sys.stderr)
        return 2
    protocol = "smoke" if args.quick else args.protocol
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name, *overrides in args.define:
        if name in VARIANTS or not overrides or any("=" not in o for o in overrides):
            print(f"strategies.py: --define {name}: give a new variant name, then KEY=VALUE overrides", file=sys.stderr)
            return 2
        VARIANTS[name] = overrides
        variants.append(name)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"strategies.py: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    # epochs never bind: every strategy gets exactly max_steps updates, with or without transfer rows
    base = [*PROTOCOLS[protocol], "distill.epochs=1000", f"threads={args.threads}", *args.overrides]
    if args.student_layers:
        base += [f"student.layers={args.student_layers}", "student.pooling=mean"]
    cfg = Config.load(args.params, base)
    work = Path(args.work) / f"{protocol}-{cfg.section_hash('data', 'teacher', 'adapt')}"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("IKD_CACHE", str(Path(args.work) / "cache"))  # teacher scores shared by every run
    t0 = time.perf_counter()
    if _key(work / "prep") != steps.step_key(cfg, "prepare", {"source": _source_key(cfg, args.data)}):
        steps.prepare(cfg, args.data, work / "prep")
    if args.teacher:  # the given teacher, linked into the work folder so that every run and marker names it
        given = Path(args.teacher).resolve()
        link = work / "teacher"
        if link.is_symlink():
            link.unlink()
        elif link.exists() and link.resolve() != given:
            print(f"strategies.py: {link} holds another adapted teacher; use another --work", file=sys.stderr)
            return 2
        if not link.exists():
            link.symlink_to(given, target_is_directory=True)
    elif _key(work / "teacher") != steps.step_key(cfg, "adapt", {"data": steps.read_key(work / "prep")}):
        steps.adapt(cfg, work / "prep", work / "teacher")
    print(f"data + teacher ready in {time.perf_counter() - t0:.0f} s ({work})", file=sys.stderr)
    prep = Prepared.load(work / "prep")
    metric = prep.info["metrics"][0]
    dev_y = np.asarray(prep.splits["dev"]["label"])
    results: dict[str, dict] = {}
    for name in variants:
        rows = []
        for seed in range(args.seeds):
            run_cfg = Config.load(args.params, [*base, *VARIANTS[name], f"seed={seed}"])
            layers = f"-L{args.student_layers}" if args.student_layers else ""  # the teacher is shared, runs not
            out = work / "runs" / f"{name.replace(':', '_')}{layers}-s{seed}"
            done = _finished_run(run_cfg, work, out)
            if done is None:
                started = time.perf_counter()
                train = steps.distill(run_cfg, work / "prep", work / "teacher", out).metrics["train"]
                train["run_seconds"] = round(time.perf_counter() - started, 1)  # scoring (first run only) included
                write_json(out / "bench.json", {"marker": _run_marker(run_cfg, work), "train": train})
            else:  # the same run (config, data, teacher, code version) finished earlier: reuse it
                train = done
            from ikd.core import models

            student = models.load(out / "model")[0]
            dev = prep.splits["dev"].remove_columns(
                [c for c in prep.splits["dev"].column_names if c.startswith("teacher_")]
            )
            loader = loop.make_loader(
                dev, {"student": prep.info["pad_ids"]["student"]}, 64, False, 0, sort_by_length=True
            )
            import torch

            logits = loop.predict_outputs(student, loader, "student", torch.device("cpu"))["logits"]
            pred = logits.argmax(-1).numpy()
            score = compute([metric], dev_y, pred)[metric]
            t = train
            rows.append(
                {
                    "seed": seed,
                    metric: score,
                    "step_time_ms": t["step_time_ms"],
                    "wall_seconds": t.get("run_seconds", t["wall_seconds"]),
                    "peak_memory_bytes": t["peak_memory_bytes"],
                    "counts_per_step": t["counts_per_step"],
                }
            )
            print(f"{name:>16} seed {seed}: {metric} {score:.4f}, {t['step_time_ms']:.0f} ms/step", file=sys.stderr)
        scores = [r[metric] for r in rows]
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        results[name] = {
            "metric": metric,
            "metric_mean": statistics.fmean(scores),
            "metric_std": std,
            "metric_ci95": T95.get(len(scores) - 1, 1.96) * std / len(scores) ** 0.5 if len(scores) > 1 else None,
            "seeds": scores,
            "wall_seconds": [r["wall_seconds"] for r in rows],
            "step_time_ms": statistics.fmean(r["step_time_ms"] for r in rows),
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows),
            "counts_per_step": rows[-1]["counts_per_step"],
        }
    ref, live = results.get("kd"), results.get("kd:live")
    for r in results.values():
        r["step_time_ratio_vs_kd"] = round(r["step_time_ms"] / ref["step_time_ms"], 3) if ref else None
        r["peak_mem_ratio_vs_kd"] = round(r["peak_memory_bytes"] / ref["peak_memory_bytes"], 3) if ref else None
        # kd with a live teacher forward each step: the 1.0 of ALGORITHMS.md's cost table
        r["step_time_ratio_vs_kd_live"] = round(r["step_time_ms"] / live["step_time_ms"], 3) if live else None
    reference = results.get(args.reference)
    for r in results.values():
        r["paired_vs_reference"] = paired(r["seeds"], reference["seeds"]) if reference else None
    teacher_score = _teacher_score(prep, work, metric, dev_y)
    majority = float(np.bincount(dev_y).max() / len(dev_y))
    for r in results.values():
        r["teacher"], r["retention"] = teacher_score, r["metric_mean"] / teacher_score
    header = (
        f"protocol {protocol}, {args.seeds} seeds, teacher {cfg.teacher.name} ({metric} {teacher_score:.4f}), "
        f"majority class {majority:.4f}, "
        f"student {cfg.student.name}{f' cut to {args.student_layers} layers' if args.student_layers else ''}; "
        f"{len(prep.splits['train'])} labeled + {len(prep.splits['transfer'])} transfer rows, "
        f"{len(dev_y)} dev rows; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} threads, CPU; {time.strftime('%Y-%m-%d')}"
    )
    text = table(results, metric, header, args.reference)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        meta = {"header": header, "protocol": protocol, "overrides": base, "reference": args.reference}
        Path(args.json).write_text(json.dumps({"run": meta, "results": results}, indent=2))
    return 0


def _source_key(cfg, data: str) -> str:
    from ikd.steps import table

    return json.dumps(table.source_key(cfg, table.Source(data)), sort_keys=True)


def _key(folder: Path) -> str | None:
    from ikd import steps
    from ikd.errors import IkdError

    try:
        return steps.read_key(folder)
    except IkdError:
        return None


def _run_marker(run_cfg, work: Path) -> dict:
    import ikd
    from ikd.steps import table

    return {
        "sections": run_cfg.section_hash(*table.STEPS["distill"].sections),
        "data": _key(work / "prep"),
        "teacher": _key(work / "teacher"),
        "ikd_version": ikd.__version__,
    }


def _finished_run(run_cfg, work: Path, out: Path) -> dict | None:
    """The train metrics of an earlier identical run in ``out`` (same marker), else None."""
    from ikd.core.metrics import read_json

    f = out / "bench.json"
    if not f.is_file() or not (out / "model").is_dir():
        return None
    saved = read_json(f)
    return saved["train"] if saved.get("marker") == _run_marker(run_cfg, work) else None


def paired(scores: list[float], reference: list[float], resamples: int = 10000) -> dict | None:
    """Seed-by-seed difference to the reference variant (same seed: same data order and student start): mean and
    a percentile bootstrap 95 % interval over seeds (seeded, so that the table is reproducible)."""
    import numpy as np

    n = min(len(scores), len(reference))
    if n < 2:
        return None
    d = np.asarray(scores[:n]) - np.asarray(reference[:n])
    rng = np.random.default_rng(0)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci95": [float(low), float(high)], "per_seed": d.tolist(), "seeds": n}


def _teacher_score(prep, work: Path, metric: str, dev_y) -> float:
    import torch

    from ikd.core import models
    from ikd.core.metrics import compute
    from ikd.training import loop

    teacher = models.load(work / "teacher" / "model")[0]
    dev = prep.splits["dev"].remove_columns([c for c in prep.splits["dev"].column_names if c.startswith("student_")])
    loader = loop.make_loader(dev, {"teacher": prep.info["pad_ids"]["teacher"]}, 64, False, 0, sort_by_length=True)
    pred = loop.predict_outputs(teacher, loader, "teacher", torch.device("cpu"))["logits"].argmax(-1).numpy()
    return compute([metric], dev_y, pred)[metric]


def table(results: dict[str, dict], metric: str, header: str, reference: str = "kd") -> str:
    lines = [
        header,
        "",
        f"| strategy | {metric} mean ± 95 % CI (std) | of teacher | seeds | "
        f"vs {reference}: paired mean [95 % bootstrap CI] | run s (mean) | ms/step | step time × kd | "
        "× kd:live | peak mem × kd | passes per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        passes = ", ".join(f"{k} {v:g}" for k, v in r["counts_per_step"].items())
        seeds = " ".join(f"{s:.3f}" for s in r["seeds"])
        ci = f" ± {r['metric_ci95']:.4f}" if r.get("metric_ci95") is not None else ""
        p = r.get("paired_vs_reference")
        vs = "—" if name == reference or p is None else f"{p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]"
        cells = [
            f"{r['metric_mean']:.4f}{ci} ({r['metric_std']:.4f})",
            f"{100 * r['retention']:.1f} %",
            seeds,
            vs,
            f"{statistics.fmean(r['wall_seconds']):.0f}",
            f"{r['step_time_ms']:.0f}",
            r["step_time_ratio_vs_kd"],
            r["step_time_ratio_vs_kd_live"],
            r["peak_mem_ratio_vs_kd"],
            passes,
        ]
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
