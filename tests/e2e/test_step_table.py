"""The step table is the one wiring: `ikd run` keys every step with the same function the step uses, so a second
run with the same config skips every step, whatever the strategy's teacher source; the CLI's step commands and
the Kubeflow components take exactly the inputs of the table's rows."""

import inspect
import json

from conftest import ROOT

from ikd.cli import build_parser
from ikd.config import Config
from ikd.steps import table

TINY = ROOT / "configs" / "tiny.yaml"


def test_talking_with_a_pretrained_teacher_is_skipped_by_a_second_run(cli, sst2, tmp_path):
    p = ["--params", TINY, "--set", "distill.strategy=talking", "--set", "distill.talking.teacher_source=pretrained"]
    code, _, err = cli("run", *p, "--data", sst2, "--out", tmp_path / "run")
    assert code == 0, err
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"]
    assert {s["status"] for s in first.values()} == {"ran"}
    step = json.loads((tmp_path / "run" / "distill" / "step.json").read_text())
    assert json.loads(step["inputs"]["teacher"])["name"] == "tiny-teacher"  # keyed by the model, not adapt's output
    code, _, err = cli("run", *p, "--data", sst2, "--out", tmp_path / "run")
    assert code == 0, err
    second = json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"]
    assert second == {name: {"status": "skipped"} for name in table.NAMES}
    # the teacher's model config is distill's input: another teacher gives distill another key
    folders = {
        "data": tmp_path / "run" / "prepare",
        "teacher": tmp_path / "run" / "adapt",
        "scores": tmp_path / "run" / "score",
    }
    cfg = Config.load(TINY, [o for o in p if o != "--set"][2:])
    assert table.step_key(cfg, "distill", table.input_keys(cfg, "distill", folders)) == step["key"]
    other = Config.load(TINY, [*[o for o in p if o != "--set"][2:], "teacher.dropout=0.2"])
    assert table.step_key(other, "distill", table.input_keys(other, "distill", folders)) != step["key"]


def test_cli_step_commands_take_the_inputs_of_the_table():
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command")
    for name, step in table.STEPS.items():
        flags = {o for a in sub.choices[name]._actions for o in a.option_strings}
        wanted = {"--data"} | {f"--{k}" for k in step.inputs if k in ("teacher", "scores", "student")}
        assert wanted <= flags, name
        assert not ({"--teacher", "--scores", "--student"} - wanted) & flags, name  # none for an input it lacks
        assert ("--restart" in flags) == step.trains and ("--dvc-repo" in flags) == ("source" in step.inputs)


def test_kubeflow_components_take_the_inputs_of_the_table():
    from ikd.components import COMPONENTS

    assert tuple(COMPONENTS) == table.NAMES
    for name, component in COMPONENTS.items():
        params = inspect.signature(component.python_func).parameters
        inputs = {k for k, p in params.items() if k == "source" or "Input" in str(p.annotation)}
        kinds = inputs & {"source", "data", "teacher", "scores", "student"}
        assert kinds == set(table.STEPS[name].inputs), name
