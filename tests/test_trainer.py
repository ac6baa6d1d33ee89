"""The trainer learns, checkpoints and resumes to the same result."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from distill import data, losses, models, trainer

KD = losses.WeightedLoss(((1.0, losses.KnowledgeDistillation()),))


def _splits() -> data.Splits:
    return data.Splits(*data.generated_splits(num_classes=4, train_size=400, val_size=100, seed=5))


def test_kd_loss_falls(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    seen: list[trainer.Progress] = []
    student = models.build("lenet5_half", 4, 1)
    trainer.distil(
        student, tiny_teacher, KD, splits.train, splits.normalization,
        trainer.TrainConfig(epochs=4, batch_size=32), on_progress=seen.append,
    )
    first_loss = KD(
        models.build("lenet5_half", 4, 1)(splits.normalization.apply(splits.train.images)),
        tiny_teacher(splits.normalization.apply(splits.train.images)),
        splits.train.labels,
    ).item()
    final = KD(student(splits.normalization.apply(splits.train.images)), tiny_teacher(splits.normalization.apply(splits.train.images)), splits.train.labels).item()
    assert final < 0.5 * first_loss
    assert seen and seen[-1].step == seen[-1].total_steps


def test_resume_from_checkpoint_gives_the_same_student(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    config = trainer.TrainConfig(epochs=2, batch_size=32, checkpoint_interval_steps=5, seed=2)
    checkpoints: list[dict[str, Any]] = []

    full = models.build("lenet5_half", 4, 1)
    trainer.distil(full, tiny_teacher, KD, splits.train, splits.normalization, config, on_checkpoint=lambda state: checkpoints.append(copy.deepcopy(state)))
    middle = checkpoints[2]  # step 15, inside the second epoch
    assert middle["step"] == 15

    resumed = models.build("lenet5_half", 4, 1)
    trainer.distil(resumed, tiny_teacher, KD, splits.train, splits.normalization, config, resume_from=middle)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_divergence_is_reported(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    bad = losses.WeightedLoss(((1.0, losses.KnowledgeDistillation()),))
    student = models.build("lenet5_half", 4, 1)
    with torch.no_grad():
        student.classifier[-1].weight.fill_(float("nan"))
    with pytest.raises(trainer.TrainingDivergedError, match="lower the learning rate"):
        trainer.distil(student, tiny_teacher, bad, splits.train, splits.normalization, trainer.TrainConfig(epochs=1))


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="epochs"):
        trainer.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        trainer.TrainConfig(optimizer="lbfgs")
