"""A new strategy is one file plus one registry line: this file defines one (its loss, its own config section
``distill.toy``), registers it, and runs it through ``ikd distill`` on configs/tiny.yaml like a built-in one."""

import json

import pytest
import torch
from conftest import ROOT
from pydantic import Field

from ikd.section import Section
from ikd.strategies import STRATEGIES, register
from ikd.strategies.base import Batch, Strategy, masked_ce

TINY = ROOT / "configs" / "tiny.yaml"


class ToyOptions(Section):
    """``distill.toy``: how much of the teacher's argmax to mix into the labels."""

    teacher_weight: float = Field(0.5, ge=0.0, le=1.0)


class Toy(Strategy):
    """CE on the labels, plus CE on the teacher's argmax (hard pseudo-labels) for every row, transfer rows too."""

    name = "toy"
    uses_teacher = True
    options = ToyOptions

    def loss(self, batch: Batch):
        logits = self.student_logits(batch)
        pseudo = self.teacher_logits(batch).argmax(-1)
        hard = torch.nn.functional.cross_entropy(logits, pseudo)
        w = self.opts.teacher_weight
        loss = (1 - w) * masked_ce(logits, batch["labels"]) + w * hard
        return loss, {"pseudo": float(hard.detach())}


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    STRATEGIES.pop("toy", None)


def test_a_strategy_defined_in_one_file_runs_through_ikd_distill(toy, cli, sst2, tmp_path):
    p = ["--params", TINY, "--set", "distill.strategy=toy"]
    assert cli("prepare", *p, "--data", sst2, "--out", tmp_path / "prep")[0] == 0
    assert cli("adapt", *p, "--data", tmp_path / "prep", "--out", tmp_path / "teacher")[0] == 0
    code, _, err = cli(
        "distill",
        *p,
        "--set",
        "distill.toy.teacher_weight=0.25",
        "--data",
        tmp_path / "prep",
        "--teacher",
        tmp_path / "teacher",
        "--out",
        tmp_path / "student",
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["strategy"] == "toy" and metrics["train"]["steps"] > 0
    history = json.loads((tmp_path / "student" / "history.json").read_text())["train"]
    assert all("pseudo" in rec for rec in history)  # the strategy's own log reached the curve
    config = (tmp_path / "student" / "config.yaml").read_text()
    assert "toy:\n    teacher_weight: 0.25" in config  # its section is part of the resolved config (and the key)
    # its section is validated like any other
    code, _, err = cli(
        "distill",
        *p,
        "--set",
        "distill.toy.teacher_weight=2",
        "--data",
        tmp_path / "prep",
        "--teacher",
        tmp_path / "teacher",
        "--out",
        tmp_path / "bad",
    )
    assert code == 2 and "distill.toy.teacher_weight: Input should be less than or equal to 1" in err
    assert not (tmp_path / "bad").exists()
    # it needs a teacher (uses_teacher): without --teacher the step says so
    code, _, err = cli("distill", *p, "--data", tmp_path / "prep", "--out", tmp_path / "no-teacher")
    assert code == 2 and "distill.strategy: toy needs a teacher (--teacher)" in err
