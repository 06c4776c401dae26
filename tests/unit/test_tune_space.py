"""ikd tune without training: the search space is checked against the config (errors name file, line and key), the
Katib Experiment for a space is one a cluster accepts (tests/katib_schema.py) and its trial command is a valid
`ikd distill` whose metric lines the collector reads, and the trial choice / Pareto frontier logic."""

import copy
import re

import pytest
import yaml
from conftest import ROOT
from katib_schema import problems

from ikd.config import Config
from ikd.errors import ConfigError
from ikd.integrations import katib
from ikd.tune.report import choose, frontier
from ikd.tune.space import DEFAULT, Space, overrides

TINY = ROOT / "configs" / "tiny.yaml"
SPACE = """\
distill.temperature: {type: float, low: 1.0, high: 8.0, log: true}
distill.alpha: {type: float, low: 0.0, high: 1.0}
distill.lr: {type: float, low: 1e-5, high: 3.0e-4, log: true}
distill.epochs: {type: int, low: 1, high: 4}
distill.strategy: {type: categorical, choices: [kd, metadistil]}
student.layers: {type: int, low: 2, high: 6}
distill.group_by_length: false
"""


@pytest.fixture
def base():
    return Config.load(TINY)


def load(tmp_path, text, base):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    return Space.load(f, base)


def test_the_example_space_and_the_built_in_one_load(tmp_path, base):
    space = load(tmp_path, SPACE, base)
    assert space.keys == [
        "distill.temperature",
        "distill.alpha",
        "distill.lr",
        "distill.epochs",
        "distill.strategy",
        "student.layers",
    ]
    assert space.fixed == {"distill.group_by_length": False}
    assert [p.kind for p in space.params] == ["float", "float", "float", "int", "categorical", "int"]
    assert space.params[2].low == 1e-5 and space.params[2].log  # `1e-5` is a string to YAML 1.1: read as a number
    assert Space.load(None, base).keys == [k.split(":")[0] for k in DEFAULT.splitlines()]


