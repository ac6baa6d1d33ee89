"""Accuracy of a model's logits against labels and against a reference model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AccuracyResult:
    samples: int
    top1: float  # percent
    top5: float | None  # percent; None with 5 classes or fewer
    agreement: float | None  # percent of top-1 equal to the reference's


def accuracy(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None) -> AccuracyResult:
    """Top-1, top-5 (over 5 classes) and top-1 agreement with ``reference`` logits."""
    if len(logits) != len(labels) or len(logits) == 0:
        raise ValueError(f"need as many labels as logits, and some: {len(logits)} vs {len(labels)}")
    predicted = logits.argmax(dim=1)
    top1 = 100.0 * (predicted == labels).float().mean().item()
    top5 = None
    if logits.shape[1] > 5:
        top5 = 100.0 * (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()
    agreement = None
    if reference is not None:
        agreement = 100.0 * (predicted == reference.argmax(dim=1)).float().mean().item()
    return AccuracyResult(len(labels), top1, top5, agreement)


def per_class_top1(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[tuple[int, float]]:
    """(samples, top-1 percent) for each class; a class with no samples scores 0."""
    correct = logits.argmax(dim=1) == labels
    samples = labels.bincount(minlength=num_classes)
    hits = labels[correct].bincount(minlength=num_classes)
    return [(int(n), 100.0 * int(h) / int(n) if n else 0.0) for n, h in zip(samples.tolist(), hits.tolist())]


def near_chance(top1: float, num_classes: int) -> bool:
    """Within 5 points, or a tenth of the way to 100%, of guessing (19% for 10 classes, 55% for 2).

    For top-1 against labels, or agreement with a teacher: either way, no better than a guess.
    """
    chance = 100.0 / num_classes
    return top1 <= chance + max(5.0, 0.1 * (100.0 - chance))
