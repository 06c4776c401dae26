import numpy as np
import pytest
import torch

from ikd.config import Config, DistillConfig, ModelConfig
from ikd.core import models
from ikd.errors import ConfigError, TrainingError
from ikd.strategies import STRATEGIES
from ikd.training import loop

TINY = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 200,
    "max_position_embeddings": 64,
}


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
    cpu = torch.device("cpu")
    plain = loop.predict_outputs(model, loop.make_loader(ds, {"student": 0}, 1, False, 0), "student", cpu)["logits"]
    sorted_ = loop.predict_outputs(
        model, loop.make_loader(ds, {"student": 0}, 7, False, 0, sort_by_length=True), "student", cpu
    )["logits"]
    assert torch.allclose(plain, sorted_, atol=1e-5)


def test_cuda_requested_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        loop.select_device(Config(device="cuda"))


def _train_with_dev(eval_every, tracker=None):
    cfg = DistillConfig(epochs=3, batch_size=8, lr=1e-3, eval_every=eval_every, log_every=4)
    loop.seed_everything(0)
    model, _ = models.build(ModelConfig(name="t", init="random", tokenizer="char", arch=TINY), 2, 0)  # dropout 0.1
    loader = loop.make_loader(_dataset(), {"student": 0}, cfg.batch_size, True, 0, group_by_length=True)
    dev_ds = _dataset(20, seed=1)
    dev_loader = loop.make_loader(dev_ds, {"student": 0}, 4, False, 0, sort_by_length=True)  # draws from the RNG
    y = np.asarray(dev_ds["label"])

    def dev():
        logits = loop.predict_outputs(model, dev_loader, "student", torch.device("cpu"))["logits"]
        return {"accuracy": float((logits.argmax(-1).numpy() == y).mean())}

    result = loop.train(STRATEGIES["finetune"](cfg, model), loader, cfg, torch.device("cpu"), dev=dev, tracker=tracker)
    return model, result


def test_dev_metrics_per_epoch_or_every_n_steps_leave_the_training_unchanged(tmp_path):
    from ikd.core.metrics import Tracker

    never, r0 = _train_with_dev("never")
    per_epoch, r1 = _train_with_dev("epoch")
    with Tracker(tmp_path / "live") as tracker:
        every5, r2 = _train_with_dev(5, tracker)
    assert r0.dev_history == [] and "dev" not in r0.metrics()
    assert [(r["step"], r["epoch"]) for r in r1.dev_history] == [(8, 1), (16, 2), (24, 3)]
    assert [r["step"] for r in r2.dev_history] == [5, 10, 15, 20, 24]
    assert r1.metrics()["dev"] == {"accuracy": r1.dev_history[-1]["accuracy"]} == r2.metrics()["dev"]
    assert r1.dev_history[-1]["accuracy"] > 0.9 and r1.eval_seconds > 0
    for a, b, c in zip(never.parameters(), per_epoch.parameters(), every5.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)  # evaluating never moves the training's RNG
    # the tracker got the same curves as the history (DVCLive files)
    dev_tsv = (tmp_path / "live" / "plots" / "metrics" / "dev" / "accuracy.tsv").read_text().splitlines()
    assert dev_tsv[0] == "step\taccuracy" and [int(line.split("\t")[0]) for line in dev_tsv[1:]] == [5, 10, 15, 20, 24]
    loss_tsv = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert len(loss_tsv) - 1 == len(r2.history) == 6
    assert float(loss_tsv[-1].split("\t")[1]) == pytest.approx(r2.history[-1]["loss"])


def test_eval_every_is_validated():
    with pytest.raises(ConfigError, match="distill.eval_every: must be 'epoch', 'never' or a positive number"):
        Config.from_dict({"distill": {"eval_every": 0}})
