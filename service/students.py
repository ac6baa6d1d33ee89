"""The build_student and distil stages: a new student trained by the engine (here or on ranks), or an uploaded one."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from google.protobuf import json_format
from torchvision.utils import save_image

from distill import distributed, engine, loading, models
from distill.datafree import DataFreeResult, Generator, check_generator
from distill.loading import LAYERED, ModelFileError
from distill.methods import SpecialistEnsemble
from protos.distillery.v1 import distillery_pb2 as pb
from service import convert, model_formats, ranks, specs
from service.job_context import JobContext, save_atomically
from service.job_inputs import JobInputs, accepted_plan, load_inputs

log = logging.getLogger("distillery.worker")

_TRAINED = "trained.pt"  # a distributed job's trained weights, left in the workdir by each node's first rank


@dataclass
class Student:
    """The model under test: distilled here, or uploaded for a benchmark-only job."""

    model: torch.nn.Module
    architecture: str
    is_onnx: bool = False  # an uploaded ONNX file: timed as it is, nothing to export
    file: Path | None = None  # the uploaded file; None for a distilled student (see ``saved``)
    # How it was made; all None for an uploaded student.
    training: pb.TrainingSummary | None = None
    data_free: pb.DataFreeSummary | None = None
    generator: Generator | None = None  # data-free: makes evaluation inputs when there is no dataset
    saved: Path | None = None  # a distilled student's student.pt, published as soon as training ended
    retried: bool = False  # trained by an earlier attempt of this job (RetryJob), not again
    search: pb.SearchSummary | None = None  # a search job's trials


def obtain(ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs, rank_entry: Callable[..., Any]) -> Student:
    """The uploaded student of a benchmark-only job, or a new one distilled from the teacher.

    ``rank_entry``: the process entry point of a distributed job's training processes.
    """
    device = plan.training.device
    if plan.benchmark_only:
        ctx.stage("build_student", "loading the uploaded student")
        student = uploaded(ctx, plan.benchmark_only.student_model_id, inputs)
        if not student.is_onnx:
            student.model.to(device)
        return student
    ctx.stage("build_student", student_name(plan))
    earlier = _trained_earlier(ctx, plan, inputs)
    if earlier is not None:
        return earlier
    model, start = new_model(ctx, plan, inputs)
    if start is not None:
        ctx.stage("build_student", f"from {start.model_id}: {start.tensors_loaded} tensors loaded, re-initialised: "
                                   f"{', '.join(start.reinitialised) or 'none'}, adapted: {', '.join(start.adapted) or 'none'}")
    student = Student(model, student_name(plan))
    if plan.search_result:  # the search stage ran: this is its chosen trial, trained on the whole split
        student.search = json_format.Parse(plan.search_result, pb.SearchSummary())
    if plan.distributed:
        student.training, result = distil_on_ranks(ctx, plan, student.model, rank_entry)
    else:
        student.training, result, student.model = distil(ctx, plan, inputs, student.model, ctx.resume(device))
    if result is not None:
        assert plan.data_free is not None
        check = check_generator(result.generator, inputs.teacher.model, student.model)
        save_image(check.grid, ctx.output("samples.png"))
        torch.save(result.generator.cpu().to_checkpoint(), ctx.output("generator.pt"))
        student.data_free = convert.data_free_summary(result, plan.data_free.config, check, samples_artifact="samples.png")
        student.generator = result.generator
    if start is not None:
        student.training.pretrained.CopyFrom(start)
    # Published now: whatever a later stage does, the trained student is never lost, and a retry starts from it.
    student.saved = save(ctx, plan, student, inputs)
    for name in TRAINED_ARTIFACTS:
        if name in ctx.outputs:
            ctx.publish(name)
    return student


TRAINED_ARTIFACTS = ("student.pt", "samples.png", "generator.pt")  # what training leaves, published when it ends


def _trained_earlier(ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs) -> Student | None:
    """The student an earlier attempt of this job trained and published, when there is one (RetryJob)."""
    published = {a.name: a for a in ctx.store.list_artifacts(ctx.job_id)}
    if "student.pt" not in published:
        return None
    for name in TRAINED_ARTIFACTS:  # into this attempt's outputs, so that they ship with the rest
        if name in published:
            shutil.copyfile(ctx.blobs.path(published[name].sha256), ctx.output(name))
    saved = torch.load(ctx.outputs["student.pt"], map_location="cpu", weights_only=True)
    model, _ = new_model(ctx, plan, inputs, pretrained=False)  # the trained weights replace any start
    model = with_weights(model, saved)
    student = Student(model, student_name(plan), saved=ctx.outputs["student.pt"], retried=True,
                      training=json_format.Parse(saved["training"], pb.TrainingSummary()))
    if saved.get("search"):
        student.search = json_format.Parse(saved["search"], pb.SearchSummary())
    if saved["data_free"]:
        student.data_free = json_format.Parse(saved["data_free"], pb.DataFreeSummary())
        checkpoint = torch.load(ctx.outputs["generator.pt"], map_location="cpu", weights_only=True)
        student.generator = Generator.from_checkpoint(checkpoint).to(plan.training.device)
    ctx.stage("distil", "retry: the student trained by the earlier attempt (student.pt) is used; no training again")
    return student


def with_weights(model: torch.nn.Module, saved: dict[str, Any]) -> torch.nn.Module:
    """The trained student of a student.pt, from a new ``model`` of its architecture: the model itself, or for the
    specialists method the ensemble of it and its specialists."""
    if saved.get("specialists"):
        model = SpecialistEnsemble.around(model, saved["specialists"], saved["num_classes"], saved["top_classes"])
    model.load_state_dict(saved["state_dict"])
    return model


def student_name(plan: specs.JobPlan) -> str:
    """What the report and the bundle call the student: its architecture, or the uploaded module it is."""
    return plan.student_architecture or f"TorchScript {plan.student_model_id}"


def new_model(
    ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs, pretrained: bool = True
) -> tuple[torch.nn.Module, pb.PretrainedStart | None]:
    """The student, built for the teacher's classes and input, from its pretrained start when the spec names one;
    or the user's own uploaded module, made trainable."""
    torch.manual_seed(plan.training.seed)  # the same spec gives the same student, init included (on every rank)
    if plan.student_model_id:
        model = uploaded(ctx, plan.student_model_id, inputs).model  # checked as at upload, loaded without running code
        for p in model.parameters():
            p.requires_grad_(p.is_floating_point())  # loading froze it as a teacher
        return model.train(), None
    channels, size = inputs.input_shape[0], inputs.input_shape[1]
    model = models.build(plan.student_architecture, inputs.teacher.num_classes, channels, size)
    if not (pretrained and plan.student_init_model_id):
        return model, None
    row = ctx.model_row(plan.student_init_model_id, "the student's pretrained")
    weights = model_formats.load_weights(row, ctx.blobs.path(row.sha256), ctx.archive_limits)
    try:
        start = loading.start_from(model, weights)
    except ModelFileError as e:
        raise ModelFileError(f"student.init_model_id {row.id}: {e}") from e
    return model, pb.PretrainedStart(model_id=row.id, tensors_loaded=start.tensors_loaded,
                                     reinitialised=start.reinitialised, adapted=start.adapted)


