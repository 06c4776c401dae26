"""The ``ikd`` command: argument parsing and exit codes only.

Exit codes: 0 success; 2 a user error (bad config, data, model name, export mismatch: one line on stderr,
no traceback); 130 interrupted. Anything else is a bug and keeps its traceback.

Commands that live outside the library (``ikd pipeline``: the Kubeflow front door) are plugins: entry points of
group :data:`COMMANDS_GROUP`, found with ``importlib.metadata``; this module never imports them by name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ikd import __version__
from ikd.errors import IkdError

#: Entry-point group of extra ``ikd`` subcommands: ``name = "module:register"``, where ``register(subparsers)``
#: adds the subcommand's parser and sets the default ``handler``, called with the parsed arguments.
COMMANDS_GROUP = "ikd.commands"
#: Plugin commands ``ikd`` documents, and what to install when one is missing.
EXPECTED_COMMANDS = {"pipeline": "the kfp extra: pip install 'ikd[kfp]'"}


def _common(p: argparse.ArgumentParser, data_help: str = "prepared data folder (output of `ikd prepare`)") -> None:
    p.add_argument("--params", default="params.yaml", help="config YAML (default: params.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set distill.lr=1e-4 (repeatable; VALUE is YAML)",
    )
    p.add_argument("--data", required=True, help=data_help)


def _live(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--live",
        metavar="DIR",
        help="also log metrics (and curves, confusion matrices) with DVCLive into "
        "DIR, e.g. dvclive/distill (needs the dvc extra)",
    )


def dvc_source_args(p: argparse.ArgumentParser) -> None:
    """--dvc-repo and --dvc-rev (also used by the ``ikd pipeline`` plugin)."""
    p.add_argument(
        "--dvc-repo",
        metavar="URL",
        help="read --data from this DVC repository (git URL or local path) "
        "instead of the local disk, like `dvc get` (needs the dvc extra)",
    )
    p.add_argument(
        "--dvc-rev", metavar="REV", help="git revision of --dvc-repo (tag, branch, commit; default: its default branch)"
    )


def _job(p: argparse.ArgumentParser, run: bool = False) -> None:
    where = "<out>/<step>.checkpoints" if run else "<out>.checkpoints, beside --out"
    p.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help=f"checkpoints (config checkpoint.every) and where a re-run resumes from (default: {where})"
        + ("; with this option DIR/<step>" if run else ""),
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard existing checkpoints and train from the start instead of resuming",
    )
    p.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push training progress to this Prometheus Pushgateway (default: config monitor.pushgateway)",
    )
    p.add_argument(
        "--run-id",
        help="the Pushgateway 'run' label (default: env IKD_RUN_ID, else the output folder's "
        "name and a digest of its path, the same when the command is re-run)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikd", description="Interactive knowledge distillation pipeline.")
    parser.add_argument("--version", action="version", version=f"ikd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="prepare -> adapt -> distill -> evaluate -> export into OUT/<step>/")
    _common(p, "data source: a local folder with train/dev files, or a Hugging Face hub dataset id")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--force", action="store_true", help="re-run steps even when their outputs are up to date")
    dvc_source_args(p)
    _job(p, run=True)

    _step_parsers(sub)
    from ikd.tune.command import add_parser as tune_parser

    tune_parser(sub, _common)
    _plugins(sub)
    _serve_parser(sub)
    from ikd.serve.offline import add_parser as predict_parser

    predict_parser(sub)
    from ikd.promote.command import add_parser as promote_parser

    promote_parser(sub)

    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


#: One line of help per step command, and per input flag.
_STEP_HELP = {
    "prepare": "read, validate, split and tokenize a data source",
    "adapt": "fine-tune the teacher on the task",
    "score": "the frozen teacher's outputs over the distillation rows (shared, cached)",
    "distill": "train the student with distill.strategy",
    "evaluate": "dev metrics, sizes and latency of teacher and student; report.md",
    "export": "the student to ONNX, checked against PyTorch",
}
_INPUT_HELP = {
    "teacher": "adapted teacher folder (output of `ikd adapt`)",
    "student": "student folder (output of `ikd distill`)",
    "scores": "teacher scores folder (output of `ikd score`); default: the shared cache, scored when missing",
}


def _step_parsers(sub) -> None:
    """``ikd <step>`` for every row of the step table: its inputs become --data / --teacher / --student."""
    from ikd.steps.table import STEPS

    for name, step in STEPS.items():
        p = sub.add_parser(name, help=_STEP_HELP[name])
        if "source" in step.inputs:
            _common(p, "data source: a local folder with train/dev files, or a Hugging Face hub dataset id")
        else:
            _common(p)
        for kind in ("teacher", "scores", "student"):
            if kind in step.inputs:
                optional = kind in step.optional
                extra = (
                    (" (optional)" if name not in ("distill", "score") else "; only strategies that use one")
                    if optional and kind == "teacher"
                    else ""
                )
                p.add_argument(f"--{kind}", required=not optional, help=_INPUT_HELP[kind] + extra)
        p.add_argument("--out", required=True, help="output folder (written atomically)")
        if name == "score":
            p.add_argument("--shard", metavar="I/N", help="score only the I-th of N contiguous row ranges (from 0)")
            p.add_argument(
                "--merge",
                nargs="+",
                metavar="SHARD",
                help="join these shard folders (ikd score --shard) into --out instead of scoring",
            )
        if "source" in step.inputs:
            dvc_source_args(p)
        _live(p)
        if step.trains:
            _job(p)


def _plugins(sub) -> None:
    """Subcommands from the entry points of :data:`COMMANDS_GROUP`; an expected one that is missing or cannot be
    loaded gets a stand-in whose every use is one clear error saying what to install."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}
    for name in sorted({*found, *EXPECTED_COMMANDS}):
        install = EXPECTED_COMMANDS.get(name, "the package that provides it")
        if name not in found:
            _unavailable(
                sub,
                name,
                f"`ikd {name}` is not installed (no '{name}' entry point in group {COMMANDS_GROUP}); install {install}",
            )
            continue
        try:
            register = found[name].load()
        except ImportError as exc:
            _unavailable(sub, name, f"`ikd {name}` cannot be loaded ({exc}); install {install}")
            continue
        register(sub)


