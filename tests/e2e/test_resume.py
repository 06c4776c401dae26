"""Checkpoint and resume: a killed `ikd distill` / `ikd adapt` re-run ends with the weights of an uninterrupted run;
corrupt or foreign checkpoints are refused; equal config and seed give equal bytes."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, ROOT, shared
from safetensors.torch import load_file

TINY = ROOT / "configs" / "tiny.yaml"
# 64 training rows, batch 16: 4 steps an epoch (12 steps in 3 epochs)
SHORT = ["--set", "distill.epochs=3", "--set", "adapt.epochs=3", "--set", "distill.log_every=3"]
# 10 epochs: a run long enough to be killed part-way
LONG = [*SHORT, "--set", "distill.epochs=10"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ikd.cli import main

    out = tmp_path_factory.mktemp("resume")
    assert main(["prepare", "--params", str(TINY), "--data", str(shared("sst2")), "--out", str(out / "prep")]) == 0
    assert main(["adapt", "--params", str(TINY), "--data", str(out / "prep"), "--out", str(out / "teacher")]) == 0
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder`` (student, learnt teacher, added modules)."""
    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def distill_args(prepared: Path, out: Path, strategy: str, *extra: str, steps: list[str] = SHORT) -> list[str]:
    return [
        "distill",
        "--params",
        str(TINY),
        *steps,
        "--set",
        f"distill.strategy={strategy}",
        *extra,
        "--data",
        str(prepared / "prep"),
        "--teacher",
        str(prepared / "teacher"),
        "--out",
        str(out),
    ]


def ckpt_steps(folder: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in folder.glob("step-*")) if folder.is_dir() else []


