"""``talking``: Talking Models — student and teacher exchange encoded messages (Zhao et al., arXiv 2310.03188).

Patent note for users: a US patent application (publication 2024/0386280) describes encoded message
exchange between a student and a teacher model. Check its status for your jurisdiction and use before
deploying this strategy commercially; the other strategies are not concerned.

Trainable: the student plus four modules — student encoder E_S, student decoder D_S, teacher encoder E_T,
teacher decoder D_T — between hidden states and a shared message space of width ``message_dim``. The
teacher's weights never change. One round on input x:

1. the student sends m_S = E_S(h_S^(l_s)(x));
2. the teacher interprets: D_T(m_S) is placed at its hidden state l_t and its own layers l_t+1..h_t run on
   it (frozen weights, gradients through activations); it replies m_T = E_T(h~^(h_t));
3. the student reads h^ = D_S(m_T).

Messages are sentence-level: states are pooled the way each model's head pools (mean for
sentence-transformers checkpoints), so teacher and student may differ in width AND tokenizer (MPNet vs
BERT WordPiece). The placed message is a one-position sequence: a sequence of identical positions gives the
same state at every position through self-attention, so one position is exact and cheap (our choice).

Loss: CE(y, p_S) (or the KD loss with an adapted teacher and ``logit_kd``) + w1 * L_interact + w2 * L_MC +
w3 * L_SC, with L_interact = ||h_S^(h_s) - h^||^2, L_MC = ||E_S(h_S^(l_s)) - E_T(h_T^(l_t))||^2 and
L_SC = ||D_T(E_T(h_T^(h_t))) - h_T^(h_t)||^2 + ||D_S(E_S(h_S^(h_s))) - h_S^(h_s)||^2 (mean squared errors).
With ``rounds`` > 1, h^ is fed back as the student's state for the next message; L_interact averages
the rounds. The teacher's own states on x are cached (frozen teacher); the interpret pass cannot be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from ikd.errors import ConfigError
from ikd.section import Section
from ikd.strategies.base import CacheSpec, Strategy, kd_loss, masked_ce, model_inputs

if TYPE_CHECKING:
    from ikd.core.classifier import SequenceClassifier


class TalkingOptions(Section):
    """``distill.talking``: message encoders/decoders between student and teacher."""

    message_dim: int = Field(256, ge=1, description="Width of the shared message space.")
    module: Literal["linear", "mlp"] = Field("mlp", description="Encoders/decoders: linear or Dense-ReLU-Dense.")
    student_layers: tuple[int, int] | None = Field(
        None, description="[l_s, h_s] hidden-state indices (0 = embeddings); default [n/2, n]."
    )
    teacher_layers: tuple[int, int] | None = Field(
        None, description="[l_t, h_t] hidden-state indices; the teacher runs layers l_t+1..h_t; default [n/2, n]."
    )
    rounds: int = Field(1, ge=1, le=8, description="Communication rounds; the reply feeds the next round's message.")
    w_interact: float = Field(1.0, ge=0.0, description="w1: weight of L_interact.")
    w_message: float = Field(1.0, ge=0.0, description="w2: weight of L_MC (message consistency).")
    w_state: float = Field(1.0, ge=0.0, description="w3: weight of L_SC (state consistency).")
    teacher_source: Literal["pretrained", "adapted"] = Field(
        "adapted", description="adapted: the adapt step's teacher; pretrained: teacher.name as loaded."
    )
    logit_kd: bool = Field(True, description="Adapted teacher: use the KD loss instead of CE for the task term.")

    @field_validator("student_layers", "teacher_layers")
    @classmethod
    def _ordered(cls, pair):
        if pair is not None and not 0 <= pair[0] < pair[1]:
            raise ValueError("must be [low, high] with 0 <= low < high")
        return pair


def _module(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


def talking_layers(cfg, teacher, student) -> tuple[tuple[int, int], tuple[int, int]]:
    """((l_s, h_s), (l_t, h_t)) hidden-state indices, defaults filled and checked against both models."""
    tc = cfg.options("talking")
    s = tuple(tc.student_layers) if tc.student_layers else (student.num_layers // 2, student.num_layers)
    t = tuple(tc.teacher_layers) if tc.teacher_layers else (teacher.num_layers // 2, teacher.num_layers)
    for key, pair, n in (("student_layers", s, student.num_layers), ("teacher_layers", t, teacher.num_layers)):
        if pair[1] > n:
            raise ConfigError(f"distill.talking.{key}: {list(pair)} is out of range (the model has {n} layers)")
    return s, t


class Messenger(nn.Module):
    """E_S, D_S, E_T, D_T between the student width, the teacher width and the message width."""

    def __init__(self, kind: str, d_student: int, d_teacher: int, d_message: int):
        super().__init__()
        self.enc_s = _module(kind, d_student, d_message)
        self.dec_s = _module(kind, d_message, d_student)
        self.enc_t = _module(kind, d_teacher, d_message)
        self.dec_t = _module(kind, d_message, d_teacher)


class Talking(Strategy):
    name = "talking"
    uses_teacher = True
    runs_teacher_layers = True
    teacher: SequenceClassifier  # always given (uses_teacher)
    options = TalkingOptions

    def __init__(self, cfg, student, teacher=None, teacher_outputs=None, input_side="student", quiz=None):
        super().__init__(cfg, student, teacher, teacher_outputs, input_side, quiz)
        (self.ls, self.hs), (self.lt, self.ht) = talking_layers(cfg, teacher, student)
        tc = self.opts
        ref = next(student.parameters())
        self.messenger = Messenger(tc.module, student.hidden_size, teacher.hidden_size, tc.message_dim).to(
            ref.device, ref.dtype
        )
        for p in teacher.parameters():
            p.requires_grad_(False)

    @classmethod
    def teacher_source(cls, cfg):
        return cfg.options("talking").teacher_source

    @classmethod
    def cache_spec(cls, cfg, teacher, student):
        _, (lt, ht) = talking_layers(cfg, teacher, student)
        return CacheSpec(hidden=(lt, ht))

    def extra_modules(self):
        return {"talking": self.messenger}

    def _teacher(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher logits [B, C], pooled state at l_t [B, H_T], at h_t [B, H_T]), cached or no-grad forward."""
        c = self.teacher_outputs
        if c is not None and self.lt in c.hidden and self.ht in c.hidden:
            idx, dev = batch["index"], batch["labels"].device
            return c.logits[idx].to(dev), c.hidden[self.lt][idx].to(dev), c.hidden[self.ht][idx].to(dev)
        self.counts["teacher_fwd"] += 1
        with torch.no_grad():
            logits, (low, high) = self.teacher(**model_inputs(batch["teacher"]), pooled_layers=(self.lt, self.ht))
        return logits, low, high

    def interpret(self, message: torch.Tensor) -> torch.Tensor:
        """The teacher's reply m_T [B, M] to the student's message [B, M] (teacher layers l_t+1..h_t)."""
        placed = self.messenger.dec_t(message).unsqueeze(1)  # [B, 1, H_T]
        self.counts["teacher_partial_fwd"] += 1
        return self.messenger.enc_t(self.teacher.run_layers(placed, self.lt, self.ht)[:, 0])

    def loss(self, batch):
        tc = self.opts
        m = self.messenger
        self.counts["student_fwd"] += 1
        s_logits, (s_low, s_high) = self.student(
            **model_inputs(batch[self.input_side]), pooled_layers=(self.ls, self.hs)
        )
        t_logits, t_low, t_high = self._teacher(batch)
        state = s_low
        interact = s_high.new_zeros(())
        for _ in range(tc.rounds):
            reply = m.dec_s(self.interpret(m.enc_s(state)))
            interact = interact + F.mse_loss(s_high, reply)
            state = reply
        interact = interact / tc.rounds
        message = F.mse_loss(m.enc_s(s_low), m.enc_t(t_low))
        consistency = F.mse_loss(m.dec_t(m.enc_t(t_high)), t_high) + F.mse_loss(m.dec_s(m.enc_s(s_high)), s_high)
        if tc.logit_kd and tc.teacher_source == "adapted":
            task, logs = kd_loss(
                s_logits, t_logits, batch["labels"], self.cfg.temperature, self.cfg.alpha, self.cfg.soft_loss
            )
        else:
            task = masked_ce(s_logits, batch["labels"])
            logs = {"ce": float(task.detach())}
        loss = task + tc.w_interact * interact + tc.w_message * message + tc.w_state * consistency
        return loss, {
            **logs,
            "interact": float(interact.detach()),
            "message": float(message.detach()),
            "state": float(consistency.detach()),
        }
