"""The loop's optimizer step: gradient accumulation (N micro-batches = one update of N x the batch), mixed
precision (bf16 autocast on CPU; fp16 only on CUDA), and strategies that take their own steps refusing both."""

import numpy as np
import pytest
import torch

from ikd.config import DistillConfig, ModelConfig
from ikd.core import models
from ikd.errors import ConfigError
from ikd.strategies import STRATEGIES, TeacherOutputs
from ikd.training import loop

ARCH = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 200,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
ROWS = 96
GEN = torch.Generator()


def _dataset():
    import datasets

    rng = np.random.default_rng(0)
    ids, labels = [], []
    for _ in range(ROWS):
        y = int(rng.integers(0, 2))
        ids.append([2] + [10 + y + int(rng.integers(0, 3))] * int(rng.integers(3, 12)) + [3])
        labels.append(y)
    return datasets.Dataset.from_dict({"student_input_ids": ids, "label": labels})


def _kd(batch_size: int, accumulation: int = 1, precision: str = "fp32", epochs: int = 3):
    """kd from fixed teacher logits (cached outputs) into a tiny student without dropout; returns the student's
    weights and the TrainResult. Rows are shuffled without length grouping: the same row order at any batch size."""
    cfg = DistillConfig(
        batch_size=batch_size,
        accumulation=accumulation,
        precision=precision,
        epochs=epochs,
        lr=3e-3,
        warmup_ratio=0.0,
        group_by_length=False,
        alpha=0.7,
        log_every=2,
    )
    loop.seed_everything(0)
    student, _ = models.build(ModelConfig(name="s", init="random", tokenizer="char", arch=ARCH, dropout=0.0), 2, 0)
    y = torch.tensor(_dataset()["label"])  # a teacher that knows the task, with some noise
    logits = 4 * torch.nn.functional.one_hot(y, 2).float() - 2 + torch.randn(ROWS, 2, generator=GEN.manual_seed(1))
    strategy = STRATEGIES["kd"](cfg, student, None, TeacherOutputs(logits, {}))
    loader = loop.make_loader(_dataset(), {"student": 0}, batch_size, True, 0)
    result = loop.train(strategy, loader, cfg, torch.device("cpu"), desc="distill[kd]")
    return {k: v.detach().clone() for k, v in student.state_dict().items()}, result


def test_accumulation_reaches_the_weights_of_one_big_batch():
    big, r_big = _kd(batch_size=32)
    acc, r_acc = _kd(batch_size=8, accumulation=4)
    assert r_big.steps == r_acc.steps == 3 * ROWS // 32  # steps count optimizer updates
    assert r_acc.counts["student_bwd"] == 4 * r_acc.steps  # one backward per micro-batch
    diff = max(float((big[k] - acc[k]).abs().max()) for k in big)
    assert diff < 1e-5, diff
    plain, _ = _kd(batch_size=8)  # without accumulation the same micro-batches give other weights
    assert max(float((big[k] - plain[k]).abs().max()) for k in big) > 1e-3


def test_accumulation_with_a_partial_last_group_covers_every_batch():
    _, result = _kd(batch_size=8, accumulation=5, epochs=1)  # 12 batches: updates of 5, 5 and 2
    assert result.steps == 3 and result.counts["student_bwd"] == 12


def test_bf16_kd_trains_on_cpu_and_stays_close_to_fp32():
    fp32, r32 = _kd(batch_size=16)
    bf16, r16 = _kd(batch_size=16, precision="bf16")
    assert all(v.dtype == torch.float32 for v in bf16.values())  # weights (and optimizer state) stay fp32
    assert r16.history[-1]["loss"] < r16.history[0]["loss"]  # it learns
    assert abs(r16.final_loss - r32.final_loss) < 0.1 * abs(r32.final_loss) + 0.02
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)  # autocast really ran in bf16


def test_fp16_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match=r"distill.precision: fp16 needs a CUDA device"):
        _kd(batch_size=16, precision="fp16")


@pytest.mark.parametrize("name", ["prokt", "metadistil", "ikd"])
@pytest.mark.parametrize(("key", "value"), [("accumulation", 2), ("precision", "bf16")])
def test_strategies_that_take_their_own_steps_refuse_accumulation_and_mixed_precision(name, key, value):
    assert STRATEGIES[name].owns_step and not STRATEGIES["kd"].owns_step
    cfg = DistillConfig(strategy=name, batch_size=8, **{key: value})
    student, _ = models.build(ModelConfig(name="s", init="random", tokenizer="char", arch=ARCH), 2, 0)
    teacher, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=ARCH), 2, 1)
    loader = loop.make_loader(_dataset(), {"student": 0}, 8, True, 0)
    quiz = loop.make_loader(_dataset(), {"student": 0}, 8, True, 1) if STRATEGIES[name].uses_quiz else None
    strategy = STRATEGIES[name](cfg, student, teacher, quiz=quiz)
    with pytest.raises(ConfigError, match=rf"distill.{key}: strategy {name} takes its own optimizer steps"):
        loop.train(strategy, loader, cfg, torch.device("cpu"), desc=f"distill[{name}]")