@pytest.mark.parametrize("strategy", ["kd", "ikd"])
def test_sigkill_after_the_second_checkpoint_then_rerun_gives_the_uninterrupted_weights(
    prepared, tmp_path, cli, strategy
):
    # the reference: no checkpoints at all
    ref = tmp_path / "ref"
    code, _, err = cli(*distill_args(prepared, ref, strategy, steps=LONG))
    assert code == 0, err
    # the same command with checkpoints every 2 steps, killed (SIGKILL: no clean-up) once the second one exists
    out = tmp_path / "killed"
    argv = [
        str(BIN / "ikd"),
        *distill_args(prepared, out, strategy, "--set", "checkpoint.every=2", "--set", "checkpoint.keep=3", steps=LONG),
    ]
    ckpts = tmp_path / "killed.checkpoints"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(ckpt_steps(ckpts)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    err = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{err[-2000:]}"
    seen = ckpt_steps(ckpts)
    assert len(seen) >= 2 and seen[-1] < 40, seen
    assert not out.exists()  # nothing half-written
    # re-run the same command: it resumes from the newest checkpoint and ends where the reference did
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed at step {seen[-1]} of 40" in rerun.stderr
    assert_same_weights(ref, out)
    metrics = json.loads((out / "metrics.json").read_text())["train"]
    reference = json.loads((ref / "metrics.json").read_text())["train"]
    assert metrics["resumed_from_step"] == seen[-1] and metrics["steps"] == 40
    assert metrics["final_loss"] == reference["final_loss"] and metrics["counts"] == reference["counts"]
    history = json.loads((out / "history.json").read_text())
    assert history == json.loads((ref / "history.json").read_text())  # the curves before the kill are kept
    assert not ckpts.exists()  # removed once the output is written


@pytest.mark.parametrize("strategy", ["finetune", "kd", "prokt", "metadistil", "ikd", "talking"])
def test_every_strategy_resumes_exactly_from_any_checkpoint(prepared, tmp_path, cli, strategy):
    """A run that keeps its checkpoints; a second run given only an early one (what a kill after it leaves)."""
    keep = ["--set", "checkpoint.every=3", "--set", "checkpoint.keep=20", "--set", "checkpoint.keep_after_success=true"]
    extra = ["--set", "distill.hidden_weight=1.0"] if strategy == "kd" else []
    code, _, err = cli(*distill_args(prepared, tmp_path / "a", strategy, *keep, *extra))
    assert code == 0, err
    assert ckpt_steps(tmp_path / "a.checkpoints") == [3, 6, 9, 12]
    (tmp_path / "b.checkpoints").mkdir()
    # step 9 is inside epoch 3 (4 steps an epoch); for ikd a look-ahead gradient is pending there
    (tmp_path / "a.checkpoints" / "step-00000009").rename(tmp_path / "b.checkpoints" / "step-00000009")
    code, _, err = cli(*distill_args(prepared, tmp_path / "b", strategy, *extra))
    assert code == 0, err
    assert "resumed at step 9 of 12" in err
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_adapt_resumes_at_an_epoch_boundary(prepared, tmp_path, cli):
    args = ["adapt", "--params", str(TINY), *SHORT, "--data", str(prepared / "prep")]
    keep = ["--set", "checkpoint.every=4", "--set", "checkpoint.keep_after_success=true"]
    assert cli(*args, *keep, "--out", tmp_path / "a")[0] == 0
    (tmp_path / "b.checkpoints").mkdir()
    # step 8 ends epoch 2: its end-of-epoch dev evaluation still runs after the resume
    (tmp_path / "a.checkpoints" / "step-00000008").rename(tmp_path / "b.checkpoints" / "step-00000008")
    code, _, err = cli(*args, "--out", tmp_path / "b")
    assert code == 0 and "resumed at step 8 of 12" in err, err
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    dev = [json.loads((tmp_path / x / "history.json").read_text())["dev"] for x in "ab"]
    assert dev[0] == dev[1] and [r["step"] for r in dev[1]] == [4, 8, 12]


def test_same_config_and_seed_give_identical_files(prepared, tmp_path, cli):
    for name in ("a", "b"):
        code, _, err = cli(*distill_args(prepared, tmp_path / name, "kd"))
        assert code == 0, err
    for f in sorted((tmp_path / "a").rglob("*.safetensors")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f


@pytest.fixture
def interrupted(prepared, tmp_path, cli):
    """A distill output with its checkpoints kept, standing in for a killed run's checkpoint folder."""
    keep = ["--set", "checkpoint.every=4", "--set", "checkpoint.keep_after_success=true"]
    assert cli(*distill_args(prepared, tmp_path / "run", "kd", *keep))[0] == 0
    return tmp_path / "run.checkpoints"


def test_a_corrupt_checkpoint_is_refused_naming_the_file(prepared, tmp_path, cli, interrupted):
    newest = interrupted / "step-00000012"
    data = bytearray((newest / "weights.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (newest / "weights.safetensors").write_bytes(bytes(data))
    out = tmp_path / "run"
    before = (out / "metrics.json").read_bytes()
    code, _, err = cli(*distill_args(prepared, out, "kd"))
    assert code == 2 and "Traceback" not in err
    assert f"{newest / 'weights.safetensors'}: sha256 does not match" in err and "--restart" in err
    assert (out / "metrics.json").read_bytes() == before  # the good output is untouched
    assert (newest / "weights.safetensors").is_file()  # nothing deleted behind the user's back
    # --restart discards the checkpoints and trains from the start
    code, _, err = cli(*distill_args(prepared, out, "kd", "--restart"))
    assert code == 0 and "resumed" not in err, err
    assert not interrupted.exists()


def test_a_checkpoint_of_another_config_is_refused_naming_the_key(prepared, tmp_path, cli, interrupted):
    code, _, err = cli(*distill_args(prepared, tmp_path / "run", "kd", "--set", "distill.lr=0.002"))
    assert code == 2 and "Traceback" not in err
    assert "different config" in err and "distill.lr: 0.001 -> 0.002" in err


def test_an_incomplete_checkpoint_folder_is_ignored(prepared, tmp_path, cli, interrupted):
    """A kill while a checkpoint was being written leaves a temporary folder: never read, removed."""
    partial = interrupted / ".step-00000016.tmp-abc"
    partial.mkdir()
    (partial / "weights.safetensors").write_bytes(b"\0" * 10)
    code, _, err = cli(*distill_args(prepared, tmp_path / "run", "kd"))
    assert code == 0 and "resumed at step 12 of 12" in err, err
    assert not partial.exists()


def test_checkpoint_files_load_with_weights_only(prepared, interrupted):
    assert ckpt_steps(interrupted) == [8, 12]  # checkpoint.keep: 2
    state = torch.load(interrupted / "step-00000012" / "state.pt", weights_only=True)
    assert set(state) == {"loop", "optimizer", "scheduler", "strategy", "rng"}
    meta = json.loads((interrupted / "step-00000012" / "checkpoint.json").read_text())
    assert meta["step"] == 12 and set(meta["files"]) == {"weights.safetensors", "state.pt"}
