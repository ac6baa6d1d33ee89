"""One job, start to finish, in its own spawned process.

load_teacher -> build_student -> distil -> evaluate -> export -> benchmark -> report

Each stage is announced as an event in the store. The worker ends its job
itself (SUCCEEDED, or FAILED with a readable message); if it dies instead, the
supervisor sees the exit and fails the job.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf import json_format
from torchvision.utils import save_image

from distill import models
from distill.benchmark import LatencyStats, count_macs, count_parameters, measure_latency, torch_runner
from distill.allocator import keep_freed_memory
from distill.data import ImageData, Normalization, Splits
from distill.datafree import DataFreeConfig, DataFreeResult, check_generator, distil_data_free, resolve_method
from distill.evaluate import AccuracyResult, accuracy
from distill.loading import STATE_DICT, Teacher
from distill.losses import build_loss
from distill.trainer import Progress, distil, predict
from exporters import onnx_export, onnx_teacher
from protos.distillery.v1 import distillery_pb2 as pb
from service import report as report_format
from service import model_formats, specs
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


def main(config: ServerConfig, job_id: str) -> None:
    """Process entry point (spawned by the supervisor)."""
    # Own process group: cancelling kills the worker and anything it started.
    os.setpgrp()
    # The parent owns shutdown; a Ctrl-C in the terminal must not kill jobs half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        filename=config.logs_dir / f"{job_id}.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    torch.set_num_threads(config.threads_per_worker())
    keep_freed_memory()  # the same large activations every step: reuse their pages (see distill/allocator.py)
    store = Store(config.db_path)
    try:
        Job(config, store, job_id).run()
        store.transition(job_id, pb.JOB_STATE_SUCCEEDED, "succeeded")
    except Exception as e:  # every failure ends the job with a readable message
        log.exception("job %s failed", job_id)
        store.transition(job_id, pb.JOB_STATE_FAILED, describe(e), status_code(e).value[0])
    finally:
        store.close()


@dataclass
class Measured:
    """What the pipeline learns, gathered for the report."""

    teacher_accuracy: AccuracyResult | None  # None: no labelled data to score on
    student_accuracy: AccuracyResult | None
    onnx_accuracy: AccuracyResult | None
    training: pb.TrainingSummary
    export: onnx_export.ExportResult
    parity: onnx_export.ParityResult
    latency: dict[str, list[LatencyStats]]
    files: dict[str, Path]
    data_free: pb.DataFreeSummary | None


@dataclass
class EvalInputs:
    """What evaluation, export parity and benchmarks run on: the validation split, or generated images.

    Generated images are already normalised and carry no labels.
    """

    val: ImageData | torch.Tensor
    normalization: Normalization | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        return self.val.labels if isinstance(self.val, ImageData) else None

    def __len__(self) -> int:
        return len(self.val)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.val, ImageData):
            assert self.normalization is not None
            return self.normalization.apply(self.val.images[index])
        return self.val[index]

    def first(self, count: int) -> torch.Tensor:
        return self.take(torch.arange(min(count, len(self))))

    def batches(self, batch_size: int = 512) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, len(self))))

    def score(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> AccuracyResult | None:
        return accuracy(logits, self.labels, teacher_logits) if self.labels is not None else None


class Job:
    def __init__(self, config: ServerConfig, store: Store, job_id: str) -> None:
        self.config, self.store, self.job_id = config, store, job_id
        self.blobs = BlobStore(config.blobs_dir, config.tmp_dir)
        self.workdir = config.tmp_dir / job_id
        self.checkpoint_path = config.checkpoints_dir / f"{job_id}.pt"

    # ------------------------------------------------------------ events

    def stage(self, name: str, message: str = "") -> None:
        log.info("stage %s %s", name, message)
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
            ),
        )

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    # ---------------------------------------------------------- pipeline

    def run(self) -> None:
        job = self.store.get_job(self.job_id)
        assert job is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        plan = specs.plan(job.spec, self.config.data_roots, torch.cuda.is_available())
        device = plan.training.device

        self.stage("load_teacher")
        model_row = self.store.get_model(plan.teacher_model_id)
        if model_row is None:
            raise FileNotFoundError(f"teacher model {plan.teacher_model_id} is gone from the store")
        splits = plan.dataset.load() if plan.dataset else None
        input_shape = _input_shape(plan, splits)
        teacher = model_formats.load_teacher(
            model_row, self.blobs.path(model_row.sha256), input_shape, self.config.threads_per_worker()
        )
        if splits and teacher.num_classes != len(splits.train.classes):
            raise ValueError(
                f"the teacher has {teacher.num_classes} outputs but the dataset has {len(splits.train.classes)} classes"
            )
        teacher.model.to(device)

        self.stage("build_student", plan.student_architecture)
        torch.manual_seed(plan.training.seed)  # the same spec gives the same student, init included
        student = models.build(plan.student_architecture, teacher.num_classes, input_shape[0])
        resume = None
        if self.checkpoint_path.exists():
            resume = torch.load(self.checkpoint_path, map_location=device, weights_only=True)
        files = {name: self.workdir / name for name in ("student.pt", "student.onnx", "report.json", "report.md")}
        data_free = None
        if plan.data_free:
            training, result = self.distil_without_data(plan, teacher, student, input_shape, resume)
        else:
            assert splits is not None
            training = self.distil_with_data(plan, teacher, student, splits, resume)

        self.stage("evaluate")
        if plan.data_free:
            data_free = self.inspect_generator(result, plan.data_free.config, teacher, student, files)
        if splits:
            inputs = EvalInputs(splits.val, splits.normalization)
        else:  # no labelled data: fresh generated images stand in for parity and latency inputs
            inputs = EvalInputs(result.generator.sample(PARITY_SAMPLES))
        teacher_logits = predict(teacher.model, inputs.batches(), device)
        student_logits = predict(student, inputs.batches(), device)
        training.val_samples = len(inputs) if inputs.labels is not None else 0
        teacher_acc = inputs.score(teacher_logits, teacher_logits)
        student_acc = inputs.score(student_logits, teacher_logits)

        self.stage("export")
        student.cpu().eval()
        normalization = splits.normalization if splits else None
        torch.save(
            {
                "architecture": plan.student_architecture,
                "num_classes": teacher.num_classes,
                "input_shape": list(input_shape),
                "classes": splits.train.classes if splits else [str(c) for c in range(teacher.num_classes)],
                # Empty without a dataset: the student takes the inputs the teacher took, normalised the same way.
                "mean": normalization.mean if normalization else [],
                "std": normalization.std if normalization else [],
                "state_dict": student.state_dict(),
            },
            files["student.pt"],
        )
        parity_inputs = inputs.first(PARITY_SAMPLES)
        exported = onnx_export.export_onnx(student, parity_inputs[:2], files["student.onnx"], plan.opset)
        session = onnx_export.session(files["student.onnx"], num_threads=self.config.threads_per_worker())
        parity = onnx_export.validate(session, student, parity_inputs, plan.parity_tolerance)
        onnx_logits = torch.from_numpy(np.concatenate([onnx_export.run(session, x.numpy()) for x in inputs.batches()]))
        onnx_acc = inputs.score(onnx_logits, teacher_logits)

        self.stage("benchmark")
        latency = self.benchmark(plan.benchmark, teacher, student, files["student.onnx"], inputs, device)

        self.stage("report")
        measured = Measured(teacher_acc, student_acc, onnx_acc, training, exported, parity, latency, files, data_free)
        report = self.build_report(plan, model_row, teacher, student, input_shape, measured)
        files["report.json"].write_text(json_format.MessageToJson(report, preserving_proto_field_name=True))
        files["report.md"].write_text(report_format.to_markdown(report))
        for name, path in files.items():
            sha, size = self.blobs.put_file(path)
            self.store.put_artifact(self.job_id, pb.Artifact(name=name, sha256=sha, size_bytes=size))
        self.checkpoint_path.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def distil_with_data(
        self, plan: specs.JobPlan, teacher: Teacher, student: torch.nn.Module, splits: Splits, resume: dict[str, Any] | None
    ) -> pb.TrainingSummary:
        loss = build_loss(
            plan.methods,
            teacher.model,
            student,
            splits.train.input_shape,
            teacher_exposes_modules=teacher.format == STATE_DICT,
        )
        self.stage("distil", f"resuming from step {resume['step']}" if resume else str(loss))
        trained = distil(
            student,
            teacher.model,
            loss,
            splits.train,
            splits.normalization,
            plan.training,
            on_progress=self.on_progress,
            on_checkpoint=self.on_checkpoint,
            resume_from=resume,
        )
        return pb.TrainingSummary(
            method=str(loss),
            epochs=loss.pretrain_epochs + plan.training.epochs,
            steps=trained.steps,
            final_loss=trained.final_loss,
            wall_seconds=trained.wall_seconds,
            device=plan.training.device,
            train_samples=len(splits.train),
        )

    def distil_without_data(
        self,
        plan: specs.JobPlan,
        teacher: Teacher,
        student: torch.nn.Module,
        input_shape: tuple[int, int, int],
        resume: dict[str, Any] | None,
    ) -> tuple[pb.TrainingSummary, DataFreeResult]:
        assert plan.data_free is not None
        config = plan.data_free.config
        method = resolve_method(config.method, teacher.model)
        described = (
            f"{method}(iterations={config.iterations}, student_steps={config.student_steps}, "
            f"batch_size={config.batch_size}, generator_width={config.generator_width})"
        )
        self.stage("distil", f"resuming from iteration {resume['step']}" if resume else described)
        trained = distil_data_free(
            student,
            teacher.model,
            input_shape,
            config,
            on_progress=self.on_progress,
            on_checkpoint=self.on_checkpoint,
            resume_from=resume,
        )
        summary = pb.TrainingSummary(
            method=described,
            steps=trained.iterations,
            final_loss=trained.final_loss,
            wall_seconds=trained.wall_seconds,
            device=config.device,
        )
        return summary, trained

    def inspect_generator(
        self,
        result: DataFreeResult,
        config: DataFreeConfig,
        teacher: Teacher,
        student: torch.nn.Module,
        files: dict[str, Path],
    ) -> pb.DataFreeSummary:
        """Sample the trained generator for people (a grid, the class histogram) and keep it for calibration."""
        check = check_generator(result.generator, teacher.model, student)
        files["samples.png"], files["generator.pt"] = self.workdir / "samples.png", self.workdir / "generator.pt"
        save_image(check.grid, files["samples.png"])
        torch.save(result.generator.cpu().to_checkpoint(), files["generator.pt"])
        return pb.DataFreeSummary(
            method=result.method,
            iterations=config.iterations,
            student_steps=config.student_steps,
            batch_size=config.batch_size,
            class_histogram=check.class_histogram,
            generated_samples=check.samples,
            agreement_on_generated=check.agreement,
            samples_artifact="samples.png",
        )

    def benchmark(
        self,
        plan: specs.BenchmarkPlan,
        teacher: Teacher,
        student: torch.nn.Module,
        onnx_path: Path,
        inputs: EvalInputs,
        device: str,
    ) -> dict[str, list[LatencyStats]]:
        """p50/p90/p99 latency of each variant at each batch size, on real inputs."""
        threads = plan.num_threads or self.config.threads_per_worker()
        torch.set_num_threads(threads)
        session = onnx_export.session(onnx_path, num_threads=threads)
        student.to(device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else None
        runners = {
            f"teacher/{_runtime(teacher)}": (torch_runner(teacher.model), True),
            "student/pytorch": (torch_runner(student), True),
            "student/onnxruntime": (lambda x: onnx_export.run(session, x), False),
        }
        results: dict[str, list[LatencyStats]] = {name: [] for name in runners}
        for batch_size in plan.batch_sizes:
            batch = inputs.take(torch.arange(batch_size) % len(inputs))
            for name, (fn, is_torch) in runners.items():
                x = batch.to(device) if is_torch else batch.numpy()
                results[name].append(
                    measure_latency(
                        fn,
                        x,
                        batch_size,
                        warmup_runs=plan.warmup_runs,
                        min_runs=plan.min_runs,
                        min_seconds=plan.min_seconds,
                        synchronize=sync if is_torch else None,
                    )
                )
        student.cpu()
        return results

    def build_report(
        self,
        plan: specs.JobPlan,
        model_row: pb.Model,
        teacher: Teacher,
        student: torch.nn.Module,
        shape: tuple[int, int, int],
        m: Measured,
    ) -> pb.Report:
        report = pb.Report(
            job_id=self.job_id,
            teacher=_model_card(teacher.architecture, teacher.model.cpu(), teacher.num_classes, shape),
            student=_model_card(plan.student_architecture, student, teacher.num_classes, shape),
            training=m.training,
            export=pb.ExportSummary(
                opset=m.export.opset,
                exporter=m.export.exporter,
                parity_max_abs_diff=m.parity.max_abs_diff,
                parity_tolerance=m.parity.tolerance,
                parity_samples=m.parity.samples,
            ),
            environment=_environment(torch.get_num_threads()),
            data_free=m.data_free,
        )
        report.create_time.GetCurrentTime()
        variants = [
            ("teacher", _runtime(teacher), m.teacher_accuracy, model_row.size_bytes),
            ("student", "pytorch", m.student_accuracy, m.files["student.pt"].stat().st_size),
            ("student", "onnxruntime", m.onnx_accuracy, m.files["student.onnx"].stat().st_size),
        ]
        for model, runtime, acc, size in variants:
            v = report.variants.add(
                name=f"{model} / {runtime}", model=model, runtime=runtime, precision="fp32", file_size_bytes=size
            )
            if acc is not None:
                v.accuracy.CopyFrom(pb.Accuracy(samples=acc.samples, top1=acc.top1, agreement_with_teacher=acc.agreement or 0.0))
                if acc.top5 is not None:
                    v.accuracy.top5 = acc.top5
            for stats in m.latency[f"{model}/{runtime}"]:
                v.latency.add(
                    batch_size=stats.batch_size,
                    runs=stats.runs,
                    p50_ms=stats.p50_ms,
                    p90_ms=stats.p90_ms,
                    p99_ms=stats.p99_ms,
                    mean_ms=stats.mean_ms,
                    stdev_ms=stats.stdev_ms,
                    throughput_per_s=stats.throughput_per_s,
                )
        report.summary = report_format.summary(report)
        return report


def _input_shape(plan: specs.JobPlan, splits: Splits | None) -> tuple[int, int, int]:
    """The teacher's input: the data-free spec's, else the dataset's; both must agree when both exist."""
    given = plan.data_free.input_shape if plan.data_free else None
    if splits is None:
        assert given is not None  # specs.plan requires one of them
        return given
    if given is not None and given != splits.train.input_shape:
        raise ValueError(f"data_free.input_shape {given} differs from the dataset's images {splits.train.input_shape}")
    return splits.train.input_shape


def _runtime(teacher: Teacher) -> str:
    return "onnxruntime" if teacher.format == onnx_teacher.ONNX else "pytorch"


def _model_card(architecture: str, model: torch.nn.Module, num_classes: int, shape: tuple[int, int, int]) -> pb.ModelCard:
    try:
        macs = count_macs(model, shape)
    except Exception:  # an opaque teacher may not run under the flop counter
        log.warning("could not count MACs of %s", architecture, exc_info=True)
        macs = 0
    return pb.ModelCard(
        architecture=architecture,
        parameters=count_parameters(model),
        macs=macs,
        num_classes=num_classes,
        input_shape=shape,
    )


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
    )
