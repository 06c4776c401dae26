"""``kd``: vanilla knowledge distillation from a frozen teacher (Hinton et al.), the baseline.

Loss: alpha * tau^2 * KL(p_T^tau || p_S^tau) + (1 - alpha) * CE. The teacher never changes, so its
logits can come from :class:`~ikd.strategies.base.TeacherOutputs` computed once per training set.
"""

from ikd.strategies.base import Strategy, kd_loss


class KD(Strategy):
    name = "kd"
    uses_teacher = True

    def loss(self, batch):
        t = self.teacher_logits(batch)
        s = self.student_logits(batch)
        return kd_loss(s, t, batch["labels"], self.cfg.temperature, self.cfg.alpha)