def distil(
    ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs, student: torch.nn.Module, resume: dict[str, Any] | None
) -> tuple[pb.TrainingSummary, DataFreeResult | None, torch.nn.Module]:
    """Distil in this process (one of several, or the only one): the engine's one call. Returns the summary, the
    data-free result, and the trained student: ``student``, or the specialists method's ensemble around it."""
    with ctx.stop.at_step_boundaries():
        outcome = engine.run(engine_job(plan, inputs, student), **ctx.training_callbacks(), resume_from=resume,
                             stop_requested=ctx.stop, on_stage=ctx.stage)
    return convert.training_summary(outcome.training, class_names(inputs)), outcome.data_free, outcome.student


def class_names(inputs: JobInputs) -> list[str]:
    """The dataset's class names, or the teacher's output indices without one."""
    return inputs.splits.train.classes if inputs.splits else [str(c) for c in range(inputs.teacher.num_classes)]


def engine_job(plan: specs.JobPlan, inputs: JobInputs, student: str | torch.nn.Module) -> engine.Job:
    """The plan as the engine's job: the one call that trains (a search calls it once a trial)."""
    splits = inputs.splits
    return engine.Job(
        teacher=inputs.teacher.model,
        student=student,
        data=None if plan.data_free else splits,
        methods=tuple(plan.methods),
        training=plan.training,
        data_free=plan.data_free.config if plan.data_free else None,
        input_shape=inputs.input_shape,
        normalization=splits.normalization if splits else None,  # found when the teacher was loaded
        teacher_exposes_modules=inputs.teacher.format in LAYERED,
        evaluate=False,  # the evaluate stage scores every variant, in every runtime
    )


