from pathlib import Path

import pytest

from ikd.config import Config
from ikd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_in_the_repo_validates(path):
    cfg = Config.load(path)
    assert Config.from_dict(cfg.to_dict()) == cfg  # round trip


def test_strategy_names_and_sections_come_from_the_registry():
    from ikd.strategies import STRATEGIES

    d = Config().distill
    for name, cls in STRATEGIES.items():
        assert Config.load(None, [f"distill.strategy={name}"]).distill.strategy == name
        if cls.options is not None:  # every strategy with options has its section, with its defaults
            assert d.options(name) == cls.options()
    with pytest.raises(ConfigError, match=r"distill.strategy: must be one of finetune, kd, .*talking"):
        Config.load(None, ["distill.strategy=nope"])
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'distill.metadistil.pilot_rl' \(did you mean "
        r"'distill.metadistil.pilot_lr'\?\).*distill.ikd.teacher_lr: Input should be greater",
    ):
        Config.load(None, ["distill.metadistil.pilot_rl=1", "distill.ikd.teacher_lr=-1"])


def test_unknown_key_names_line_and_suggests(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("seed: 1\ndistill:\n  learning_rate: 0.1\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        Config.load(p)
    msg = str(err.value)
    assert "line 3" in msg and "unknown key 'distill.learning_rate'" in msg
    assert str(p) in msg


def test_typo_suggests_closest_key():
    with pytest.raises(ConfigError, match=r"did you mean 'distill.temperature'"):
        Config.from_dict({"distill": {"temprature": 2}})


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"distill": {"lr": -1, "alpha": 2}, "adapt": {"batch_size": 0}, "bogus": 1})
    problems = err.value.problems
    assert len(problems) == 4
    joined = " ".join(problems)
    for key in ("distill.lr", "distill.alpha", "adapt.batch_size", "bogus"):
        assert key in joined


def test_overrides_parse_yaml_values_and_create_nothing_unknown():
    cfg = Config.load(ROOT / "configs" / "tiny.yaml", ["distill.lr=1e-4", "data.text_fields=[a, b]", "seed=7"])
    assert cfg.distill.lr == 1e-4 and cfg.data.text_fields == ["a", "b"] and cfg.seed == 7
    with pytest.raises(ConfigError, match="unknown key 'distill.lrr'"):
        Config.load(ROOT / "configs" / "tiny.yaml", ["distill.lrr=1"])
    with pytest.raises(ConfigError, match="must look like"):
        Config.load(None, ["novalue"])


def test_wrong_type_and_nan_are_errors():
    with pytest.raises(ConfigError, match="distill.epochs"):
        Config.from_dict({"distill": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="distill.lr"):
        Config.from_dict({"distill": {"lr": float("nan")}})


def test_random_model_needs_model_type():
    with pytest.raises(ConfigError, match="arch.model_type"):
        Config.from_dict({"student": {"name": "x", "init": "random"}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        Config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(bad)


def test_section_hash_depends_only_on_named_sections():
    a = Config()
    b = Config.from_dict({"distill": {"lr": 1e-3}})
    assert a.section_hash("adapt", "teacher") == b.section_hash("adapt", "teacher")
    assert a.section_hash("distill") != b.section_hash("distill")


def test_a_strategy_option_at_its_old_place_names_its_new_sections():
    with pytest.raises(ConfigError) as err:
        Config.load(None, ["distill.teacher_lr=1e-3", "distill.prokt_gamma=0.3", "distill.meta_grad=exact"])
    msg = str(err.value)
    assert (
        "unknown key 'distill.teacher_lr': strategy options live in the strategy's own section: "
        "'distill.prokt.teacher_lr', 'distill.metadistil.teacher_lr', 'distill.ikd.teacher_lr'" in msg
    )
    assert "'distill.prokt_gamma': strategy options live in the strategy's own section: 'distill.prokt.gamma'" in msg
    assert "'distill.meta_grad': strategy options live in the strategy's own section: 'distill.metadistil" in msg


def test_an_imported_teacher_keeps_its_own_tokenizer():
    """adapt.mode: import with another tokenizer named would tokenize the rows for the wrong vocabulary."""
    base = ["adapt.mode=import", "teacher.name=/models/mine", "teacher.init=pretrained"]
    with pytest.raises(ConfigError, match=r"leave teacher.tokenizer unset \(it is 'char'"):
        Config.load(None, [*base, "teacher.tokenizer=char"])
    assert Config.load(None, base).teacher.tokenizer is None
    assert Config.load(None, [*base, "teacher.tokenizer=/models/mine"]).teacher.tokenizer == "/models/mine"
