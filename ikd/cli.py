"""The ``ikd`` command: argument parsing and exit codes only.

Exit codes: 0 success; 2 a user error (bad config, data, model name, export mismatch: one line on stderr,
no traceback); 130 interrupted. Anything else is a bug and keeps its traceback.

Commands that live outside the library (``ikd pipeline``: the Kubeflow front door) are plugins: entry points of
group :data:`COMMANDS_GROUP`, found with ``importlib.metadata``; this module never imports them by name.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ikd import __version__, progress
from ikd.console import Parser, console_logging, one_line_warnings, quiet_everywhere, run_log
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
        help="override a config value, e.g. --set distill.lr=1e-4 (repeatable; VALUE is YAML; default: none)",
    )
    p.add_argument("--data", required=True, help=data_help)


def _live(p: argparse.ArgumentParser, run: bool = False) -> None:
    where = "DIR/<step> for each step that runs, e.g. dvclive/distill for DIR dvclive" if run else "DIR"
    p.add_argument(
        "--live",
        metavar="DIR",
        help=f"also log metrics (and curves, confusion matrices) with DVCLive into {where}"
        + ("" if run else ", e.g. dvclive/distill")
        + " (needs the dvc extra)",
    )


def dvc_source_args(p: argparse.ArgumentParser) -> None:
    """--dvc-repo and --dvc-rev (also used by the ``ikd pipeline`` plugin)."""
    p.add_argument(
        "--dvc-repo",
        metavar="URL",
        help="read --data from this DVC repository (git URL or local path) "
        "instead of the local disk, like `dvc get` (needs the dvc extra; default: the local disk)",
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
    parser = Parser(prog="ikd", description="Interactive knowledge distillation pipeline.")
    parser.add_argument("--version", action="version", version=f"ikd {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors: no progress bars or progress lines"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="prepare -> adapt -> distill -> evaluate -> export into OUT/<step>/")
    _common(p, "data source: a local folder with train/dev files, or a Hugging Face hub dataset id")
    p.add_argument("--out", required=True, help="run folder: one folder per step, metrics.json, the log ikd.log")
    p.add_argument("--force", action="store_true", help="re-run steps even when their outputs are up to date")
    dvc_source_args(p)
    _live(p, run=True)
    _job(p, run=True)

    _step_parsers(sub)
    from ikd.tune.command import add_parser as tune_parser

    tune_parser(sub, _common)
    _plugins(sub)
    from ikd.serve.command import add_parser as serve_parser

    serve_parser(sub)
    from ikd.serve.offline import add_parser as predict_parser

    predict_parser(sub)
    from ikd.promote.command import add_parser as promote_parser

    promote_parser(sub)

    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("--params", default="params.yaml", help="config YAML (default: params.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable; VALUE is YAML; default: none)",
    )
    return quiet_everywhere(parser)


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
            p.add_argument(
                "--shard",
                metavar="I/N",
                help="score only the I-th of N contiguous row ranges (from 0; default: every row)",
            )
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
            "pip install 'ikd[train]' (a serving install runs `ikd serve`, `ikd predict`, and `ikd promote` "
            "with pyarrow)"
        )


def _reads_source(command: str) -> bool:
    """Whether ``--data`` of ``command`` may be a data source (a folder or hub id), not only a prepared folder."""
    from ikd.steps.table import STEPS

    return command in ("run", "tune") or (command in STEPS and "source" in STEPS[command].inputs)


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "serve":  # the serving image has no torch, no config needed
        from ikd.serve.command import command as serve

        serve(args)
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

    if _reads_source(args.command) and getattr(args, "dvc_repo", None) is None:
        from ikd.core.reach import check_source

        check_source(args.data)  # before the config (its strategies import torch): fails in a second
    cfg = Config.load(args.params, args.overrides)
    if args.command == "config":
        sys.stdout.write(cfg.to_yaml())
        return
    if args.command == "run":
        import json

        with run_log(Path(args.out), args.argv):
            from ikd.steps.runner import run

            result = run(
                cfg,
                args.data,
                Path(args.out),
                force=args.force,
                dvc_repo=args.dvc_repo,
                dvc_rev=args.dvc_rev,
                job=_job_options(args),
                live=Path(args.live) if args.live else None,
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


def run_command(func, *, prog: str = "ikd", quiet: bool = False, quiet_libraries: bool = True) -> int:
    """Run ``func()`` the way every ikd command runs: the ``ikd`` logger on stderr (INFO, or WARNING and no
    progress bars when ``quiet``), Python warnings as one line each (:func:`ikd.console.one_line_warnings`); an
    :class:`IkdError` is one line ``<prog>: error: ...`` and exit code 2, Ctrl-C exit code 130.
    Returns the exit code."""
    console_logging(quiet, quiet_libraries)
    quiet_before = progress.set_quiet(quiet)
    try:
        with one_line_warnings(prog):
            func()
    except IkdError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        progress.set_quiet(quiet_before)
        if "ikd.training.distributed" in sys.modules:  # under torchrun: leave the process group cleanly
            sys.modules["ikd.training.distributed"].teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a run's log file
    return run_command(
        lambda: _dispatch(args), quiet=args.quiet, quiet_libraries=args.command not in ("config", "serve")
    )


if __name__ == "__main__":
    sys.exit(main())