def distil_on_ranks(
    ctx: JobContext, plan: specs.JobPlan, student: torch.nn.Module, rank_entry: Callable[..., Any]
) -> tuple[pb.TrainingSummary, DataFreeResult | None]:
    """Train on the plan's processes (this worker is their elastic agent), then take the trained weights."""
    assert plan.distributed is not None
    launch = replace(plan.distributed, log_dir=str(ctx.config.logs_dir / f"{ctx.job_id}.ranks"))
    log.info("launching %d training processes per node on %d node(s), run %s",
             launch.processes_per_node, launch.nodes, launch.run_id)
    outcomes = ranks.run(launch, ctx.workdir, rank_entry, ctx.config, ctx.job_id, os.getpid())
    summary, data_free = outcomes[min(outcomes)]  # this node's first rank
    trained = torch.load(ctx.workdir / _TRAINED, map_location="cpu", weights_only=True)
    student.load_state_dict(trained["student"])
    result = None
    if data_free is not None:
        generator = Generator.from_checkpoint(trained["generator"]).to(plan.training.device)
        result = DataFreeResult(**data_free, generator=generator)
    return pb.TrainingSummary.FromString(summary), result


def train_as_rank(ctx: JobContext) -> tuple[bytes, dict[str, Any] | None]:
    """One training process's share of ``distil_on_ranks``: the summary (serialised) and the data-free result's fields.

    Each node's first rank leaves the trained weights in the workdir.
    """
    plan = accepted_plan(ctx)
    plan = plan.on_device(distributed.init(plan.training.device))
    inputs = load_inputs(ctx, plan)
    student, _ = new_model(ctx, plan, inputs)
    # Rank 0 reads the checkpoint and the engine hands it to the others: on the CPU, the one device all share.
    resume = ctx.resume("cpu") if ctx.rank == 0 else None
    summary, result, _ = distil(ctx, plan, inputs, student, resume)  # no specialists on ranks: trained in place
    if ctx.local_rank == 0:  # every node's worker goes on with the trained student
        trained = {"student": student.state_dict()}
        if result is not None:
            trained["generator"] = result.generator.to_checkpoint()
        save_atomically(trained, ctx.workdir / _TRAINED)
    torch.distributed.destroy_process_group()
    data_free = None  # the result's fields but the generator, which travels in the file
    if result is not None:
        data_free = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "generator"}
    return summary.SerializeToString(), data_free


def uploaded(ctx: JobContext, model_id: str, inputs: JobInputs) -> Student:
    row = ctx.model_row(model_id, "student")
    path = ctx.blobs.path(row.sha256)
    try:
        loaded = model_formats.load_teacher(row, path, inputs.input_shape, ctx.threads, ctx.archive_limits)
    except ModelFileError as e:  # the loader speaks of teachers; here the file is the student
        raise ModelFileError(f"the student model {model_id}: {e}") from e
    if loaded.num_classes != inputs.teacher.num_classes:
        raise ValueError(f"the student has {loaded.num_classes} outputs but the teacher has {inputs.teacher.num_classes}")
    return Student(loaded.model, row.architecture or loaded.architecture, row.format == pb.MODEL_FORMAT_ONNX, path)


def save(ctx: JobContext, plan: specs.JobPlan, student: Student, inputs: JobInputs) -> Path:
    """student.pt: the weights with what it takes to rebuild and feed the student, and how it was made.

    ``job_spec`` is the spec that made it, ``training`` and ``data_free`` its
    TrainingSummary and DataFreeSummary ("" when not data-free), all as JSON.
    """
    splits, num_classes = inputs.splits, inputs.teacher.num_classes
    normalization = splits.normalization if splits else None
    ensemble = student.model if isinstance(student.model, SpecialistEnsemble) else None
    path = ctx.output("student.pt")
    torch.save(
        {
            "architecture": plan.student_architecture,  # "" for an uploaded TorchScript student:
            "student_model_id": plan.student_model_id,  # its weights load into that module
            "num_classes": num_classes,
            "input_shape": list(inputs.input_shape),
            "classes": class_names(inputs),
            # The specialists method: the class groups (by index), in the ensemble's order, and how many of the
            # generalist's top classes call one in; the state_dict is then the ensemble's (SpecialistEnsemble).
            "specialists": ensemble.subsets if ensemble else [],
            "top_classes": ensemble.top_classes if ensemble else 0,
            # Empty without a dataset: the student takes the inputs the teacher took, normalised the same way.
            "mean": normalization.mean if normalization else [],
            "std": normalization.std if normalization else [],
            "state_dict": student.model.state_dict(),
            "job_spec": json_format.MessageToJson(ctx.store.get_job(ctx.job_id).spec),
            "training": json_format.MessageToJson(student.training) if student.training else "",
            "data_free": json_format.MessageToJson(student.data_free) if student.data_free else "",
            "search": json_format.MessageToJson(student.search) if student.search else "",
        },
        path,
    )
    return path
