"""dvc.yaml agrees with the library, the CLI and the Kubeflow pipeline: the same step names, the params sections
each step reads, commands the CLI accepts, outputs that chain stage to stage, code dependencies that exist."""

import shlex

import yaml
from conftest import ROOT

from ikd.cli import build_parser
from ikd.components import COMPONENTS
from ikd.config import Config
from ikd.steps.table import NAMES as STEPS
from ikd.steps.table import PRODUCED_BY
from ikd.steps.table import STEPS as TABLE

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_stage_names_are_the_step_names_everywhere(tmp_path):
    from ikd.pipelines.runner import build_pipeline

    assert tuple(COMPONENTS) == STEPS and tuple(DVC["stages"]) == (*STEPS, "promote")  # promote: the gate after
    func = build_pipeline(Config.load(ROOT / "configs" / "tiny.yaml"), "data/raw", for_cluster=False)
    from kfp import compiler

    compiler.Compiler().compile(func, package_path=str(tmp_path / "p.yaml"))
    tasks = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))["root"]["dag"]["tasks"]
    assert {t["taskInfo"]["name"] for t in tasks.values()} - {"dvc-remote-set"} == {*STEPS, "promote"}


def test_each_stage_runs_its_cli_step_with_the_sections_and_inputs_of_the_step_table():
    parser = build_parser()
    produced = {"data/raw"}  # tracked by data/raw.dvc
    out_of: dict[str, str] = {}  # step -> its output folder in dvc.yaml
    for name, stage in DVC["stages"].items():
        if name == "promote":  # the gate, not a step of the table: test_the_promote_stage_follows_export
            continue
        row = TABLE[name]
        argv = shlex.split(stage["cmd"])
        assert argv[:2] == ["ikd", name], stage["cmd"]
        args = parser.parse_args(argv[1:])  # the CLI accepts the command as written
        assert args.params == "params.yaml" and args.live == f"dvclive/{name}" and not args.overrides
        assert stage["params"] == ["seed", *row.sections], name  # what the step's key hashes
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
        assert outs[0] == args.out, name
        out_of[name] = args.out
        assert stage["metrics"] == [{f"dvclive/{name}/metrics.json": {"cache": False}}], name
        for kind in row.inputs:  # every input of the table's row is given, a dependency, the producer's output
            path = args.data if kind in ("source", "data") else getattr(args, kind)
            assert path in stage["deps"] and path in produced, (name, kind)
            if kind != "source":
                assert path == out_of[PRODUCED_BY[kind]], (name, kind)
        produced.update(outs)
        code = [d for d in stage["deps"] if d.startswith("ikd/")]
        assert "ikd/steps" in code and all((ROOT / d).exists() for d in code), name
    raw = yaml.safe_load((ROOT / "data" / "raw.dvc").read_text())["outs"][0]
    assert raw["path"] == "raw" and raw["md5"].endswith(".dir")


def test_the_promote_stage_follows_export():
    stage = DVC["stages"]["promote"]
    args = build_parser().parse_args(shlex.split(stage["cmd"])[1:])
    export = DVC["stages"]["export"]
    assert args.new == export["outs"][0] and args.data == "data/prepared" and args.params == "params.yaml"
    assert {args.new, args.data, "ikd/promote"} <= set(stage["deps"]) and (ROOT / "ikd" / "promote").is_dir()
    assert args.current is None and not args.fail_on_refuse  # promote.current; a refusal leaves `dvc repro` green
    assert stage["outs"] == [{args.out: {"cache": False}}]


def test_params_yaml_has_every_section_a_stage_names():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage in DVC["stages"].values():
        assert all(section in params for section in stage.get("params", [])), stage["params"]


def test_plots_draw_what_the_stages_write():
    stage_outs = {next(iter(o)) for s in DVC["stages"].values() for o in s["outs"] if isinstance(o, dict)}
    for plot in DVC["plots"]:
        path = next(iter(plot))
        assert any(path.startswith(out) for out in stage_outs), path
