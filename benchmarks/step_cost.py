"""Benchmark: what a distillation step costs, strategy against strategy, measured side by side.

Each variant (the names of ``benchmarks/strategies.py``, e.g. ``kd`` and ``metadistil:head4``) runs ``ikd distill``
for ``--steps`` updates on the same prepared data and adapted teacher, in turns (A B A B ...: ``--rounds`` rounds,
which one goes first alternating), so that a drift of the machine's speed hits every variant alike. A step's time is
the loop's own median (``step_time_ms`` of the run's metrics.json: the updates only, without loading, teacher
scoring or evaluation). The table gives each round's figure, the median, and the ratio to the reference variant
paired round by round.

    python benchmarks/step_cost.py --data runs/quick/prepare --teacher runs/quick/adapt \\
        --variants kd,metadistil:head4 --steps 200 --rounds 2 --md out.md --json out.json

Run it on an otherwise idle machine: the ratios are only as good as the rounds are alike (the table prints the
spread). Teacher outputs come from the shared cache (``$IKD_CACHE``) and are scored there first when missing, which
the step times leave out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from strategies import VARIANTS  # noqa: E402  (the variants every strategy table uses)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared data folder (ikd prepare)")
    p.add_argument("--teacher", required=True, help="adapted teacher folder (ikd adapt)")
    p.add_argument("--params", default=str(ROOT / "configs" / "quick.yaml"), help="base config")
    p.add_argument("--variants", default="kd,metadistil:head4", help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--reference", default="kd", help="the variant the ratios are taken against")
    p.add_argument("--steps", type=int, default=200, help="updates per run (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each variant, in turns (default 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the table (Markdown) here")
    return p.parse_args(argv)


def run_once(args, name: str, out: Path) -> dict:
    """One ``ikd distill`` run of variant ``name`` into ``out``; its loop figures."""
    sets = [*args.overrides, *VARIANTS[name], f"distill.max_steps={args.steps}", "distill.eval_every=never"]
    cmd = [sys.executable, "-m", "ikd", "distill", "-q", "--params", args.params, "--data", args.data]
    cmd += ["--teacher", args.teacher, "--out", str(out), "--restart"]
    for s in sets:
        cmd += ["--set", s]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step_cost.py: {name}: ikd distill failed ({done.returncode}):\n{done.stderr[-2000:]}")
    train = json.loads((out / "metrics.json").read_text())["train"]
    return {
        "step_time_ms": train["step_time_ms"],
        "steps": train["steps"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "counts_per_step": train.get("counts_per_step", {}),
        "peak_memory_bytes": train.get("peak_memory_bytes"),
    }


def table(results: dict[str, list[dict]], reference: str, header: str) -> str:
    ref = [r["step_time_ms"] for r in results[reference]]
    rounds = len(ref)
    cols = " | ".join(f"round {i + 1} ms" for i in range(rounds))
    lines = [
        header,
        "",
        f"| variant | {cols} | median ms/step | × {reference} (paired by round: median [min, max]) | passes per step |",
        "|---|" + "---|" * rounds + "---|---|---|",
    ]
    for name, runs in results.items():
        times = [r["step_time_ms"] for r in runs]
        ratios = [t / b for t, b in zip(times, ref, strict=True)]
        passes = ", ".join(f"{k} {v:g}" for k, v in sorted(runs[0]["counts_per_step"].items()))
        lines.append(
            f"| {name} | "
            + " | ".join(f"{t:.1f}" for t in times)
            + f" | {statistics.median(times):.1f} | {statistics.median(ratios):.2f} "
            f"[{min(ratios):.2f}, {max(ratios):.2f}] | {passes} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.reference not in variants:
        print(
            f"step_cost.py: unknown variant(s) {', '.join(unknown) or '-'} or --reference {args.reference} not among "
            f"--variants; known: {', '.join(VARIANTS)}",
            file=sys.stderr,
        )
        return 2
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="ikd-step-cost-") as tmp:
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for name in order:
                res = run_once(args, name, Path(tmp) / f"{name.replace(':', '_')}-{r}")
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['step_time_ms']:.1f} ms/step", file=sys.stderr, flush=True)
    header = (
        f"step cost, {args.steps} updates per run, {args.rounds} rounds in turns; base {Path(args.params).name} "
        f"{' '.join(args.overrides)}; machine: {platform.machine()}, {os.cpu_count()} cores, CPU; "
        f"{time.strftime('%Y-%m-%d')}"
    )
    text = table(results, args.reference, header)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
