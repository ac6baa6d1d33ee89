"""One job, start to finish, in its own spawned process.

load_teacher -> build_student -> distil -> evaluate -> export -> benchmark -> report

A benchmark-only job loads an uploaded student instead of building and
distilling one; the rest is the same pipeline, so its report is the same.

Each stage is announced as an event in the store. The worker ends its job
itself (SUCCEEDED, or FAILED with a readable message); if it dies instead, the
supervisor sees the exit and fails the job.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from google.protobuf import json_format
from torchvision.utils import save_image

from distill import distributed, engine, models
from distill.benchmark import LatencyStats, Runner, count_macs, count_parameters, measure_runners, torch_runner
from distill.allocator import keep_freed_memory, limit_memory, out_of_memory
from distill.data import ImageData, Normalization, Splits, resize
from distill.datafree import (
    DataFreeConfig,
    DataFreeFailedError,
    DataFreeResult,
    Generator,
    check_generator,
)
from distill.evaluate import AccuracyResult, accuracy, per_class_top1
from distill.input_convention import InputConvention, find_input_convention
from distill.loading import STATE_DICT, ModelFileError, Teacher
from distill.loop import Interrupted, Progress
from distill.trainer import predict
from exporters import onnx_export, onnx_teacher, quantize
from protos.distillery.v1 import distillery_pb2 as pb
from service import report as report_format
from service import report_html
from service import bundle, convert, model_formats, ranks, specs
from service.artifacts import BlobStore
from service.config import ServerConfig
from service.errors import describe, status_code
from service.store import Store

log = logging.getLogger("distillery.worker")

# Where each stage starts on the job's 0..1 progress scale; distil fills the gap to evaluate.
STAGE_START = {
    "load_teacher": 0.0,
    "build_student": 0.03,
    "distil": 0.05,
    "evaluate": 0.80,
    "export": 0.85,
    "benchmark": 0.90,
    "report": 0.98,
}
PARITY_SAMPLES = 1000
CALIBRATION_SAMPLES = 512  # INT8 activation ranges: min/max over this many evaluation inputs
CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"
_TRAINED = "trained.pt"  # a distributed job's trained weights, left in the workdir by each node's first rank


# Exit status of a worker that stopped for a drain (EX_TEMPFAIL): its job goes back to the queue.
EXIT_INTERRUPTED = 75
_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def main(config: ServerConfig, job_id: str, server_pid: int) -> None:
    """Process entry point (spawned by the supervisor)."""
    # Own process group: cancelling kills the worker and anything it started.
    os.setpgrp()
    _die_with_parent(server_pid)
    # The parent owns shutdown; a Ctrl-C in the terminal must not kill jobs half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = StopRequest()
    logging.basicConfig(
        filename=config.logs_dir / f"{job_id}.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info("job %s in worker pid %d", job_id, os.getpid())
    torch.set_num_threads(config.threads_per_worker())
    keep_freed_memory()  # the same large activations every step: reuse their pages (see distill/allocator.py)
    # A teacher that asks for more fails this job with RESOURCE_EXHAUSTED; training processes inherit the limit.
    limit_memory(config.job_memory_bytes())
    store = Store(config.db_path)
    try:
        Job(config, store, job_id, stop).run()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # done: let the ending be written whole
        store.transition(job_id, pb.JOB_STATE_SUCCEEDED, "succeeded")
    except Interrupted as e:  # the supervisor requeues the job; it resumes from its checkpoint
        log.info("job %s interrupted: %s", job_id, e)
        store.close()
        os._exit(EXIT_INTERRUPTED)  # skip interpreter teardown: the drain has a deadline
    except Exception as e:  # every failure ends the job with a readable message
        log.exception("job %s failed", job_id)
        if out_of_memory(e):
            e = MemoryError(
                f"the job needed more memory than its limit of {config.job_memory_bytes() / 2**30:.1f} GiB "
                f"(--job-memory-limit): {out_of_memory(e)[:500]}"
            )
        store.transition(job_id, pb.JOB_STATE_FAILED, describe(e), status_code(e).value[0])
    finally:
        store.close()


def rank_main(config: ServerConfig, job_id: str, worker_pid: int) -> tuple[bytes, dict[str, Any] | None]:
    """Entry point of one training process of a distributed job, started by the job's worker (its elastic agent).

    Returns the training summary (serialised) and, for data-free training, the
    fields of its result; local rank 0 leaves the trained weights in the workdir.
    """
    _die_with_parent(worker_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = StopRequest()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(
        filename=config.logs_dir / f"{job_id}.log",
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
    )
    log.info("job %s: training process rank %d (local %d) pid %d", job_id, rank, local_rank, os.getpid())
    # The node's processes share the worker's share of the cores.
    torch.set_num_threads(max(1, config.threads_per_worker() // int(os.environ["LOCAL_WORLD_SIZE"])))
    keep_freed_memory()
    store = Store(config.db_path)
    job = Job(config, store, job_id, stop, rank=rank, local_rank=local_rank)
    try:
        with ranks.reporting_errors(job.workdir, rank):
            return job.train_as_rank()
    finally:
        store.close()


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even by kill -9).

    A worker outliving the server would keep training a job that the restarted
    server requeues and runs again: two writers of one checkpoint. A training
    process outliving its worker would wait on its peers for ever.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request took effect
        os._exit(1)


class StopRequest:
    """SIGTERM from the supervisor, which is draining the server.

    Inside training it is deferred: the loop checkpoints and stops at the next
    step boundary. Anywhere else the job stops at once; it will redo the
    stage it was in from the last checkpoint.
    """

    def __init__(self) -> None:
        self.requested = False
        self._deferred = False
        signal.signal(signal.SIGTERM, self._on_signal)

    def __call__(self) -> bool:
        return self.requested

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self._deferred:
            raise Interrupted("the server is shutting down")

    @contextmanager
    def at_step_boundaries(self) -> Iterator[None]:
        if self.requested:
            raise Interrupted("the server is shutting down")
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False


@dataclass
class EvalInputs:
    """What evaluation, export parity and benchmarks run on: the validation split, or generated images.

    Generated images are already normalised and carry no labels.
    """

    val: ImageData | torch.Tensor
    normalization: Normalization | None = None
    size: tuple[int, int] | None = None  # (height, width) to resize to; None: as they are

    def resized(self, size: tuple[int, int]) -> EvalInputs:
        return EvalInputs(self.val, self.normalization, size)

    def fit(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of the native inputs at this view's size."""
        return resize(batch, self.size) if self.size else batch

    @property
    def labels(self) -> torch.Tensor | None:
        return self.val.labels if isinstance(self.val, ImageData) else None

    def __len__(self) -> int:
        return len(self.val)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.val, ImageData):
            assert self.normalization is not None
            return self.fit(self.normalization.apply(self.val.images[index]))
        return self.fit(self.val[index])

    def first(self, count: int) -> torch.Tensor:
        return self.take(torch.arange(min(count, len(self))))

    def batches(self, batch_size: int = 512) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, len(self))))

    def score(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> AccuracyResult | None:
        return accuracy(logits, self.labels, teacher_logits) if self.labels is not None else None


@dataclass
class Variant:
    """One model in one runtime, as the report's side-by-side table shows it."""

    model: str  # teacher | student
    runtime: str  # pytorch | onnxruntime
    runner: Runner
    logits: torch.Tensor  # on the evaluation inputs
    file_size: int
    parameters: int
    macs: int
    device: str
    execution_provider: str = ""
    precision: str = "fp32"  # fp32 | int8 static | int8 dynamic
    artifact: str = ""  # the shipped file it runs from

    @property
    def name(self) -> str:
        precision = f" {self.precision}" if self.precision != "fp32" else ""
        suffix = " (CUDA)" if self.execution_provider == CUDA_EP else ""
        return f"{self.model} / {self.runtime}{precision}{suffix}"


@dataclass
class Student:
    """The model under test: distilled here, or uploaded for a benchmark-only job."""

    model: torch.nn.Module
    architecture: str
    is_onnx: bool = False  # an uploaded ONNX file: timed as it is, nothing to export
    file: Path | None = None  # the uploaded file; None for a distilled student (saved at export)
    # How it was made; all None for an uploaded student.
    training: pb.TrainingSummary | None = None
    data_free: pb.DataFreeSummary | None = None
    generator: Generator | None = None  # data-free: makes evaluation inputs when there is no dataset


class Job:
    def __init__(
        self, config: ServerConfig, store: Store, job_id: str, stop: StopRequest, rank: int = 0, local_rank: int = 0
    ) -> None:
        self.config, self.store, self.job_id, self.stop = config, store, job_id, stop
        # In a distributed job's training processes: each node's first reports progress, rank 0 alone checkpoints.
        self.rank, self.local_rank = rank, local_rank
        self.blobs = BlobStore(config.blobs_dir, config.tmp_dir)
        self.workdir = config.tmp_dir / job_id
        self.checkpoint_path = config.checkpoints_dir / f"{job_id}.pt"
        self.threads = config.threads_per_worker()
        self.archive_limits = model_formats.archive_limits(config.max_upload_bytes)
        self.files: dict[str, Path] = {}  # artifact name -> file in the workdir
        self.notes: list[str] = []  # for the report: what was skipped and why
        self.input_convention: InputConvention | None = None  # how labelled images are normalised for the teacher

    # ------------------------------------------------------------ events

    def stage(self, name: str, message: str = "") -> None:
        log.info("stage %s %s", name, message)
        if self.local_rank != 0:
            return
        self.store.record_progress(self.job_id, pb.JobEvent(stage=name, progress=STAGE_START[name], message=message))

    def on_progress(self, p: Progress) -> None:
        span = STAGE_START["evaluate"] - STAGE_START["distil"]
        self.store.record_progress(
            self.job_id,
            pb.JobEvent(
                stage="distil",
                progress=STAGE_START["distil"] + span * p.step / p.total_steps,
                step=p.step,
                total_steps=p.total_steps,
                loss=p.loss,
                metrics={"epoch": p.epoch, "pretraining": float(p.pretraining)},
                message=p.message,
            ),
        )

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        _save_atomically(state, self.checkpoint_path)

    def training_callbacks(self) -> dict[str, Any]:
        """In a distributed job's processes, each node's first reports progress and rank 0 alone checkpoints."""
        return {
            "on_progress": self.on_progress if self.local_rank == 0 else None,
            "on_checkpoint": self.on_checkpoint if self.rank == 0 else None,
        }

    def artifact(self, name: str) -> Path:
        self.files[name] = self.workdir / name
        return self.files[name]

    # ---------------------------------------------------------- pipeline

    def plan(self) -> specs.JobPlan:
        """The plan accepted at CreateJob (the same in a resumed run and on every rank)."""
        stored = self.store.get_plan(self.job_id)
        if stored:
            return specs.plan_from_json(stored)
        job = self.store.get_job(self.job_id)  # accepted before plans were stored: planned now, as then
        assert job is not None
        return specs.plan(job.spec, self.config.data_roots, torch.cuda.device_count())

    def load_inputs(self, plan: specs.JobPlan) -> tuple[pb.Model, Splits | None, tuple[int, int, int], Teacher]:
        """The teacher's store row, the dataset (when the job has one), the teacher's input shape, the teacher on its device."""
        teacher_row = self.model_row(plan.teacher_model_id, "teacher")
        splits = plan.dataset.load() if plan.dataset else None
        input_shape = _input_shape(plan, splits)
        teacher = model_formats.load_teacher(
            teacher_row, self.blobs.path(teacher_row.sha256), input_shape, self.threads, self.archive_limits
        )
        if splits and teacher.num_classes != len(splits.train.classes):
            raise ValueError(
                f"the teacher has {teacher.num_classes} outputs but the dataset has {len(splits.train.classes)} classes"
            )
        teacher.model.to(plan.training.device)
        if splits:  # every use of the data (training, evaluation, the bundle) takes the convention found here
            requested = plan.dataset.normalization if plan.dataset else None
            self.input_convention = find_input_convention(
                teacher.model, splits.train, teacher.num_classes, requested, plan.training.device
            )
            splits.normalization = self.input_convention.chosen.normalization
            log.info("input convention: %s: %s", self.input_convention.chosen.name, self.input_convention.reason)
        return teacher_row, splits, input_shape, teacher

    def run(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        device = plan.training.device

        self.stage("load_teacher")
        teacher_row, splits, input_shape, teacher = self.load_inputs(plan)

        student = self.obtain_student(plan, teacher, splits, input_shape, device)

        self.stage("evaluate")
        if splits:
            inputs = EvalInputs(splits.val, splits.normalization)
        elif student.generator is not None:  # no labelled data: fresh generated images stand in for parity and latency
            inputs = EvalInputs(student.generator.sample(PARITY_SAMPLES))
        else:  # a benchmark-only job without data: latency on random inputs, no accuracy
            inputs = EvalInputs(torch.randn(PARITY_SAMPLES, *input_shape, generator=torch.Generator().manual_seed(0)))
        teacher_logits = predict(teacher.model, inputs.batches(), device)
        # The student is evaluated, exported and timed at the size it will be deployed at.
        student_shape = (input_shape[0], *(plan.export.input_size or input_shape[1:]))
        student_inputs = inputs.resized(student_shape[1:]) if student_shape != input_shape else inputs
        student_logits = self.student_logits(student, student_inputs, student_shape != input_shape, device)
        if student.training is not None:
            student.training.val_samples = len(inputs) if inputs.labels is not None else 0

        self.stage("export")
        student.model.cpu().eval()
        variants = [
            self.torch_variant("teacher", teacher.model, teacher_logits, teacher_row.size_bytes, input_shape, device,
                               onnx=teacher.format == onnx_teacher.ONNX),
        ]
        if student.is_onnx:
            assert student.file is not None
            variants.append(self.torch_variant("student", student.model, student_logits, student.file.stat().st_size,
                                               student_shape, "cpu", onnx=True))
            export = None
        else:
            if student.file is None:
                self.save_student(plan, student.model, teacher.num_classes, input_shape, splits)
            student.model.to(device)
            size = (student.file or self.files["student.pt"]).stat().st_size
            artifact = "" if student.file else "student.pt"
            variants.append(self.torch_variant("student", student.model, student_logits, size, student_shape, device,
                                               artifact=artifact, inputs=student_inputs))
            export = self.export(plan, student, student_inputs, variants)  # exports from the CPU
            student.model.to(device)

        self.stage("benchmark")
        latency = self.benchmark(plan.benchmark, variants, inputs)

        self.stage("report")
        report = self.build_report(plan, teacher, student, input_shape, student_shape, variants, inputs, latency)
        if student.training is not None:
            report.training.CopyFrom(student.training)
        if export is not None:
            report.export.CopyFrom(export)
        if student.data_free is not None:
            report.data_free.CopyFrom(student.data_free)
        handing_off = export is not None and not plan.benchmark_only
        if handing_off:
            report.export.bundle_artifact = "bundle.zip"
        report_format.finish(report)
        self.hand_off(report, splits, teacher.num_classes, teacher_row.sha256, with_bundle=handing_off)
        self.artifact("report.json").write_text(json_format.MessageToJson(report, preserving_proto_field_name=True))
        self.artifact("report.md").write_text(report_format.to_markdown(report))
        self.artifact("report.html").write_text(report_html.to_html(report))
        for name, path in self.files.items():
            sha, size = self.blobs.put_file(path)
            self.store.put_artifact(self.job_id, pb.Artifact(name=name, sha256=sha, size_bytes=size))
        self.checkpoint_path.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if student.data_free is not None:
            why = report_format.data_free_failure(report)
            if why:
                raise DataFreeFailedError(f"{why}; its student, report and samples are kept for inspection (DownloadArtifact)")

    def hand_off(
        self, report: pb.Report, splits: Splits | None, num_classes: int, teacher_sha256: str, with_bundle: bool
    ) -> None:
        """metadata_props in every ONNX file this job made (never an uploaded one), then bundle.zip."""
        classes = splits.val.classes if splits else [str(c) for c in range(num_classes)]
        handoff = bundle.Handoff(report, classes, splits.normalization if splits else None, teacher_sha256)
        onnx_files = {v.artifact: self.files[v.artifact] for v in report.variants if v.artifact.endswith(".onnx")}
        for name, path in onnx_files.items():
            onnx_export.write_metadata(path, handoff.onnx_metadata(name))
        if with_bundle:
            handoff.write_zip(self.artifact("bundle.zip"), onnx_files)

    def model_row(self, model_id: str, role: str) -> pb.Model:
        row = self.store.get_model(model_id)
        if row is None:
            raise FileNotFoundError(f"{role} model {model_id} is gone from the store")
        return row

    def obtain_student(
        self,
        plan: specs.JobPlan,
        teacher: Teacher,
        splits: Splits | None,
        input_shape: tuple[int, int, int],
        device: str,
    ) -> Student:
        """The uploaded student of a benchmark-only job, or a new one distilled from the teacher."""
        if plan.benchmark_only:
            self.stage("build_student", "loading the uploaded student")
            student = self.load_uploaded_student(plan.benchmark_only.student_model_id, input_shape, teacher.num_classes)
            if not student.is_onnx:
                student.model.to(device)
            return student
        self.stage("build_student", plan.student_architecture)
        student = Student(self.new_student(plan, teacher.num_classes, input_shape[0]), plan.student_architecture)
        if plan.distributed:
            student.training, result = self.distil_on_ranks(plan, student.model)
        else:
            student.training, result = self.train(plan, teacher, student.model, splits, input_shape, self.resume(device))
        if result is not None:
            assert plan.data_free is not None
            student.data_free = self.inspect_generator(result, plan.data_free.config, teacher, student.model)
            student.generator = result.generator
        return student

    def new_student(self, plan: specs.JobPlan, num_classes: int, channels: int) -> torch.nn.Module:
        torch.manual_seed(plan.training.seed)  # the same spec gives the same student, init included (on every rank)
        return models.build(plan.student_architecture, num_classes, channels)

    def resume(self, device: str) -> dict[str, Any] | None:
        """The job's last checkpoint, if it has one (a restart or a drain interrupted it)."""
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location=device, weights_only=True)

    def train(
        self,
        plan: specs.JobPlan,
        teacher: Teacher,
        student: torch.nn.Module,
        splits: Splits | None,
        input_shape: tuple[int, int, int],
        resume: dict[str, Any] | None,
    ) -> tuple[pb.TrainingSummary, DataFreeResult | None]:
        """Distil in this process (one of several, or the only one): the engine's one call; the data-free result too."""
        job = engine.Job(
            teacher=teacher.model,
            student=student,
            data=None if plan.data_free else splits,
            methods=tuple(plan.methods),
            training=plan.training,
            data_free=plan.data_free.config if plan.data_free else None,
            input_shape=input_shape,
            normalization=splits.normalization if splits else None,  # found when the teacher was loaded
            teacher_exposes_modules=teacher.format == STATE_DICT,
            evaluate=False,  # the evaluate stage scores every variant, in every runtime
        )
        with self.stop.at_step_boundaries():
            outcome = engine.run(job, **self.training_callbacks(), resume_from=resume, stop_requested=self.stop,
                                 on_stage=self.stage)
        return convert.training_summary(outcome.training), outcome.data_free

    def distil_on_ranks(
        self, plan: specs.JobPlan, student: torch.nn.Module
    ) -> tuple[pb.TrainingSummary, DataFreeResult | None]:
        """Train on the plan's processes (this worker is their elastic agent), then take the trained weights."""
        assert plan.distributed is not None
        launch = replace(plan.distributed, log_dir=str(self.config.logs_dir / f"{self.job_id}.ranks"))
        log.info("launching %d training processes per node on %d node(s), run %s",
                 launch.processes_per_node, launch.nodes, launch.run_id)
        outcomes = ranks.run(launch, self.workdir, rank_main, self.config, self.job_id, os.getpid())
        summary, data_free = outcomes[min(outcomes)]  # this node's first rank
        trained = torch.load(self.workdir / _TRAINED, map_location="cpu", weights_only=True)
        student.load_state_dict(trained["student"])
        result = None
        if data_free is not None:
            generator = Generator.from_checkpoint(trained["generator"]).to(plan.training.device)
            result = DataFreeResult(**data_free, generator=generator)
        return pb.TrainingSummary.FromString(summary), result

    def train_as_rank(self) -> tuple[bytes, dict[str, Any] | None]:
        """One training process's share of ``distil_on_ranks`` (see ``rank_main``)."""
        plan = self.plan()
        plan = plan.on_device(distributed.init(plan.training.device))
        _, splits, input_shape, teacher = self.load_inputs(plan)
        student = self.new_student(plan, teacher.num_classes, input_shape[0])
        # Rank 0 reads the checkpoint and the engine hands it to the others: on the CPU, the one device all share.
        resume = self.resume("cpu") if self.rank == 0 else None
        summary, result = self.train(plan, teacher, student, splits, input_shape, resume)
        if self.local_rank == 0:  # every node's worker goes on with the trained student
            trained = {"student": student.state_dict()}
            if result is not None:
                trained["generator"] = result.generator.to_checkpoint()
            _save_atomically(trained, self.workdir / _TRAINED)
        torch.distributed.destroy_process_group()
        data_free = None  # the result's fields but the generator, which travels in the file
        if result is not None:
            data_free = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "generator"}
        return summary.SerializeToString(), data_free

    def student_logits(self, student: Student, inputs: EvalInputs, resized: bool, device: str) -> torch.Tensor:
        try:
            return predict(student.model, inputs.batches(), device)
        except RuntimeError as e:
            if not resized:
                raise
            assert inputs.size is not None
            raise ValueError(
                f"the student ({student.architecture}) cannot take {inputs.size[0]}x{inputs.size[1]} inputs "
                f"(export.input_size); leave it unset or pick a student with global pooling: {str(e).splitlines()[0]}"
            ) from e

    def load_uploaded_student(self, model_id: str, input_shape: tuple[int, int, int], num_classes: int) -> Student:
        row = self.model_row(model_id, "student")
        path = self.blobs.path(row.sha256)
        try:
            loaded = model_formats.load_teacher(row, path, input_shape, self.threads, self.archive_limits)
        except ModelFileError as e:  # the loader speaks of teachers; here the file is the student
            raise ModelFileError(f"the student model {model_id}: {e}") from e
        if loaded.num_classes != num_classes:
            raise ValueError(f"the student has {loaded.num_classes} outputs but the teacher has {num_classes}")
        return Student(loaded.model, row.architecture or loaded.architecture, row.format == pb.MODEL_FORMAT_ONNX, path)

    def inspect_generator(
        self, result: DataFreeResult, config: DataFreeConfig, teacher: Teacher, student: torch.nn.Module
    ) -> pb.DataFreeSummary:
        """Sample the trained generator for people (a grid, the class histogram) and keep it for calibration."""
        check = check_generator(result.generator, teacher.model, student)
        save_image(check.grid, self.artifact("samples.png"))
        torch.save(result.generator.cpu().to_checkpoint(), self.artifact("generator.pt"))
        return convert.data_free_summary(result, config, check, samples_artifact="samples.png")

    def save_student(
        self,
        plan: specs.JobPlan,
        student: torch.nn.Module,
        num_classes: int,
        input_shape: tuple[int, int, int],
        splits: Splits | None,
    ) -> None:
        normalization = splits.normalization if splits else None
        torch.save(
            {
                "architecture": plan.student_architecture,
                "num_classes": num_classes,
                "input_shape": list(input_shape),
                "classes": splits.train.classes if splits else [str(c) for c in range(num_classes)],
                # Empty without a dataset: the student takes the inputs the teacher took, normalised the same way.
                "mean": normalization.mean if normalization else [],
                "std": normalization.std if normalization else [],
                "state_dict": student.state_dict(),
            },
            self.artifact("student.pt"),
        )

    def export(
        self, plan: specs.JobPlan, student: Student, inputs: EvalInputs, variants: list[Variant]
    ) -> pb.ExportSummary | None:
        """student.onnx, checked against PyTorch; adds its onnxruntime variants (CPU, and CUDA when present).

        A distilled student must export. An uploaded PyTorch student that will
        not is still benchmarked in PyTorch; the report's notes say why not in onnxruntime.
        """
        options = plan.export
        parity_inputs = inputs.first(PARITY_SAMPLES)
        path = self.artifact("student.onnx")
        try:
            exported = onnx_export.export_onnx(
                student.model, parity_inputs[:2], path, options.opset, options.dynamic_batch, options.exporters
            )
            session = onnx_export.session(path, num_threads=self.threads)
            parity = onnx_export.validate(session, student.model, parity_inputs, options.parity_tolerance)
        except (onnx_export.ExportError, onnx_export.ParityError) as e:
            if not plan.benchmark_only:
                raise
            self.files.pop("student.onnx")
            self.notes.append(f"the uploaded student was not measured in onnxruntime: {e}")
            return None
        fp32 = variants[-1]
        providers = [CPU_EP] + ([CUDA_EP] if CUDA_EP in onnxruntime.get_available_providers() else [])
        variants += [self.onnx_variant(fp32, "student.onnx", inputs, provider) for provider in providers]
        reduced = []  # a benchmark-only job measures the models it was given, nothing more
        if options.int8 and not plan.benchmark_only:
            reduced += [(quantize.STATIC, "student.int8.onnx"), (quantize.DYNAMIC, "student.int8-dynamic.onnx")]
        if options.fp16 and not plan.benchmark_only:
            reduced.append((quantize.FP16, "student.fp16.onnx"))
        # Calibration (static INT8): the inputs the student is evaluated on (generated ones for a data-free job).
        calibration = [x.numpy() for x in inputs.first(CALIBRATION_SAMPLES).split(64)]
        for kind, name in reduced:
            try:
                quantize.reduce_precision(path, self.workdir / name, kind, calibration)
            except Exception as e:  # an op onnxruntime cannot convert: ship the rest, say why
                log.warning("%s failed", kind, exc_info=True)
                self.notes.append(f"no {kind} variant: {str(e).splitlines()[0][:300]}")
                continue
            self.artifact(name)
            variants.append(self.onnx_variant(fp32, name, inputs, CPU_EP, precision=kind))
        return pb.ExportSummary(
            opset=exported.opset,
            exporter=exported.exporter,
            parity_max_abs_diff=parity.max_abs_diff,
            parity_max_rel_diff=parity.max_rel_diff,
            parity_top1_mismatch=100 * parity.top1_mismatch,
            parity_tolerance=parity.tolerance,
            parity_samples=parity.samples,
            dynamic_batch=options.dynamic_batch,
            accuracy_budget=options.accuracy_budget,
            input_shape=parity_inputs.shape[1:],
        )

    def onnx_variant(self, fp32: Variant, name: str, inputs: EvalInputs, provider: str, precision: str = "fp32") -> Variant:
        """A shipped ONNX file in onnxruntime: its logits on the evaluation inputs, and how to time it."""
        path = self.files[name]
        session = onnx_export.session(path, self.threads, [provider])
        logits = torch.from_numpy(onnx_export.predict(session, (x.numpy() for x in inputs.batches())))
        runner = Runner(
            open=lambda: onnx_export.runner(onnx_export.session(path, self.threads, [provider])),
            prepare=lambda batch: inputs.fit(batch).numpy(),
            max_batch=onnx_export.static_batch(session),
        )
        device = "cuda" if provider == CUDA_EP else "cpu"
        return Variant("student", "onnxruntime", runner, logits, path.stat().st_size, fp32.parameters, fp32.macs, device,
                       provider, precision, name)

    def torch_variant(
        self,
        role: str,
        model: torch.nn.Module,
        logits: torch.Tensor,
        file_size: int,
        shape: tuple[int, int, int],
        device: str,
        onnx: bool = False,
        artifact: str = "",
        inputs: EvalInputs | None = None,
    ) -> Variant:
        """A model as loaded: PyTorch, or an uploaded ONNX file run by onnxruntime behind a module.

        ``inputs``: the view of the evaluation inputs it is timed on, when not the native one.
        """
        if onnx:
            parameters, device = onnx_teacher.parameter_count(model), "cpu"
            macs = _macs(lambda: onnx_teacher.mac_count(model, shape))
        else:
            parameters, macs = count_parameters(model), _macs(lambda: count_macs(model, shape, device))
        runner = Runner(
            open=lambda: torch_runner(model),
            prepare=lambda batch: (inputs.fit(batch) if inputs else batch).to(device),
            on_cuda=device.startswith("cuda"),
        )
        return Variant(role, "onnxruntime" if onnx else "pytorch", runner, logits, file_size, parameters, macs, device,
                       CPU_EP if onnx else "", artifact=artifact)

    def benchmark(
        self, plan: specs.BenchmarkPlan, variants: list[Variant], inputs: EvalInputs
    ) -> dict[str, list[LatencyStats]]:
        """Latency of every variant at every batch size, on real inputs, with the same threads."""
        threads = plan.num_threads or self.threads
        torch.set_num_threads(threads)
        self.threads = threads  # onnxruntime sessions opened from here on use the same count
        return measure_runners(
            {v.name: v.runner for v in variants},
            lambda batch_size: inputs.take(torch.arange(batch_size) % len(inputs)),
            plan.timing,
            on_skip=lambda name, batch_size, why: self.notes.append(f"{name} skipped batch {batch_size} and larger: {why}"),
        )

    def build_report(
        self,
        plan: specs.JobPlan,
        teacher: Teacher,
        student: Student,
        shape: tuple[int, int, int],
        student_shape: tuple[int, int, int],
        variants: list[Variant],
        inputs: EvalInputs,
        latency: dict[str, list[LatencyStats]],
    ) -> pb.Report:
        """The measurements as a Report; ``report.finish`` adds what is derived from them."""
        teacher_card = next(v for v in variants if v.model == "teacher")
        student_card = next(v for v in variants if v.model == "student")
        report = pb.Report(
            job_id=self.job_id,
            kind=pb.JOB_KIND_BENCHMARK_ONLY if plan.benchmark_only else pb.JOB_KIND_DISTILLATION,
            teacher=_model_card(teacher.architecture, teacher_card, teacher.num_classes, shape),
            student=_model_card(student.architecture, student_card, teacher.num_classes, student_shape),
            environment=_environment(torch.get_num_threads()),
            notes=self.notes,
        )
        if self.input_convention is not None:
            report.input_convention.CopyFrom(convert.input_convention(self.input_convention))
        report.create_time.GetCurrentTime()
        for v in variants:
            row = report.variants.add(
                name=v.name,
                model=v.model,
                runtime=v.runtime,
                precision=v.precision,
                artifact=v.artifact,
                file_size_bytes=v.file_size,
                parameters=v.parameters,
                macs=v.macs,
                device=v.device,
                execution_provider=v.execution_provider,
            )
            measured = inputs.score(v.logits, teacher_card.logits)
            if measured is not None:
                row.accuracy.CopyFrom(
                    pb.Accuracy(samples=measured.samples, top1=measured.top1, agreement_with_teacher=measured.agreement or 0.0)
                )
                if measured.top5 is not None:
                    row.accuracy.top5 = measured.top5
            for stats in latency[v.name]:
                row.latency.add(
                    batch_size=stats.batch_size,
                    runs=stats.runs,
                    p50_ms=stats.p50_ms,
                    p90_ms=stats.p90_ms,
                    p95_ms=stats.p95_ms,
                    p99_ms=stats.p99_ms,
                    mean_ms=stats.mean_ms,
                    stdev_ms=stats.stdev_ms,
                    throughput_per_s=stats.throughput_per_s,
                    peak_memory_bytes=stats.peak_memory_bytes,
                )
        if inputs.labels is not None:
            names = inputs.val.classes if isinstance(inputs.val, ImageData) else []
            teacher_classes = per_class_top1(teacher_card.logits, inputs.labels, teacher.num_classes)
            student_classes = per_class_top1(student_card.logits, inputs.labels, teacher.num_classes)
            for c, ((samples, teacher_top1), (_, student_top1)) in enumerate(zip(teacher_classes, student_classes)):
                name = names[c] if c < len(names) else str(c)
                report.per_class.add(name=name, samples=samples, teacher_top1=teacher_top1, student_top1=student_top1)
        return report


def _save_atomically(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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


def _model_card(architecture: str, variant: Variant, num_classes: int, shape: tuple[int, int, int]) -> pb.ModelCard:
    return pb.ModelCard(
        architecture=architecture, parameters=variant.parameters, macs=variant.macs, num_classes=num_classes, input_shape=shape
    )


def _macs(count: Callable[[], int]) -> int:
    """The count, or 0 ("-" in the report): a number in a table must not fail the job."""
    try:
        return count()
    except Exception:  # an opaque model may not run under the flop counter, an odd graph may not parse
        log.warning("could not count MACs", exc_info=True)
        return 0


def _environment(threads: int) -> pb.Environment:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return pb.Environment(
        cpu=cpu,
        cpu_cores=os.cpu_count() or 0,
        num_threads=threads,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
        onnx_version=onnx.__version__,
        execution_providers=onnxruntime.get_available_providers(),
        python_version=platform.python_version(),
        platform=platform.platform(terse=True),
    )
