"""What an ikd command shows and keeps, besides its result: help that states every default, ``-q`` after the
subcommand too, warnings as one line, and a run's log file.

:mod:`ikd.cli` and the ``ikd-pipeline`` front door build their parsers with :class:`Parser`; :func:`run_command`
(in :mod:`ikd.cli`) installs :func:`one_line_warnings`; ``ikd run`` keeps :func:`run_log` in its run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

#: The log file ``ikd run`` keeps in its run folder (beside the step folders, never inside one: a step folder is
#: a DVC output and a KFP artifact, whose hash must not change with the time a command ran).
LOG_FILE = "ikd.log"


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends with ``(default: X)`` for an option that takes a value, unless its help already says what
    the default is: ``(default: none)`` for an option left unset (None, or no ``--set``). Where "none" says too
    little, the help should say what happens in words, ``(default: ...)`` (``tests/unit/test_cli_surface.py``
    checks every option of every subcommand)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.nargs != 0 and action.option_strings and not action.required and "default" not in text.lower():
            text += " (default: none)" if action.default in (None, [], ()) else " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help states defaults; its subcommands' parsers are Parsers too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand parser under ``parser``, nested ones included (``ikd pipeline run``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from subparsers(sub)


def quiet_everywhere(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Accept ``-q/--quiet`` after every subcommand too (``ikd run ... -q``), not only before it. A subcommand's
    ``-q`` sets the value only when given, so ``ikd -q run`` stays quiet."""
    for sub in subparsers(parser):
        if "--quiet" not in sub._option_string_actions:
            sub.add_argument(
                "-q",
                "--quiet",
                action="store_true",
                default=argparse.SUPPRESS,
                help="only warnings and errors: no progress bars or progress lines",
            )
    return parser


class ConsoleHandler(logging.StreamHandler):
    """The ``ikd`` logger on stderr; while tqdm bars are drawn, each line goes above them (``tqdm.write``) instead
    of through the middle of one."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm")
        if tqdm is None:
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _quiet_libraries() -> None:
    """Third-party loggers at ERROR, tokenizers single-threaded, datasets without progress bars."""
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
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:  # read when datasets is imported (importing it here would cost every command a second or two)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def console_logging(quiet: bool, quiet_libraries: bool = True) -> None:
    """The ``ikd`` logger on stderr alone, ``ikd: <message>``, at INFO (WARNING when ``quiet``); other loggers at
    WARNING, and with ``quiet_libraries`` the chatty third-party ones at ERROR."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr, force=True)
    handler = ConsoleHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ikd: %(message)s"))
    log = logging.getLogger("ikd")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet_libraries:
        _quiet_libraries()


def one_line_warnings(prog: str) -> contextlib.AbstractContextManager:
    """While active, a Python warning is one line on the ``ikd`` logger (so on stderr and in a run's log file):
    ``<prog>: warning: <message>``, with the category when it is not a plain UserWarning, never the source line
    that raised it."""
    log = logging.getLogger("ikd")

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        kind = "" if category is UserWarning else f" ({category.__name__})"
        log.warning("warning%s: %s", kind, text)

    @contextlib.contextmanager
    def hook() -> Iterator[None]:
        before = warnings.showwarning
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = before

    return hook()


@contextlib.contextmanager
def run_log(folder: Path, argv: list[str] | None = None) -> Iterator[Path]:
    """Append what the ``ikd`` logger says (the console's lines, warnings and the error too) to ``folder/ikd.log``,
    after a header with the time and the command line. A run that made ``folder`` and wrote nothing else there
    (it failed in its first step) leaves no folder behind."""
    folder = Path(folder)
    fresh = not folder.exists()
    path = folder / LOG_FILE
    log = logging.getLogger("ikd")
    level, console = log.level, [h for h in log.handlers if h.level == logging.NOTSET]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # not a folder, not writable: the run itself reports what is wrong with it
        yield path
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    with path.open("a", encoding="utf-8") as f:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        f.write(f"---- {stamp}: {shlex.join(['ikd', *(sys.argv[1:] if argv is None else argv)])}\n")
    for h in console:  # -q quiets the console, not the record
        h.setLevel(level)
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield path
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):  # the file only: run_command prints it on the console
            handler.emit(logging.LogRecord("ikd", logging.ERROR, "", 0, "error: %s", (exc,), None))
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(level)
        for h in console:
            h.setLevel(logging.NOTSET)
        if fresh and folder.is_dir() and [p.name for p in folder.iterdir()] == [LOG_FILE]:
            path.unlink()
            folder.rmdir()
