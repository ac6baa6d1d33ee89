"""Knowledge distillation on softened logits (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import Loss, Param, Step, register


@register
class KnowledgeDistillation(Loss):
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    The T^2 factor keeps the soft-target gradients on the scale of the hard
    ones when T changes. Without labels the CE term is dropped and the KL term
    carries the whole weight.
    """

    name = "kd"
    summary = "Hinton et al. 2015: KL to the teacher's softened logits + CE on labels"
    params = {"temperature": Param(4.0, 0.05, 100.0), "alpha": Param(0.9, 0.0, 1.0)}

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.check(temperature=temperature, alpha=alpha)
        self.temperature, self.alpha = temperature, alpha

    def extra_repr(self) -> str:
        return f"T={self.temperature:g}, alpha={self.alpha:g}"

    def forward(self, step: Step) -> torch.Tensor:
        assert step.teacher_logits is not None
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(step.student_logits.float() / t, dim=1),
            F.log_softmax(step.teacher_logits.float() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        if step.labels is None:
            return soft
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(step.student_logits.float(), step.labels)
