"""The ``ikd`` command: argument parsing and exit codes only.

Exit codes: 0 success; 2 a user error (bad config, data, model name, export mismatch: one line on stderr,
no traceback); 130 interrupted. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ikd import __version__
from ikd.errors import IkdError


def _common(p: argparse.ArgumentParser, data_help: str = "prepared data folder (output of `ikd prepare`)") -> None:
    p.add_argument("--params", default="params.yaml", help="config YAML (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set distill.lr=1e-4 (repeatable; VALUE is YAML)")
    p.add_argument("--data", required=True, help=data_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikd", description="Interactive knowledge distillation pipeline.")
    parser.add_argument("--version", action="version", version=f"ikd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="prepare -> adapt -> distill -> evaluate -> export into OUT/<step>/")
    _common(p, "data source: a local folder with train/dev files, or a Hugging Face hub dataset id")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--force", action="store_true", help="re-run steps even when their outputs are up to date")

    p = sub.add_parser("prepare", help="read, validate, split and tokenize a data source")
    _common(p, "data source: a local folder with train/dev files, or a Hugging Face hub dataset id")
    p.add_argument("--out", required=True)

    p = sub.add_parser("adapt", help="fine-tune the teacher on the task")
    _common(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("distill", help="train the student with distill.strategy")
    _common(p)
    p.add_argument("--teacher", help="adapted teacher folder (output of `ikd adapt`); not needed by finetune")
    p.add_argument("--out", required=True)

    p = sub.add_parser("evaluate", help="dev metrics, sizes and latency of teacher and student; report.md")
    _common(p)
    p.add_argument("--teacher", help="adapted teacher folder (optional)")
    p.add_argument("--student", required=True, help="student folder (output of `ikd distill`)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("export", help="the student to ONNX, checked against PyTorch")
    _common(p)
    p.add_argument("--student", required=True, help="student folder (output of `ikd distill`)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    from ikd.config import Config

    cfg = Config.load(args.params, args.overrides)
    if args.command == "config":
        sys.stdout.write(cfg.to_yaml())
        return
    if args.command == "run":
        import json

        from ikd.runner import run

        result = run(cfg, args.data, Path(args.out), force=args.force)
        print(json.dumps({k: result[k] for k in ("task", "teacher", "student", "export")}, indent=2))
        return
    from ikd import steps

    opt = (lambda v: Path(v) if v else None)  # noqa: E731
    calls = {
        "prepare": lambda: steps.prepare(cfg, args.data, Path(args.out)),
        "adapt": lambda: steps.adapt(cfg, Path(args.data), Path(args.out)),
        "distill": lambda: steps.distill(cfg, Path(args.data), opt(args.teacher), Path(args.out)),
        "evaluate": lambda: steps.evaluate(cfg, Path(args.data), opt(args.teacher), Path(args.student),
                                           Path(args.out)),
        "export": lambda: steps.export(cfg, Path(args.data), Path(args.student), Path(args.out)),
    }
    result = calls[args.command]()
    logging.getLogger("ikd").info("%s: wrote %s", result.step, result.out_dir)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("torch.onnx", "torch._export", "onnxscript", "transformers", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # the serving image has no datasets
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr, force=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ikd: %(message)s"))
    log = logging.getLogger("ikd")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.command != "config":
        _quiet_libraries()
    try:
        _dispatch(args)
    except IkdError as exc:
        print(f"ikd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ikd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
