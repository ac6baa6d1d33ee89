"""Decoupled knowledge distillation: KD's target and non-target parts, weighted freely (Zhao et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import Loss, Param, Step, register, require_labels


@register
class DecoupledKnowledgeDistillation(Loss):
    """Zhao et al. (CVPR 2022), "Decoupled Knowledge Distillation".

    KD's KL splits into a target-class part (TCKD: the binary split
    [p_target, 1 - p_target], teacher against student) and a non-target part
    (NCKD: the distribution over the other classes, renormalised without the
    target). Inside KD, NCKD is weighted by the teacher's 1 - p_target, so it
    fades exactly where the teacher is confident; DKD weights both freely:
    ``CE(s, y) + T^2 * (alpha * TCKD + beta * NCKD)``, all at temperature T.
    The defaults are the paper's for CIFAR-100 (alpha 1, beta 8, T 4); it
    also ramps the DKD part in over the first 20 of 240 epochs, which this
    term does not.
    """

    name = "dkd"
    summary = "Zhao et al. 2022: KD split into target-class (`alpha`) and non-target-class (`beta`) terms + CE on labels"
    params = {"alpha": Param(1.0, 0.0, 100.0), "beta": Param(8.0, 0.0, 100.0), "temperature": Param(4.0, 0.05, 100.0)}
    needs_labels = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.check(alpha=alpha, beta=beta, temperature=temperature)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, T={self.temperature:g}"

    def forward(self, step: Step) -> torch.Tensor:
        labels = require_labels(step, self.name)
        assert step.teacher_logits is not None
        t = self.temperature
        student, teacher = step.student_logits.float(), step.teacher_logits.float()
        target = F.one_hot(labels, student.shape[1]).bool()
        tckd = F.kl_div(_binary_log_split(student / t, target), _binary_log_split(teacher / t, target),
                        reduction="batchmean", log_target=True)
        nckd = F.kl_div(_non_target_log_softmax(student / t, target), _non_target_log_softmax(teacher / t, target),
                        reduction="batchmean", log_target=True)
        return F.cross_entropy(student, labels) + t * t * (self.alpha * tckd + self.beta * nckd)


def _binary_log_split(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] per sample, computed from the logits without subtracting probabilities."""
    total = logits.logsumexp(dim=1)
    on_target = logits[target] - total
    off_target = logits.masked_fill(target, float("-inf")).logsumexp(dim=1) - total
    return torch.stack([on_target, off_target], dim=1)


def _non_target_log_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The log-distribution over the classes other than the target (the target column removed)."""
    return logits[~target].view(len(logits), -1).log_softmax(dim=1)