def _unavailable(sub, name: str, message: str) -> None:
    def fail(args: argparse.Namespace) -> None:
        raise IkdError(message)

    p = sub.add_parser(name, help=f"(not available: {message})", description=message)
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=fail)


def _serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an exported model: Open Inference Protocol v2 over HTTP, with batching "
        "and Prometheus /metrics (ONNX Runtime; no torch)",
    )
    p.add_argument("--model-dir", required=True, help="the output folder of `ikd export`")
    p.add_argument(
        "--model-file",
        help="model file in it (default: the one metadata.json names, see export.serve; "
        "model.onnx, model.opt.onnx or model.int8.onnx)",
    )
    p.add_argument("--name", help="model name in the v2 URLs (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ONNX Runtime providers, comma-separated, in order (e.g. CUDAExecutionProvider,"
        "CPUExecutionProvider); a GPU provider that does not come up is an error",
    )
    p.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"])
    p.add_argument(
        "--spin",
        action="store_true",
        help="let idle ONNX Runtime threads busy-wait (its default; off here: the cores are shared with "
        "HTTP and tokenization)",
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="rows per ONNX Runtime batch (default 32)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="longest wait for a batch to fill (default 5)")
    p.add_argument(
        "--batch-overhead-tokens",
        type=float,
        default=16.0,
        help="fixed cost of one batch, in padded tokens, when rows are cut into batches by length "
        "(default 16, CPU; raise it on a GPU, where small batches cost more)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-rows", type=int, default=256, help="rows (texts or pairs) per request (default 256)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000)")
    p.add_argument("--on-long-text", default="truncate", choices=["truncate", "reject"])
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request inference timeout (default 30)")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ikd.serve.app import Limits, create_app
    from ikd.serve.predictor import Predictor

    for flag in ("port", "max_batch_size", "max_rows", "max_chars", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise IkdError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.batch_overhead_tokens < 0:
        raise IkdError("--batch-overhead-tokens must be at least 0")
    predictor = Predictor.load(
        args.model_dir,
        name=args.name,
        providers=tuple(args.providers.split(",")),
        threads=args.threads,
        graph_optimization=args.graph_optimization,
        model_file=args.model_file,
        spin=args.spin,
    )
    limits = Limits(args.max_body_bytes, args.max_rows, args.max_chars, args.on_long_text, args.timeout_s)
    app = create_app(predictor, limits, args.max_batch_size, args.max_delay_ms, args.batch_overhead_tokens)
    logging.getLogger("ikd").info(
        "serve: model '%s' (%s) on http://%s:%d/v2/models/%s",
        predictor.name,
        ", ".join(predictor.session.get_providers()),
        args.host,
        args.port,
        predictor.name,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def _job_options(args: argparse.Namespace):
    from ikd.steps.job import JobOptions

    return JobOptions(
        Path(args.checkpoint_dir) if args.checkpoint_dir else None, args.restart, args.pushgateway, args.run_id
    )


#: What every command but ``serve`` and ``predict`` imports: the ``train`` extra.
TRAINING_MODULES = ("torch", "transformers", "datasets", "safetensors", "onnx")


def require_training(command: str) -> None:
    """IkdError naming the missing package unless the ``train`` extra is installed (a serving install is not)."""
    import importlib.util

    missing = []
    for name in TRAINING_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a module blanked out in sys.modules
            missing.append(name)
    if missing:
        raise IkdError(
            f"`ikd {command}` needs the train extra ({', '.join(missing)} not installed): "
            "pip install 'ikd[train]' (a serving install runs `ikd serve` and `ikd predict` only)"
        )


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "serve":  # the serving image has no torch, no config needed
        _serve(args)
        return
    if args.command == "predict":  # the same: an exported model folder is all it reads
        from ikd.serve.offline import command as predict

        predict(args)
        return
    if args.command == "promote":  # exported models and prepared splits: ONNX Runtime and pyarrow, no torch
        from ikd.promote.command import command as promote

        promote(args)
        return
    require_training(args.command)
    handler = getattr(args, "handler", None)
    if handler is not None:  # a plugin command (COMMANDS_GROUP) reads its own config
        handler(args)
        return
    from ikd.config import Config

    cfg = Config.load(args.params, args.overrides)
    if args.command == "config":
        sys.stdout.write(cfg.to_yaml())
        return
    if args.command == "run":
        import json

        from ikd.steps.runner import run

        result = run(
            cfg,
            args.data,
            Path(args.out),
            force=args.force,
            dvc_repo=args.dvc_repo,
            dvc_rev=args.dvc_rev,
            job=_job_options(args),
        )
        keys = ("task", "teacher", "student", "majority", "export")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
        return
    if args.command == "tune":
        from ikd.tune.command import run as tune

        tune(cfg, args)
        return
    from ikd.steps import table

    step = table.STEPS[args.command]
    if "source" in step.inputs:
        inputs: dict = {"source": table.Source(args.data, args.dvc_repo, args.dvc_rev)}
    else:  # --data is the prepared data; --teacher / --student the other step folders
        inputs = {kind: Path(v) for kind in step.inputs if (v := getattr(args, kind, None))}
    live = Path(args.live) if args.live else None
    if args.command == "score":
        from ikd.steps import score_teacher

        if args.merge:
            scored = score_teacher.merge_folders([Path(p) for p in args.merge], Path(args.out))
        else:
            scored = score_teacher.run(cfg, inputs, Path(args.out), live, shard=score_teacher.parse_shard(args.shard))
        logging.getLogger("ikd").info("score: wrote %s (%s rows)", scored.out_dir, scored.metrics.get("rows"))
        return
    result = table.call(cfg, args.command, inputs, Path(args.out), live, _job_options(args) if step.trains else None)
    logging.getLogger("ikd").info("%s: wrote %s", result.step, result.out_dir)
    if isinstance(result.metrics.get("calib"), dict):  # what a Katib trial's metrics collector reads
        from ikd.integrations.katib import metric_lines

        print("\n".join(metric_lines(result.metrics["calib"])), flush=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in (
        "torch.onnx",
        "torch.onnx._internal.exporter._registration",
        "torch._export",
        "onnxscript",
        "transformers",
        "datasets",
        "huggingface_hub",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # the serving image has no datasets
        pass


def run_command(func, *, prog: str = "ikd", quiet: bool = False, quiet_libraries: bool = True) -> int:
    """Run ``func()`` the way every ikd command runs: the ``ikd`` logger on stderr (INFO, or WARNING when
    ``quiet``); an :class:`IkdError` is one line ``<prog>: error: ...`` and exit code 2, Ctrl-C exit code 130.
    Returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr, force=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ikd: %(message)s"))
    log = logging.getLogger("ikd")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet_libraries:
        _quiet_libraries()
    try:
        func()
    except IkdError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "ikd.training.distributed" in sys.modules:  # under torchrun: leave the process group cleanly
            sys.modules["ikd.training.distributed"].teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(
        lambda: _dispatch(args), quiet=args.quiet, quiet_libraries=args.command not in ("config", "serve")
    )


if __name__ == "__main__":
    sys.exit(main())
