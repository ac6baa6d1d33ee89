"""The normalisation a teacher expects, found by scoring it, not guessed.

A teacher trained elsewhere may want its data standardised by the dataset's
statistics, by ImageNet's, scaled to [-1, 1], or left in [0, 1] because its
first op normalises (the usual way to ship a deployable model). Fed the wrong
one it scores near chance, and everything distilled from it too. So, before
training, the teacher is scored on a sample of the labelled training split
under each candidate, and the one it is accurate under is used. The test
split is never read for this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from distill.data import ImageData, Normalization
from distill.evaluate import accuracy, near_chance
from distill.trainer import predict_logits

SAMPLES = 512  # top-1 is then known to about +-2 points: enough to tell a convention that works from one that does not
SEED = 0
# Candidates within this many points of the best are as good; the earlier one in the list is used.
TIE_POINTS = 2.0
# A spec's mean/std are kept unless another candidate makes the teacher this much more accurate.
OVERRIDE_POINTS = 10.0
IMAGENET = Normalization(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


class TeacherNearChanceError(RuntimeError):
    """The teacher is near chance on the job's data under every input convention tried (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class Candidate:
    name: str
    normalization: Normalization
    teacher_top1: float  # percent, on the sample


@dataclass(frozen=True)
class InputConvention:
    chosen: Candidate
    candidates: list[Candidate]
    samples: int
    reason: str


def candidates(train: ImageData, requested: Normalization | None) -> list[tuple[str, Normalization]]:
    """What teachers are commonly trained with, the spec's values first; ties go to the earlier."""
    channels = train.input_shape[0]
    found = [("the spec's mean/std", requested)] if requested else []
    found += [
        ("the training data's own statistics", Normalization.of(train)),
        ("none: pixels in [0, 1]", Normalization([0.0] * channels, [1.0] * channels)),
        ("pixels in [-1, 1] (mean 0.5, std 0.5)", Normalization([0.5] * channels, [0.5] * channels)),
    ]
    if channels == 3:
        found.append(("ImageNet's statistics", IMAGENET))
    return found


def find_input_convention(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    train: ImageData,
    num_classes: int,
    requested: Normalization | None = None,
    device: str = "cpu",
) -> InputConvention:
    """Score the teacher under each candidate on ``SAMPLES`` training images; the convention it is accurate under.

    ``requested`` (the spec's mean/std) is kept unless another candidate beats
    it by ``OVERRIDE_POINTS``; then that one is used and the reason says so.
    Raises TeacherNearChanceError when the teacher is near chance under every one.
    """
    sample = train.subset(SAMPLES, SEED)
    scored = []
    for name, norm in candidates(train, requested):
        logits = predict_logits(teacher, sample, norm, device)
        if not logits.isfinite().all():  # NaN or infinity at any input: the weights, not the convention, are broken
            raise TeacherNearChanceError(
                f"the teacher's outputs are not finite (NaN or infinite) on training images normalised with {name}; "
                "its weights are broken"
            )
        scored.append(Candidate(name, norm, accuracy(logits, sample.labels).top1))
    best = max(c.teacher_top1 for c in scored)
    tried = "; ".join(f"{c.name} {c.teacher_top1:.1f}%" for c in scored)
    if near_chance(best, num_classes):
        raise TeacherNearChanceError(
            f"the teacher is near chance ({100 / num_classes:.0f}% for {num_classes} classes) on {len(sample)} training "
            f"images under every input convention tried ({tried}); check that it was trained on this dataset, "
            "that its class order is the dataset's, and that it takes images of this size and channel count"
        )
    if requested and scored[0].teacher_top1 >= best - OVERRIDE_POINTS:
        chosen = scored[0]
        reason = f"as the spec asks; the teacher scores {chosen.teacher_top1:.1f}% under it"
    else:
        chosen = next(c for c in scored if c.teacher_top1 >= best - TIE_POINTS)
        reason = f"the teacher scores {chosen.teacher_top1:.1f}% under it, the best of those tried"
        if requested:
            reason = (
                f"the spec's mean/std give the teacher {scored[0].teacher_top1:.1f}%, {chosen.name} "
                f"{chosen.teacher_top1:.1f}%: the spec's values were overridden; set them to {chosen.name}'s to silence this"
            )
    return InputConvention(chosen, scored, len(sample), f"{reason} (on {len(sample)} training images; tried: {tried})")
