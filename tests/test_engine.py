"""The engine as a library: one call, no server."""

from __future__ import annotations

import pytest
import torch

from distill import data, engine, loop, models
from distill.datafree import DataFreeConfig
from distill.losses import MethodConfig
from distill.trainer import TrainConfig
from tests.conftest import TINY_DATA


def test_one_call_distils_and_scores_from_a_python_prompt(tiny_teacher: torch.nn.Module) -> None:
    """The README's library example, on generated data: the convention is found, the student trained and scored."""
    splits = data.Splits(*data.generated_splits(**TINY_DATA))
    seen: list[loop.Progress] = []
    stages: list[str] = []
    outcome = engine.run(
        engine.Job(teacher=tiny_teacher, student="lenet5_half", data=splits, training=TrainConfig(epochs=3, batch_size=64)),
        on_progress=seen.append,
        on_stage=lambda name, message: stages.append(name),
    )
    assert outcome.input_convention is not None and outcome.input_convention.chosen.name  # found, not guessed
    assert splits.normalization == outcome.input_convention.chosen.normalization
    assert stages == ["distil", "evaluate"] and outcome.training.method == "kd(T=4, alpha=0.9)"
    assert seen[-1].step == seen[-1].total_steps == outcome.training.steps == 3 * 13  # 800 images, batches of 64
    evaluation = outcome.evaluation
    assert evaluation is not None and evaluation.teacher.samples == evaluation.student.samples == 200
    assert evaluation.student.top1 > 60 and evaluation.student.agreement is not None
    assert not outcome.student.training and outcome.data_free is None


def test_one_call_runs_a_registry_method_and_data_free(tiny_teacher: torch.nn.Module) -> None:
    splits = data.Splits(*data.generated_splits(**TINY_DATA))
    torch.manual_seed(0)
    student = models.build("lenet5_half", 4, 1)
    dkd = engine.run(engine.Job(teacher=tiny_teacher, student=student, data=splits, methods=(MethodConfig("dkd"),),
                                training=TrainConfig(epochs=1, batch_size=64), normalization=splits.normalization))
    assert dkd.student is student and dkd.input_convention is None  # the job gave the convention: used as given
    assert dkd.training.method == "dkd(alpha=1, beta=8, T=4)"

    config = DataFreeConfig(iterations=3, student_steps=1, batch_size=32, generator_width=8)
    free = engine.run(engine.Job(teacher=tiny_teacher, student="lenet5_half", data_free=config, input_shape=(1, 28, 28)))
    assert free.data_free is not None and free.data_free.method == "dfad" and free.evaluation is None
    assert free.training.steps == 3 and free.training.train_samples == 0


def test_a_job_without_data_must_be_data_free_with_a_shape(tiny_teacher: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="must be data-free and name the teacher's input_shape"):
        engine.Job(teacher=tiny_teacher, student="lenet5_half")
    splits = data.Splits(*data.generated_splits(**{**TINY_DATA, "num_classes": 3}))
    with pytest.raises(ValueError, match="the teacher has 4 outputs but the dataset has 3 classes"):
        engine.run(engine.Job(teacher=tiny_teacher, student="lenet5_half", data=splits))


def test_specialists_resume_mid_specialist_as_if_never_stopped(tiny_teacher: torch.nn.Module) -> None:
    """A stop during a specialist's run checkpoints the finished generalist too; the resumed job skips it and ends
    with the ensemble an unstopped job trains, weight for weight."""
    splits = data.Splits(*data.generated_splits(**TINY_DATA))
    specialists = MethodConfig("specialists", params={"specialists": 2, "specialist_epochs": 2})

    def job() -> engine.Job:
        return engine.Job(teacher=tiny_teacher, student="lenet5_half", data=splits, methods=(specialists,),
                          training=TrainConfig(epochs=2, batch_size=64), normalization=splits.normalization,
                          evaluate=False)

    whole = engine.run(job())
    assert whole.training.specialists and whole.training.steps > 2 * 13  # 800 images in batches of 64, then more
    polls, saved = [], []
    with pytest.raises(loop.Interrupted):
        engine.run(job(), on_checkpoint=saved.append, stop_requested=lambda: polls.append(1) or len(polls) == 2 * 13 + 3)
    assert saved[-1]["specialist"] == 0 and "generalist" in saved[-1]
    progress: list[loop.Progress] = []
    resumed = engine.run(job(), resume_from=saved[-1], on_progress=progress.append)
    assert progress[0].step > 2 * 13 and progress[-1].step == progress[-1].total_steps == whole.training.steps
    for name, tensor in whole.student.state_dict().items():
        assert torch.equal(tensor, resumed.student.state_dict()[name]), name
