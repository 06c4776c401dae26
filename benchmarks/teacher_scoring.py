"""Benchmark: teacher scoring backends side by side on the same rows, in one run.

PyTorch (the loop's forward, batches sorted by length), ONNX Runtime fp32 (exported and optimized graph) and ONNX
Runtime with dynamic int8 weights, each scoring the same distillation rows of a prepared data folder with the same
adapted teacher. Prints rows per second (the scoring pass alone, and with the one-off export included), the ratio
to PyTorch, and how the outputs differ from PyTorch's (max logit difference, argmax agreement).

    python benchmarks/teacher_scoring.py --data runs/quick/prepare --teacher runs/quick/adapt --rows 4000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared data folder (ikd prepare)")
    ap.add_argument("--teacher", required=True, help="adapted teacher folder (ikd adapt)")
    ap.add_argument("--rows", type=int, default=4000, help="distillation rows scored (train, then transfer)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import datasets
    import numpy as np
    import torch

    from ikd.core.data import Prepared
    from ikd.steps import scoring
    from ikd.steps.fit import load_teacher

    torch.set_num_threads(args.threads)
    prep = Prepared.load(Path(args.data))
    rows = datasets.concatenate_datasets([prep.splits["train"], prep.splits["transfer"]])
    n = min(args.rows, len(rows))
    teacher = load_teacher(Path(args.teacher), prep)
    results, logits = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            of, _ = scoring.identity("bench", "bench", (0, n), (), False, backend)
            folder = scoring.score(
                teacher,
                rows,
                prep.info["pad_ids"]["teacher"],
                Path(tmp) / backend,
                of,
                torch.device("cpu"),
                args.batch_size,
                args.threads,
                desc=backend,
            )
            out, record = scoring.read(folder)
            logits[backend] = out["logits"].clone()
            export = float(record.get("check", {}).get("export_seconds", 0.0))
            results[backend] = {
                "rows": n,
                "seconds": record["seconds"],
                "export_seconds": export,
                "rows_per_second": round(n / (record["seconds"] - export), 2),
                "rows_per_second_with_export": round(n / record["seconds"], 2),
            }
    base = results.get("torch")
    cpu = platform.processor() or platform.machine()
    print(f"\nteacher scoring, {n} rows, batch {args.batch_size}, {args.threads} threads, {cpu}")
    print("| backend | rows/s | x torch | rows/s incl. export | export s | max |logit diff| | argmax agreement |")
    print("|---|---|---|---|---|---|---|")
    for backend, r in results.items():
        ratio = r["rows_per_second"] / base["rows_per_second"] if base else float("nan")
        if "torch" in logits and backend != "torch":
            diff = float((logits[backend] - logits["torch"]).abs().max())
            agree = float((logits[backend].argmax(-1) == logits["torch"].argmax(-1)).float().mean())
        else:
            diff, agree = 0.0, 1.0
        r |= {"x_torch": round(ratio, 3), "max_abs_diff": round(diff, 5), "argmax_agreement": round(agree, 5)}
        print(
            f"| {backend} | {r['rows_per_second']:.1f} | {ratio:.2f} | {r['rows_per_second_with_export']:.1f} | "
            f"{r['export_seconds']:.1f} | {diff:.4f} | {agree:.4f} |"
        )
    if args.json:
        meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "np": np.__version__}
        Path(args.json).write_text(json.dumps({"machine": meta, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
