"""`ikd distill` under torchrun: 2 CPU processes (gloo) train the same student as 1 process at equal global batch,
and only rank 0 writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
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


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((folder / "model").glob("*.safetensors")):  # encoder and classification head
        out.update({f"{f.stem}/{k}": v for k, v in load_file(str(f)).items()})
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", ["kd", "talking"])
def test_two_processes_match_one_at_equal_global_batch(cli, sst2, tmp_path, strategy):
    p = ["--params", TINY, *NO_DROPOUT, "--set", f"distill.strategy={strategy}", "--set", "distill.epochs=2"]
    assert cli("prepare", *p, "--data", sst2, "--out", tmp_path / "prep")[0] == 0
    assert cli("adapt", *p, "--data", tmp_path / "prep", "--out", tmp_path / "teacher")[0] == 0
    args = ["distill", *map(str, p), "--data", str(tmp_path / "prep"), "--teacher", str(tmp_path / "teacher")]
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
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys()
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff < 1e-4, diff
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2 and m1["train"]["steps"] == m2["train"]["steps"] == 8
    assert abs(m1["train"]["final_loss"] - m2["train"]["final_loss"]) < 0.05  # rank 0 logs its half's loss
    # rank 0 alone wrote: one finished folder, no temporary leftovers
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".")) == []
    assert proc.stderr.count("distill: wrote") == 1  # followers stay quiet
