import numpy as np
import pytest
import torch

from ikd import loop, models
from ikd.config import Config, DistillConfig, ModelConfig
from ikd.errors import ConfigError, TrainingError
from ikd.strategies import STRATEGIES

TINY = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "vocab_size": 200, "max_position_embeddings": 64}


def _dataset(n=64, seed=0):
    import datasets

    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        length = int(rng.integers(3, 12))
        ids.append([2] + [10 + y] * length + [3])  # the label is written in the tokens: learnable
        labels.append(y)
    return datasets.Dataset.from_dict({"student_input_ids": ids, "label": labels})


def _train(cfg, seed=0):
    loop.seed_everything(seed)
    model, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 2, seed)
    loader = loop.make_loader(_dataset(), {"student": 0}, cfg.batch_size, True, seed, group_by_length=True)
    result = loop.train(STRATEGIES["finetune"](cfg, model), loader, cfg, torch.device("cpu"), desc="t")
    return model, result


def test_loss_goes_down_and_curve_is_recorded():
    cfg = DistillConfig(epochs=4, batch_size=8, lr=3e-3, log_every=8, warmup_ratio=0.0)
    _, result = _train(cfg)
    assert result.steps == 32 and len(result.history) == 4
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 0.7
    assert result.counts["student_fwd"] == 32 and result.counts["student_bwd"] == 32


def test_same_seed_same_weights_and_max_steps():
    cfg = DistillConfig(epochs=2, batch_size=8, lr=1e-3, max_steps=5)
    a, ra = _train(cfg)
    b, _ = _train(cfg)
    assert ra.steps == 5
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na


def test_diverging_loss_is_a_training_error():
    with pytest.raises(TrainingError, match="lower the learning rate"):
        # validation caps lr below 1; bypass it to force a divergence
        _train(DistillConfig(epochs=1, batch_size=8, grad_clip=None, warmup_ratio=0.0).model_copy(update={"lr": 1e30}))


def test_length_grouped_batches_cover_every_row_once_and_group_lengths():
    lengths = np.random.default_rng(0).integers(1, 100, size=1000)
    sampler = loop.LengthGroupedSampler(lengths, 16, seed=1, shuffle=True)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000)) and len(batches) == len(sampler)
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) > 1])
    assert spread < 10  # random batches of 16 would spread ~90 tokens
    assert [list(b) for b in sampler] != batches  # a new order each epoch


def test_predict_restores_row_order_after_sorting():
    ds = _dataset(20)
    model, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 2, 0)
    plain = loop.predict(model, loop.make_loader(ds, {"student": 0}, 1, False, 0), "student", torch.device("cpu"))
    sorted_ = loop.predict(model, loop.make_loader(ds, {"student": 0}, 7, False, 0, sort_by_length=True), "student",
                           torch.device("cpu"))
    assert torch.allclose(plain, sorted_, atol=1e-5)


def test_cuda_requested_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        loop.select_device(Config(device="cuda"))
