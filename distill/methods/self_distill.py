"""Self-distillation from two distortions of each image, no teacher (Xu & Liu 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill import features
from distill.losses import Loss, MethodConfig, Param, Step, register, require_labels


@register
class SelfDistillation(Loss):
    """Xu & Liu (AAAI 2019), "Data-Distortion Guided Self-Distillation for Deep Neural Networks".

    One network sees two distortions of each image:
    ``CE(z1, y) + CE(z2, y) + kl_weight * (KL(p1 || p2) + KL(p2 || p1))
    + mmd_weight * MMD(f1, f2)``, with MMD the squared distance between the
    batch means of the two embeddings (linear kernel). No teacher is used.
    """

    name = "self_distill"
    summary = "Xu & Liu 2019: one network, two distortions of each image; CE + symmetric KL + embedding MMD, no teacher"
    params = {"kl_weight": Param(1.0, 0.0, 1e3), "mmd_weight": Param(1.0, 0.0, 1e3)}
    needs_teacher = False
    needs_labels = True
    views = 2

    def __init__(self, embedding: str, kl_weight: float = 1.0, mmd_weight: float = 1.0) -> None:
        super().__init__()
        self.embedding, self.kl_weight, self.mmd_weight = embedding, kl_weight, mmd_weight

    @classmethod
    def build(
        cls, config: MethodConfig, teacher: nn.Module | None, student: nn.Module, input_shape: tuple[int, int, int]
    ) -> Loss:
        return cls(features.embedding(student), config.param("kl_weight"), config.param("mmd_weight"))

    def extra_repr(self) -> str:
        return f"kl_weight={self.kl_weight:g}, mmd_weight={self.mmd_weight:g}"

    def student_layers(self) -> list[str]:
        return [self.embedding]

    def forward(self, step: Step) -> torch.Tensor:
        labels = require_labels(step, self.name)
        assert step.second_logits is not None
        z1, z2 = step.student_logits.float(), step.second_logits.float()
        log_p1, log_p2 = F.log_softmax(z1, dim=1), F.log_softmax(z2, dim=1)
        kl = F.kl_div(log_p2, log_p1, reduction="batchmean", log_target=True) + F.kl_div(
            log_p1, log_p2, reduction="batchmean", log_target=True
        )
        f1 = step.student_features[self.embedding].float().flatten(1)
        f2 = step.second_features[self.embedding].float().flatten(1)
        mmd = (f1.mean(0) - f2.mean(0)).pow(2).sum()
        return F.cross_entropy(z1, labels) + F.cross_entropy(z2, labels) + self.kl_weight * kl + self.mmd_weight * mmd
