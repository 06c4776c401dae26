"""The CLI's surface, without training: every option's help and default, ``-q`` anywhere, ``--set`` errors that
name the override, one-line warnings, the run log, model folders passed for step folders, data sources that
cannot exist failing before torch is imported."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"


def _parsers():
    """(command path, parser) of every subcommand of ``ikd`` and ``ikd-pipeline``, nested ones included."""
    from ikd.cli import build_parser
    from ikd.console import subparsers

    out = []
    for top in (build_parser(), pytest.importorskip("ikd.pipelines.cli").build_parser()):
        out.append((top.prog, top))
        out.extend((sub.prog, sub) for sub in subparsers(top))
    return out


def test_every_option_has_help_that_states_its_default():
    problems, seen = [], 0
    for prog, parser in _parsers():
        fmt = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            seen += 1
            name = f"{prog} {'/'.join(action.option_strings)}"
            shown = fmt._expand_help(action) if action.help else ""
            if not shown.strip():
                problems.append(f"{name}: no help")
            elif action.nargs != 0 and not action.required and "default" not in shown.lower():
                problems.append(f"{name}: help does not state the default: {shown!r}")
    assert seen > 100  # every subcommand was walked: run, the steps, tune, serve, predict, config, pipeline ...
    assert not problems, "\n".join(problems)


def test_help_renders_defaults():
    from ikd.cli import build_parser

    text = {p.prog: p.format_help() for p in [build_parser(), *(s for _, s in _parsers())]}
    assert "(default: 8080)" in text["ikd serve"] and "(default: all)" in text["ikd serve"]
    assert "(default: 127.0.0.1)" in text["ikd serve"]
    assert "config YAML (default: params.yaml)" in text["ikd config"]


@pytest.mark.parametrize("argv", [["-q", "config"], ["config", "-q"], ["config", "--quiet"]])
def test_quiet_before_or_after_the_subcommand(argv):
    from ikd.cli import build_parser

    assert build_parser().parse_args(argv).quiet is True
    assert build_parser().parse_args(["config"]).quiet is False
    pipeline = pytest.importorskip("ikd.pipelines.cli").build_parser()
    assert pipeline.parse_args(["compile", "--out", "x.yaml", "-q"]).quiet is True
    assert pipeline.parse_args(["-q", "compile", "--out", "x.yaml"]).quiet is True


def test_quiet_silences_progress_bars_and_progress_lines(capsys):
    from ikd import progress
    from ikd.cli import run_command

    def work():
        for _ in progress.bar(range(3), desc="busy-bar", disable=False, mininterval=0):
            pass
        logging.getLogger("ikd").info("a progress line")

    assert run_command(work, quiet_libraries=False) == 0
    err = capsys.readouterr().err
    assert "busy-bar" in err and "a progress line" in err
    assert run_command(work, quiet=True, quiet_libraries=False) == 0
    assert capsys.readouterr().err == ""
    assert not progress.is_quiet()  # restored after the command


def test_set_error_names_the_override_not_the_yaml_line(cli):
    code, _, err = cli("config", "--params", TINY, "--set", "distill.strategy=nope")
    assert code == 2
    assert "--set distill.strategy=nope: distill.strategy: must be one of" in err
    assert "line " not in err and "tiny.yaml" not in err
    # a section set whole: the override is blamed for the key under it
    code, _, err = cli("config", "--params", TINY, "--set", "distill={strategy: nope}")
    assert code == 2 and "--set distill={strategy: nope}: distill.strategy" in err
    # a typo through --set names the override too
    code, _, err = cli("config", "--params", TINY, "--set", "distill.temprature=2")
    assert code == 2 and "--set distill.temprature=2: unknown key 'distill.temprature'" in err


def test_bad_yaml_value_still_names_its_line(cli, tmp_path):
    text = TINY.read_text().replace("strategy: kd", "strategy: nope")
    lines = text.splitlines()
    bad = next(i for i, ln in enumerate(lines, 1) if "strategy: nope" in ln)
    (tmp_path / "p.yaml").write_text(text)
    code, _, err = cli("config", "--params", tmp_path / "p.yaml", "--set", "distill.lr=0.01")
    assert code == 2 and f"p.yaml: line {bad}: distill.strategy: must be one of" in err and "--set" not in err


def test_warnings_are_one_line(capsys):
    from ikd.cli import run_command

    def work():
        warnings.warn("something odd\n  happened here", stacklevel=1)
        warnings.warn("old api", FutureWarning, stacklevel=1)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_command(work, quiet=True, quiet_libraries=False) == 0  # warnings survive -q
    err = capsys.readouterr().err.splitlines()
    assert err == ["ikd: warning: something odd happened here", "ikd: warning (FutureWarning): old api"]
    assert warnings.showwarning.__module__ == "warnings"  # the hook is gone after the command


def test_run_log_keeps_the_command_and_the_console_lines(tmp_path, capsys):
    from ikd.cli import run_command
    from ikd.console import LOG_FILE, run_log

    def work():
        with run_log(tmp_path / "run", ["run", "--out", "x y"]):
            (tmp_path / "run" / "prepare").mkdir()
            logging.getLogger("ikd").info("prepare: running")
            warnings.warn("careful", stacklevel=1)
            raise __import__("ikd.errors").errors.DataError("bad row")

    assert run_command(work, quiet=True, quiet_libraries=False) == 2
    log = (tmp_path / "run" / LOG_FILE).read_text()
    assert "ikd run --out 'x y'" in log.splitlines()[0]
    assert "prepare: running" in log and "warning: careful" in log and "error: bad row" in log
    err = capsys.readouterr().err
    assert "prepare: running" not in err and err.count("bad row") == 1  # -q: the console only has the error
    # a run that failed before writing anything leaves no folder behind
    assert run_command(lambda: run_log(tmp_path / "empty").__enter__() and None, quiet_libraries=False) == 0
    with pytest.raises(RuntimeError), run_log(tmp_path / "gone"):
        raise RuntimeError("first step failed")
    assert not (tmp_path / "gone").exists()


def test_model_folder_given_for_the_step_folder_names_the_step_folder(cli, tmp_path):
    step = tmp_path / "distill"
    (step / "model").mkdir(parents=True)
    (step / "model" / "config.json").write_text("{}")
    (step / "step.json").write_text(json.dumps({"step": "distill"}))
    (tmp_path / "prep").mkdir()
    args = ["--params", TINY, "--data", tmp_path / "prep", "--out", tmp_path / "onnx"]
    code, _, err = cli("export", *args, "--student", step / "model")
    assert code == 2 and f"{step / 'model'}: a model folder" in err and f"pass {step} " in err
    assert "Traceback" not in err


def _in_fresh_python(*argv: str, env_extra: dict[str, str] | None = None):
    code = (
        "import sys, time; from ikd.cli import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
        "print(rc, round(time.perf_counter() - t, 2), "
        "sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    env = {**__import__("os").environ, **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    return proc.stdout.split(None, 2), proc.stderr


def test_data_source_that_cannot_exist_fails_before_torch(tmp_path):
    missing = tmp_path / "no-such-folder"
    (rc, _, imported), err = _in_fresh_python("run", "--params", str(TINY), "--data", str(missing), "--out", "x")
    assert rc == "2" and imported.strip() == "[]", err
    assert f"{missing}: no such data folder" in err and "make run DATA=<folder>" in err
    assert not (ROOT / "x").exists()


def test_unreachable_hub_fails_fast_with_the_hint():
    from ikd.core import reach

    env = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    env |= dict.fromkeys(("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"), "")  # port 9: nothing listens
    (rc, seconds, imported), err = _in_fresh_python(
        "prepare", "--params", str(TINY), "--data", "owner/dataset", "--out", "x", env_extra=env
    )
    assert rc == "2" and imported.strip() == "[]" and float(seconds) < reach.CONNECT_TIMEOUT_S + 2, err
    assert "owner/dataset: not a local folder, and the Hugging Face hub cannot be reached" in err
    assert "make run DATA=<folder>" in err
