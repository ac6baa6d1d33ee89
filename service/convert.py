"""Engine results as the API's protos: the one place they are translated."""

from __future__ import annotations

from distill import engine
from distill.datafree import DataFreeConfig, DataFreeResult, GeneratorCheck
from distill.input_convention import InputConvention
from protos.distillery.v1 import distillery_pb2 as pb


def training_summary(summary: engine.TrainingSummary, classes: list[str]) -> pb.TrainingSummary:
    """``classes``: the class names, by index (for the specialists' groups)."""
    return pb.TrainingSummary(
        method=summary.method,
        epochs=summary.epochs,
        steps=summary.steps,
        final_loss=summary.final_loss,
        wall_seconds=summary.wall_seconds,
        device=summary.device,
        train_samples=summary.train_samples,
        processes=summary.processes,
        samples_seen=summary.samples_seen,
        data_loading=summary.data_loading,
        augmentation=summary.augmentation,
        specialists=[pb.Specialist(classes=[classes[c] for c in s.classes], train_samples=s.train_samples)
                     for s in summary.specialists],
    )


def input_convention(found: InputConvention) -> pb.InputConvention:
    chosen = found.chosen.normalization
    return pb.InputConvention(
        chosen=found.chosen.name, mean=chosen.mean, std=chosen.std, reason=found.reason, samples=found.samples,
        candidates=[
            pb.InputConventionCandidate(name=c.name, mean=c.normalization.mean, std=c.normalization.std, teacher_top1=c.teacher_top1)
            for c in found.candidates
        ],
    )


def data_free_summary(
    result: DataFreeResult, config: DataFreeConfig, check: GeneratorCheck, samples_artifact: str
) -> pb.DataFreeSummary:
    return pb.DataFreeSummary(
        method=result.method,
        iterations=config.iterations,
        student_steps=config.student_steps,
        replay_steps=config.replay_steps,
        batch_size=result.batch_size,
        class_histogram=check.class_histogram,
        generated_samples=check.samples,
        agreement_on_generated=check.agreement,
        teacher_confidence_on_generated=check.teacher_confidence,
        samples_artifact=samples_artifact,
        batchnorm=result.batchnorm,
        recipe=result.recipe,
        logit_bound=result.logit_bound,
        interventions=result.interventions,
    )
