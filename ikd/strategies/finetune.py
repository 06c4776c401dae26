"""``finetune``: cross-entropy on the labels, no teacher (baseline; also how ``adapt`` trains the teacher)."""

from ikd.strategies.base import Strategy, masked_ce


class Finetune(Strategy):
    name = "finetune"

    def loss(self, batch):
        logits = self.student_logits(batch)
        return masked_ce(logits, batch["labels"]), {}
