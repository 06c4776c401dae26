"""``finetune``: cross-entropy on the labels, no teacher (baseline; also how ``adapt`` trains the teacher)."""

import torch.nn.functional as F

from ikd.strategies.base import Strategy


class Finetune(Strategy):
    name = "finetune"

    def loss(self, batch):
        logits = self.student_logits(batch)
        return F.cross_entropy(logits, batch["labels"]), {}
