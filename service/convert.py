"""Engine results as the API's protos: the one place they are translated."""

from __future__ import annotations

from distill import engine
from distill.input_convention import InputConvention
from protos.distillery.v1 import distillery_pb2 as pb


def training_summary(summary: engine.TrainingSummary) -> pb.TrainingSummary:
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
