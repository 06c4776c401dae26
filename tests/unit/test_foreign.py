"""A transformers sequence classifier behind the teacher's interface: each head family kept as it is."""

import pytest
import torch

from ikd.core import foreign
from ikd.errors import ModelError

SIZES = {"vocab_size": 200, "max_position_embeddings": 66, "num_labels": 3}


def tiny(kind):
    import transformers as tf

    if kind == "distilbert":
        conf = tf.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **SIZES)
        return tf.DistilBertForSequenceClassification(conf)
    conf_cls, model_cls = {
        "bert": (tf.BertConfig, tf.BertForSequenceClassification),
        "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification),
        "mpnet": (tf.MPNetConfig, tf.MPNetForSequenceClassification),
    }[kind]
    conf = conf_cls(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **SIZES)
    return model_cls(conf)


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet", "distilbert"])
def test_each_head_family_answers_as_itself(tmp_path, kind):
    torch.manual_seed(0)
    original = tiny(kind).eval()
    original.save_pretrained(str(tmp_path))
    teacher = foreign.load(tmp_path)
    ids = torch.randint(5, 150, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(teacher(ids, mask, torch.zeros_like(ids)), want)
        logits, states = teacher(ids, mask, pooled_layers=(0, 2))
    assert torch.equal(logits, want) and [s.shape for s in states] == [(2, 16), (2, 16)]
    assert (teacher.num_layers, teacher.hidden_size, teacher.num_labels) == (2, 16, 3)
    with pytest.raises(ModelError, match="not a linear head"):
        teacher.head  # noqa: B018
    with pytest.raises(ModelError, match="not pooled features"):
        teacher(ids, mask, features=True)
