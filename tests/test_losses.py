"""Each loss is what its paper defines, checked against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import CrossEntropy, KnowledgeDistillation, WeightedLoss


def _softmax(values: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_matches_hinton_formula_by_hand() -> None:
    student, teacher, label, t, alpha = [1.0, 2.0, 0.5], [3.0, 0.0, -1.0], 0, 4.0, 0.7
    p_t, p_s = _softmax(teacher, t), _softmax(student, t)
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    ce = -math.log(_softmax(student, 1.0)[label])
    expected = alpha * t * t * kl + (1 - alpha) * ce

    loss = KnowledgeDistillation(temperature=t, alpha=alpha)(
        torch.tensor([student]), torch.tensor([teacher]), torch.tensor([label])
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_without_labels_is_the_soft_term_alone() -> None:
    student, teacher, t = [0.2, -0.3], [1.5, 0.5], 2.0
    p_t, p_s = _softmax(teacher, t), _softmax(student, t)
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    loss = KnowledgeDistillation(temperature=t, alpha=0.5)(torch.tensor([student]), torch.tensor([teacher]), None)
    assert loss.item() == pytest.approx(t * t * kl, rel=1e-5)


def test_kd_is_zero_when_student_equals_teacher_without_labels() -> None:
    logits = torch.randn(8, 10)
    assert KnowledgeDistillation()(logits, logits.clone(), None).item() == pytest.approx(0.0, abs=1e-6)


def test_weighted_sum_and_validation() -> None:
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    kd, ce = KnowledgeDistillation(), CrossEntropy()
    combined = WeightedLoss(((2.0, kd), (0.5, ce)))
    assert combined(s, t, y).item() == pytest.approx(2 * kd(s, t, y).item() + 0.5 * ce(s, t, y).item(), rel=1e-5)
    assert str(combined) == "2*kd(T=4, alpha=0.9) + 0.5*cross_entropy"
    with pytest.raises(ValueError):
        KnowledgeDistillation(temperature=0)
    with pytest.raises(ValueError):
        KnowledgeDistillation(alpha=1.5)
    with pytest.raises(ValueError):
        WeightedLoss(())
