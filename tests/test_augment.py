"""Augmentation presets: what each does to a batch, that the teacher sees the student's batch, cached views."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from distill import augment, data, losses, methods, models, trainer


def _kd() -> losses.WeightedLoss:
    return losses.WeightedLoss([(1.0, methods.KnowledgeDistillation())])


def test_standard_below_64_px_shifts_and_flips_each_image_on_its_own() -> None:
    batch = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment.crop_and_flip(batch, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    found = []
    for before, after in zip(batch, out):
        matches = [
            (dx, dy, flip)
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            # Output pixel (y, x) is input pixel (y + dy, x + dx) of the (flipped) image; compare the inside.
            if torch.equal(after[:, 4:28, 4:28], (before.flip(-1) if flip else before)[:, 4 + dy : 28 + dy, 4 + dx : 28 + dx])
        ]
        assert len(matches) == 1, matches  # an exact whole-pixel shift, at most 4 px (an eighth), maybe mirrored
        found.append(matches[0])
    assert len(set(found)) > 20 and {f[2] for f in found} == {False, True}  # parameters drawn per image


def test_standard_at_64_px_and_up_crops_a_random_area_and_keeps_the_colours() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.randint(0, 256, (16, 3, 1, 1), dtype=torch.uint8, generator=g).expand(16, 3, 96, 96).contiguous()
    assert torch.equal(augment.crop_and_flip(flat, g), flat)  # any crop of a flat image is that image
    ramp = torch.arange(96, dtype=torch.uint8).view(1, 1, 1, 96).expand(16, 3, 96, 96).contiguous()
    out = augment.crop_and_flip(ramp, g)
    spans = (out[:, 0, 48, -1].int() - out[:, 0, 48, 0].int()).abs()
    assert (spans <= 95).all() and len(set(spans.tolist())) > 8  # each image a crop of its own width, resized back


def test_none_is_the_identity_and_strong_mixes_labels() -> None:
    batch = data.generate_shapes(8, channels=3, image_size=32).images
    assert augment.Augmentation("none", 10).images(batch) is batch
    strong = augment.Augmentation("strong", 10)
    out = strong.images(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    x, y = strong.mix(out.float(), torch.arange(8))
    assert y.shape == (8, 10) and torch.allclose(y.sum(1), torch.ones(8)) and (y.max(1).values < 1).any()
    with pytest.raises(ValueError, match="augmentation must be one of"):
        augment.Augmentation("heavy", 10)


def test_a_cached_view_is_the_same_pixels_in_any_batch() -> None:
    images = data.generate_shapes(6, channels=3, image_size=32).images
    views = augment.CachedViews(augment.Augmentation("standard", 10), views=3, seed=0, samples=6)
    whole = views.images(images, torch.arange(6), view=1)
    assert torch.equal(views.images(images[[4, 1]], torch.tensor([4, 1]), view=1), whole[[4, 1]])
    assert not torch.equal(views.images(images, torch.arange(6), view=2), whole)
    with pytest.raises(ValueError, match="strong mixes images"):
        augment.CachedViews(augment.Augmentation("strong", 10), views=2, seed=0, samples=6)


class _Recorder(torch.nn.Module):
    """Records every batch it is called on."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.model(x)


def _splits() -> data.Splits:
    return data.Splits(*data.generated_splits(num_classes=4, channels=3, image_size=32, train_size=96, val_size=32, seed=5))


def test_the_teacher_sees_the_students_augmented_batch(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    teacher = _Recorder(models.build("lenet5", 4, 3).eval())
    student = _Recorder(models.build("lenet5_half", 4, 3))
    config = trainer.TrainConfig(epochs=2, batch_size=32, augmentation="standard")
    trainer.distil(student, teacher, _kd(), splits.train, splits.normalization, config)
    training = student.inputs[1:]  # the first call only counts the student's outputs
    assert len(teacher.inputs) == len(training) == 6
    assert all(torch.equal(t, s) for t, s in zip(teacher.inputs, training))
    plain = [splits.normalization.apply(splits.train.images[i]) for i in range(len(splits.train))]
    assert not any(torch.equal(training[0][0], p) for p in plain)  # augmented, not the stored image


def test_cached_views_run_the_teacher_before_training_only_and_resume_the_same() -> None:
    splits = _splits()
    teacher = _Recorder(models.build("lenet5", 4, 3).eval())
    config = trainer.TrainConfig(epochs=3, batch_size=32, augmentation="standard", teacher_views=2, checkpoint_interval_steps=4)
    checkpoints: list[dict[str, Any]] = []
    full = models.build("lenet5_half", 4, 3)
    trainer.distil(full, teacher, _kd(), splits.train, splits.normalization, config,
                   on_checkpoint=lambda state: checkpoints.append(copy.deepcopy(state)))
    assert sum(len(x) for x in teacher.inputs) == 2 * len(splits.train)  # two views of each image, then no teacher

    resumed = models.build("lenet5_half", 4, 3)
    trainer.distil(resumed, teacher, _kd(), splits.train, splits.normalization, config, resume_from=checkpoints[1])
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_live_augmentation_resumes_to_the_same_student() -> None:
    splits = _splits()
    teacher = models.build("lenet5", 4, 3).eval()
    config = trainer.TrainConfig(epochs=2, batch_size=32, augmentation="strong", checkpoint_interval_steps=2)
    checkpoints: list[dict[str, Any]] = []
    full = models.build("lenet5_half", 4, 3)
    trainer.distil(full, teacher, _kd(), splits.train, splits.normalization, config,
                   on_checkpoint=lambda state: checkpoints.append(copy.deepcopy(state)))
    resumed = models.build("lenet5_half", 4, 3)
    trainer.distil(resumed, teacher, _kd(), splits.train, splits.normalization, config, resume_from=checkpoints[0])
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