#: (space file, the error it gives)
BAD = [
    (
        "distill.temprature: {type: float, low: 1, high: 2}",
        r"line 1: unknown key 'distill.temprature' \(did you mean 'distill.temperature'\?\)",
    ),
    (
        "distill.lr: {type: float, low: 1e-5, high: 1e-3}\nadapt.lr: {type: float, low: 1e-5, high: 1e-3}",
        r"line 2: adapt.lr: a trial reruns the distill step only.*set adapt.lr with --set",
    ),
    (
        "student.name: {type: categorical, choices: [a, b]}",
        r"student.name: a trial reruns the distill step only",
    ),
    (
        "distill.alpha: {type: float, low: 0.0, high: 2.0}",
        r"line 1: distill.alpha: Input should be less than or equal to 1 \(got 2.0\)",
    ),
    (
        "distill.epochs: {type: float, low: 1, high: 4}",
        r"distill.epochs: Input should be a valid integer",
    ),
    (
        "distill.strategy: {type: categorical, choices: [kd, nope]}",
        r"distill.strategy: must be one of .* \(got 'nope'\)",
    ),
    (
        "distill.lr: {type: float, low: 0.001, high: 0.0001}",
        r"distill.lr: low \(0.001\) must be less than high",
    ),
    (
        "distill.lr: {type: float, low: 0, high: 0.1, log: true}",
        r"distill.lr: log: true needs low > 0",
    ),
    (
        "distill.lr: {type: uniform, low: 0, high: 0.1}",
        r"distill.lr: type must be float, int or categorical",
    ),
    (
        "distill.lr: {type: float, low: 0.1, hi: 0.2}",
        r"distill.lr: unknown field 'hi'",
    ),
    (
        "distill.strategy: {type: categorical, choices: []}",
        r"choices must be a non-empty list",
    ),
    (
        "distill: 3",
        r"line 1: distill: Input should be a valid dictionary",
    ),
    (
        "- distill.lr",
        r"a search space is a mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_a_bad_space_is_one_error_naming_the_file_and_the_key(tmp_path, base, text, expected):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text + "\n", base)
    assert str(err.value).startswith(f"{tmp_path / 'space.yaml'}: ")
    assert re.search(expected, str(err.value)), str(err.value)


def test_every_problem_is_reported_at_once(tmp_path, base):
    with pytest.raises(ConfigError) as err:
        load(
            tmp_path,
            "distill.tempreature: {type: float, low: 1, high: 2}\ndistill.alpha: {type: int, low: 0, high: 3}\n",
            base,
        )
    assert len(err.value.problems) == 2 and "line 2: distill.alpha" in err.value.problems[1]


class FakeTrial:
    """Draws the lower bound / first choice, the way an Optuna trial is asked."""

    def suggest_float(self, key, low, high, step=None, log=False):
        return low

    def suggest_int(self, key, low, high, step=1, log=False):
        return low

    def suggest_categorical(self, key, choices):
        return choices[-1]


def test_a_trial_config_carries_the_values_and_the_fixed_keys(tmp_path, base):
    space = load(tmp_path, SPACE, base)
    values = space.suggest(FakeTrial())
    cfg = space.config(base, values)
    assert cfg.distill.strategy == "metadistil" and cfg.student.layers == 2 and cfg.distill.lr == 1e-5
    assert cfg.distill.group_by_length is False and cfg.adapt == base.adapt
    assert overrides({"distill.lr": 1e-5, "distill.strategy": "kd"}) == ["distill.lr=1e-05", 'distill.strategy="kd"']


# ---- the Katib Experiment --------------------------------------------------------------------------------------------
@pytest.fixture
def experiment(tmp_path, base):
    space = load(tmp_path, SPACE, base)
    return space, katib.experiment(base, space, "ikd-tune-0a1b2c3d", ["accuracy", "f1"], 12, 3, teacher=True)


def test_the_experiment_is_one_katib_accepts(experiment):
    _, exp = experiment
    assert problems(exp) == []
    spec = exp["spec"]
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "calib-accuracy",
        "additionalMetricNames": ["calib-f1"],
        "metricStrategies": [{"name": "calib-accuracy", "value": "latest"}, {"name": "calib-f1", "value": "latest"}],
    }
    assert spec["algorithm"]["algorithmName"] == "tpe" and spec["maxTrialCount"] == 12
    assert spec["parallelTrialCount"] == 3 and spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["distill-temperature"] == {
        "name": "distill-temperature",
        "parameterType": "double",
        "feasibleSpace": {"min": "1.0", "max": "8.0", "distribution": "logUniform"},
    }
    assert params["distill-epochs"]["parameterType"] == "int" and params["distill-epochs"]["feasibleSpace"] == {
        "min": "1",
        "max": "4",
    }
    assert params["distill-strategy"]["feasibleSpace"] == {"list": ["kd", "metadistil"]}
    job = spec["trialTemplate"]["trialSpec"]
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert (
        c["image"].startswith("ghcr.io/ikd-project/ikd:") and c["name"] == spec["trialTemplate"]["primaryContainerName"]
    )


def test_the_checker_catches_what_a_cluster_refuses(experiment):
    _, exp = experiment
    spec_path = ("spec", "trialTemplate", "trialSpec", "spec", "template", "spec")

    def at(e, *path):
        for p in path:
            e = e[p]
        return e

    mutations = [
        lambda e: e["spec"]["trialTemplate"].pop("primaryContainerName"),
        lambda e: e["spec"]["trialTemplate"].pop("successCondition"),
        lambda e: e["spec"]["parameters"][0]["feasibleSpace"].update(mn="1"),
        lambda e: e["spec"]["parameters"][0]["feasibleSpace"].update(distribution="zipf"),
        lambda e: e["spec"]["parameters"][3].update(parameterType="integer"),
        lambda e: e["spec"]["trialTemplate"]["trialParameters"][1].update(reference="nope"),
        lambda e: e["spec"]["trialTemplate"]["trialParameters"].pop(),
        lambda e: e["spec"]["algorithm"]["algorithmSettings"].append({"name": "seed", "value": "1"}),
        lambda e: e["spec"].update(parallelTrialCount=20),
        lambda e: e["spec"]["objective"].update(type="max"),
        lambda e: e["spec"]["metricsCollectorSpec"]["source"]["filter"].update(metricsFormat=["calib=(.*)"]),
        lambda e: at(e, *spec_path)["containers"][0].update(args="x"),
        lambda e: at(e, *spec_path)["containers"][0].update(imagePullPolice="Always"),
        lambda e: at(e, *spec_path).update(restartPolicy=["Never"]),
        lambda e: e["spec"]["trialTemplate"]["trialSpec"].update(metadata={"name": "fixed"}),
        lambda e: e["metadata"].update(name="Tune_1"),
    ]
    for i, mutate in enumerate(mutations):
        e = copy.deepcopy(exp)
        mutate(e)
        assert problems(e), f"mutation {i} went unnoticed"


def test_the_trial_command_is_a_valid_ikd_distill_with_every_value_of_the_space(tmp_path, experiment, base):
    from ikd.cli import build_parser

    _, exp = experiment
    (tmp_path / "base-params.yaml").write_text(base.to_yaml())
    template = exp["spec"]["trialTemplate"]
    [c] = template["trialSpec"]["spec"]["template"]["spec"]["containers"]
    params = {p["name"]: p["feasibleSpace"] for p in exp["spec"]["parameters"]}
    for bound in ("min", "max"):
        values = {"trialName": "trial-1"}
        for tp in template["trialParameters"][1:]:
            feasible = params[tp["reference"]]
            values[tp["name"]] = feasible.get(bound) or feasible["list"][-1]
        cmd = [re.sub(r"\$\{trialParameters\.([^}]+)\}", lambda m, v=values: v[m.group(1)], a) for a in c["command"]]
        assert cmd[0] == "ikd"
        args = build_parser().parse_args(cmd[1:])
        assert args.command == "distill" and args.teacher.endswith("/adapt") and args.out.endswith("/trials/trial-1")
        cfg = Config.load(tmp_path / "base-params.yaml", args.overrides)  # what the trial's `ikd distill` validates
        assert cfg.distill.group_by_length is False
        assert cfg.distill.temperature == (1.0 if bound == "min" else 8.0) and cfg.distill.strategy == "metadistil"
        assert cfg.student.layers == (2 if bound == "min" else 6) and cfg.distill.lr == (
            1e-5 if bound == "min" else 3e-4
        )


def test_the_collector_reads_the_lines_a_trial_prints(experiment):
    _, exp = experiment
    [fmt] = exp["spec"]["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    lines = katib.metric_lines({"accuracy": 0.8671875, "f1": 0.9, "rows": 512})
    assert lines == ["calib-accuracy=0.867188", "calib-f1=0.900000"]
    found = dict(m for line in lines for m in re.findall(fmt, line))
    assert found == {"calib-accuracy": "0.867188", "calib-f1": "0.900000"}
    assert exp["spec"]["objective"]["objectiveMetricName"] in found
    assert re.findall(fmt, "distill[kd]: 100%| 4/4 loss=0.2097 lr=1e-05") == []  # progress bars are not metrics


def test_workspace_claim_and_image_come_from_the_kubeflow_section(tmp_path, base):
    space = Space.load(None, base)
    cfg = Config.load(
        TINY,
        ["kubeflow.workspace_claim=team-pvc", "kubeflow.image=reg/ikd:dev", "kubeflow.distill.accelerator_count=0"],
    )
    exp = katib.experiment(cfg, space, "My Study!", ["accuracy"], 1, 4, teacher=False)
    assert problems(exp) == [] and exp["metadata"]["name"] == "my-study" and exp["spec"]["parallelTrialCount"] == 1
    pod = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-pvc"
    assert pod["containers"][0]["image"] == "reg/ikd:dev" and "--teacher" not in pod["containers"][0]["command"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(pod["containers"][0]["resources"])


# ---- choosing a trial -------------------------------------------------------------------------------------------
def rec(n, value, ms=None, state="complete"):
    lat = {"ms_per_sentence": ms, "layers": 1, "parameters": 1, "latency_ms_batch1": ms} if ms is not None else None
    return {"trial": n, "state": state, "values": {}, "value": value, "latency": lat}


def test_the_frontier_keeps_only_trials_nothing_beats_on_both_axes():
    records = [
        rec(0, 0.80, 10.0),
        rec(1, 0.85, 20.0),
        rec(2, 0.79, 12.0),
        rec(3, 0.90, 40.0),
        rec(4, 0.85, 25.0),
        rec(5, None, 1.0, "pruned"),
    ]
    assert [r["trial"] for r in frontier(records)] == [0, 1, 3]


def test_min_quality_picks_the_fastest_trial_reaching_it_else_the_best():
    records = [rec(0, 0.80, 10.0), rec(1, 0.85, 20.0), rec(2, 0.90, 40.0)]
    assert choose(records, None)[0]["trial"] == 2
    assert choose(records, 0.84)[0]["trial"] == 1
    pick, why = choose(records, 0.95)
    assert pick["trial"] == 2 and "none reaches" in why
    with pytest.raises(Exception, match="no trial finished"):
        choose([rec(0, None, state="fail")], None)


def test_the_space_in_the_docs_loads(tmp_path, base):
    text = (ROOT / "docs" / "tuning.md").read_text()
    block = re.search(r"## The space\n\n```yaml\n(.*?)```", text, re.S)
    assert block, "docs/tuning.md lost its example space"
    space = load(tmp_path, block.group(1), base)
    assert "distill.strategy" in space.keys and space.fixed == {"distill.metadistil.teacher_lr": 1e-5}
