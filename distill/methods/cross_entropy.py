"""The student trained alone on hard labels: the baseline every method is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import Loss, Step, register, require_labels


@register
class CrossEntropy(Loss):
    """Hard labels only: the student trained alone (the baseline)."""

    name = "cross_entropy"
    summary = "the student alone on hard labels (the baseline)"
    needs_teacher = False
    needs_labels = True

    def forward(self, step: Step) -> torch.Tensor:
        return F.cross_entropy(step.student_logits.float(), require_labels(step, self.name))
