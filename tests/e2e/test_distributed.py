"""`ikd distill` under torchrun: 2 CPU processes (gloo) train the same student (and the same learning teacher) as 1
process at equal global batch, and only rank 0 writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, shared
from safetensors.torch import load_file

TINY = ROOT / "configs" / "tiny.yaml"
# no dropout: the two runs draw different random numbers per rank, the weights must not depend on them
NO_DROPOUT = [
    "--set",
    "student.dropout=0.0",
    "--set",
    "student.arch.hidden_dropout_prob=0.0",
    "--set",
    "student.arch.attention_probs_dropout_prob=0.0",
    "--set",
    "threads=1",
]
# 16 unlabeled transfer rows among the 64 labeled ones (80 rows, batch 16: 5 steps an epoch): the two ranks' slices
# hold different numbers of labeled rows, so a CE averaged per slice would not be the CE of the global batch
PREPARE = ["--params", str(TINY), *NO_DROPOUT, "--set", "data.transfer=rest", "--set", "data.max_transfer_rows=16"]


# learning teachers: a teacher lr and a pilot step large enough that a wrong meta-gradient shows in the weights
def learning(name: str) -> list[str]:
    return ["--set", f"distill.{name}.teacher_lr=1e-3", "--set", f"distill.{name}.pilot_lr=0.1"]


CASES = {
    "kd": [],
    "talking": [],
    "talking:live": ["--set", "distill.cache_teacher_outputs=false"],
    "metadistil": [
        *learning("metadistil"),
        "--set",
        "distill.metadistil.meta_grad=exact",
        "--set",
        "distill.metadistil.reuse_teacher_outputs=false",
    ],
    "ikd": [*learning("ikd"), "--set", "distill.ikd.meta_grad=jvp"],
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from ikd.cli import main

    out = tmp_path_factory.mktemp("distributed")
    assert main(["prepare", *PREPARE, "--data", str(shared("sst2")), "--out", str(out / "prep")]) == 0
    assert main(["adapt", *PREPARE, "--data", str(out / "prep"), "--out", str(out / "teacher")]) == 0
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):  # encoder and classification head
        out.update({f"{f.stem}/{k}": v for k, v in load_file(str(f)).items()})
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", list(CASES))
def test_two_processes_match_one_at_equal_global_batch(cli, prepared, tmp_path, strategy):
    p = [
        "--params",
        TINY,
        *NO_DROPOUT,
        "--set",
        f"distill.strategy={strategy.split(':')[0]}",
        "--set",
        "distill.epochs=2",
        *CASES[strategy],
    ]
    args = ["distill", *map(str, p), "--data", str(prepared / "prep"), "--teacher", str(prepared / "teacher")]
    assert cli(*args, "--out", tmp_path / "one")[0] == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "--no-python",
            str(Path(sys.executable).parent / "ikd"),
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: rank 0 of 2 (gloo)" in proc.stderr and "distributed: rank 1 of 2 (gloo)" in proc.stderr
    diff = max_diff(weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model"))
    assert diff < 1e-4, diff
    if strategy in ("metadistil", "ikd"):  # the learning teacher too, and it did learn
        start, one, two = (
            weights(f)
            for f in (prepared / "teacher" / "model", tmp_path / "one" / "teacher", tmp_path / "two" / "teacher")
        )
        assert max_diff(start, one) > 1e-3
        diff = max_diff(one, two)
        assert diff < 1e-4, diff
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2 and m1["train"]["steps"] == m2["train"]["steps"] == 10
    assert m1["transfer_rows"] == m2["transfer_rows"] == 16
    assert abs(m1["train"]["final_loss"] - m2["train"]["final_loss"]) < 0.05  # rank 0 logs its half's loss
    # rank 0 alone wrote: one finished folder, no temporary leftovers
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".")) == []
    assert proc.stderr.count("distill: wrote") == 1  # followers stay quiet
