"""``ikd tune``'s arguments and what the command prints (the CLI front door, :mod:`ikd.cli`, adds it)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ikd.errors import IkdError

if TYPE_CHECKING:
    from ikd.config import Config


def add_parser(sub, common: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Add ``ikd tune`` to the ``ikd`` subcommands ``sub``; ``common`` adds --params, --set and --data."""
    p = sub.add_parser(
        "tune",
        help="hyperparameter search of the distill step (Optuna, scored on the calibration split); "
        "also writes a Katib Experiment for the same space",
    )
    common(p, "data source like `ikd run`'s (a folder or hub id), or a prepared data folder (`ikd prepare`)")
    p.add_argument("--trials", type=int, required=True, help="trials to add to the study (a re-run adds more)")
    p.add_argument(
        "--space",
        help="search space, YAML or JSON: config key -> {type: float|int|categorical, ...} or a fixed value "
        "(default: temperature, alpha and lr of distill; docs/tuning.md)",
    )
    p.add_argument(
        "--out", default="runs/tune", help="tune folder: prepare/, adapt/, study.db, results (default: runs/tune)"
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="start no trial after this many seconds (default: no limit)"
    )
    p.add_argument("--study-name", help="Optuna study in OUT/study.db (default: one per config, space and data)")
    p.add_argument(
        "--min-quality",
        type=float,
        metavar="X",
        help="best-params.yaml: the fastest trial whose calibration metric is >= X (else the best); measures "
        "latency (default: the best trial, no latency measured)",
    )
    p.add_argument("--parallel", type=int, default=2, help="the Katib Experiment's parallel trials (default 2)")


def run(cfg: Config, args: argparse.Namespace) -> None:
    """Run the search and print its summary (JSON) on stdout."""
    from ikd.tune.study import TuneOptions, tune

    if args.parallel < 1:
        raise IkdError("--parallel must be at least 1")
    opts = TuneOptions(
        args.trials, Path(args.out), args.space, args.timeout, args.study_name, args.min_quality, args.parallel
    )
    print(json.dumps(tune(cfg, args.data, opts), indent=2))
