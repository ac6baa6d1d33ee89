"""The load_teacher stage: the job's plan, its teacher on its device, its data and the teacher's input convention."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from distill.data import Splits
from distill.input_convention import InputConvention, find_input_convention
from distill.loading import Teacher
from protos.distillery.v1 import distillery_pb2 as pb
from service import model_formats, specs
from service.job_context import JobContext

log = logging.getLogger("distillery.worker")


def accepted_plan(ctx: JobContext) -> specs.JobPlan:
    """The plan accepted at CreateJob (the same in a resumed run and on every rank)."""
    stored = ctx.store.get_plan(ctx.job_id)
    if stored:
        return specs.plan_from_json(stored)
    job = ctx.store.get_job(ctx.job_id)  # accepted before plans were stored: planned now, as then
    assert job is not None
    return specs.plan(job.spec, ctx.config.data_roots, torch.cuda.device_count())


@dataclass
class JobInputs:
    teacher_row: pb.Model
    teacher: Teacher  # on the training device
    splits: Splits | None  # None for a job without a dataset; normalised by the convention found
    input_shape: tuple[int, int, int]  # the teacher's
    input_convention: InputConvention | None  # how labelled images are normalised for the teacher


def load_inputs(ctx: JobContext, plan: specs.JobPlan) -> JobInputs:
    teacher_row = ctx.model_row(plan.teacher_model_id, "teacher")
    splits = plan.dataset.load() if plan.dataset else None
    input_shape = _input_shape(plan, splits)
    teacher = model_formats.load_teacher(
        teacher_row, ctx.blobs.path(teacher_row.sha256), input_shape, ctx.threads, ctx.archive_limits
    )
    if splits and teacher.num_classes != len(splits.train.classes):
        raise ValueError(
            f"the teacher has {teacher.num_classes} outputs but the dataset has {len(splits.train.classes)} classes"
        )
    teacher.model.to(plan.training.device)
    convention = None
    if splits:  # every use of the data (training, evaluation, the bundle) takes the convention found here
        requested = plan.dataset.normalization if plan.dataset else None
        convention = find_input_convention(teacher.model, splits.train, teacher.num_classes, requested, plan.training.device)
        splits.normalization = convention.chosen.normalization
        log.info("input convention: %s: %s", convention.chosen.name, convention.reason)
    return JobInputs(teacher_row, teacher, splits, input_shape, convention)


def _input_shape(plan: specs.JobPlan, splits: Splits | None) -> tuple[int, int, int]:
    """The teacher's input: the spec's (data-free, benchmark-only), else the dataset's; both must agree when both exist."""
    source = plan.data_free or plan.benchmark_only
    given = source.input_shape if source else None
    if splits is None:
        assert given is not None  # specs.plan requires one of them
        return given
    if given is not None and given != splits.train.input_shape:
        field_name = "data_free" if plan.data_free else "benchmark_only"
        raise ValueError(f"{field_name}.input_shape {given} differs from the dataset's images {splits.train.input_shape}")
    return splits.train.input_shape
