"""Distillation losses, one class per method, combined as a weighted sum.

A loss sees one training step: the student's logits, the teacher's logits and
the hard labels. Adding a method is adding a class and registering it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KnowledgeDistillation:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    The T^2 factor keeps the soft-target gradients on the scale of the hard
    ones when T changes. Without labels the CE term is dropped and the KL term
    carries the whole weight.
    """

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 100:
            raise ValueError(f"kd temperature must be in (0, 100], got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"kd alpha must be in [0, 1], got {self.alpha}")

    def __str__(self) -> str:
        return f"kd(T={self.temperature:g}, alpha={self.alpha:g})"

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=1),
            F.log_softmax(teacher_logits.float() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        if labels is None:
            return soft
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(student_logits.float(), labels)


@dataclass(frozen=True)
class CrossEntropy:
    """Hard labels only: the student trained alone (the baseline)."""

    def __str__(self) -> str:
        return "cross_entropy"

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("cross_entropy needs labels")
        return F.cross_entropy(student_logits.float(), labels)


Loss = KnowledgeDistillation | CrossEntropy


@dataclass(frozen=True)
class WeightedLoss:
    """A weighted sum of losses; what a job trains on."""

    terms: tuple[tuple[float, Loss], ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("at least one loss term is needed")
        for weight, _ in self.terms:
            if not 0 < weight <= 1000:
                raise ValueError(f"loss weights must be in (0, 1000], got {weight}")

    @property
    def needs_teacher(self) -> bool:
        return any(not isinstance(term, CrossEntropy) for _, term in self.terms)

    def __str__(self) -> str:
        return " + ".join(str(term) if w == 1 else f"{w:g}*{term}" for w, term in self.terms)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        total = student_logits.new_zeros((), dtype=torch.float32)
        for weight, term in self.terms:
            total = total + weight * term(student_logits, teacher_logits, labels)
        return total
