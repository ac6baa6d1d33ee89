"""The teacher's input convention is found by scoring it, and a teacher at chance fails the job."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from torch import nn

from distill import data, input_convention, models, trainer
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from tests.conftest import TINY_DATA, tiny_spec


class ClassesShifted(nn.Module):
    """A good teacher whose class order is not the dataset's: near chance whatever the normalisation."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).roll(1, dims=1)


RAW = "none: pixels in [0, 1]"
HALF = "pixels in [-1, 1] (mean 0.5, std 0.5)"
OWN_STATISTICS = "the training data's own statistics"


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    return data.Splits(*data.generated_splits(**TINY_DATA))


@pytest.fixture(scope="module")
def half_range_teacher(splits: data.Splits) -> nn.Module:
    """A BatchNorm teacher trained on pixels in [-1, 1] (``Normalize((0.5,), (0.5,))``, many tutorials' recipe).

    Fed the data's own statistics it scores 85-95% (seeds 0-4), fed raw pixels 22-38%; 100% as trained.
    """
    torch.manual_seed(0)
    model = models.build("resnet8_cifar", TINY_DATA["num_classes"], TINY_DATA["channels"])
    half = data.Splits(splits.train, splits.val, data.Normalization([0.5], [0.5]))
    trainer.train_from_labels(model, half, trainer.TrainConfig(epochs=3, batch_size=32, seed=0))
    return model.eval()


def test_the_convention_the_teacher_is_accurate_under_is_found_and_overrides_a_far_worse_spec(
    half_range_teacher: nn.Module, tiny_teacher: nn.Module, splits: data.Splits
) -> None:
    classes = TINY_DATA["num_classes"]
    found = input_convention.find_input_convention(half_range_teacher, splits.train, classes)
    assert found.chosen.name == HALF, found.reason
    assert found.chosen.teacher_top1 > 90 and found.samples == input_convention.SAMPLES
    own = next(c for c in found.candidates if c.name == OWN_STATISTICS)
    assert own.teacher_top1 < found.chosen.teacher_top1 - input_convention.TIE_POINTS, "the case is not a test"
    # A spec asking for raw pixels is far worse for this teacher: overridden, and said so.
    raw = data.Normalization([0.0], [1.0])
    overridden = input_convention.find_input_convention(half_range_teacher, splits.train, classes, requested=raw)
    assert overridden.chosen.name == HALF and "overridden" in overridden.reason
    # A spec within the margin is kept.
    stats = data.Normalization.of(splits.train)
    kept = input_convention.find_input_convention(tiny_teacher, splits.train, classes, requested=stats)
    assert kept.chosen.name == "the spec's mean/std" and kept.reason.startswith("as the spec asks")
    # Among candidates that are as good, the earliest: the teacher trained on standardised data gets its statistics.
    plain = input_convention.find_input_convention(tiny_teacher, splits.train, classes)
    assert plain.chosen.name == OWN_STATISTICS, plain.reason


def test_a_teacher_near_chance_under_every_convention_is_refused(tiny_teacher: nn.Module, splits: data.Splits) -> None:
    with pytest.raises(input_convention.TeacherNearChanceError, match="class order"):
        input_convention.find_input_convention(ClassesShifted(tiny_teacher), splits.train, TINY_DATA["num_classes"])


def test_jobs_find_the_convention_or_fail_with_failed_precondition(
    client: Client, half_range_teacher: nn.Module, tiny_teacher: nn.Module, tmp_path: Path
) -> None:
    torch.jit.save(torch.jit.script(half_range_teacher), tmp_path / "half.ts")
    torch.jit.save(torch.jit.script(ClassesShifted(tiny_teacher).eval()), tmp_path / "shifted.ts")

    job = client.wait(client.create_job(tiny_spec(client.upload(tmp_path / "half.ts").id)).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    report = client.report(job.id)
    assert report.input_convention.chosen == HALF and list(report.input_convention.std) == [0.5]
    assert len(report.input_convention.candidates) == 3 and report.input_convention.samples == input_convention.SAMPLES
    teacher = next(v for v in report.variants if v.model == "teacher")
    assert teacher.accuracy.top1 > 90, "the teacher is scored under the convention found"

    failed = client.wait(client.create_job(tiny_spec(client.upload(tmp_path / "shifted.ts").id)).id)
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and "near chance" in failed.error.message
