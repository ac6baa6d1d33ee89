"""The report stage's first half: the measurements as a Report proto (``report.finish`` derives the verdicts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import onnx
from google.protobuf import json_format
import torch

from distill.benchmark import LatencyStats
from distill.evaluate import per_class_top1
from exporters import runtimes
from protos.distillery.v1 import distillery_pb2 as pb
from service import convert, specs
from service.job_inputs import JobInputs
from service.students import Student
from service.variants import EvalInputs, Exported, Variant


def build(
    job_id: str,
    plan: specs.JobPlan,
    inputs: JobInputs,
    student: Student,
    student_shape: tuple[int, int, int],
    variants: list[Variant],
    eval_inputs: EvalInputs,
    latency: dict[str, list[LatencyStats]],
    exported: Exported | None,
    notes: list[str],
) -> pb.Report:
    teacher = inputs.teacher
    teacher_card = next(v for v in variants if v.model == "teacher")
    student_card = next(v for v in variants if v.model == "student")
    report = pb.Report(
        job_id=job_id,
        kind=pb.JOB_KIND_BENCHMARK_ONLY if plan.benchmark_only else pb.JOB_KIND_DISTILLATION,
        teacher=_model_card(teacher.architecture, teacher_card, teacher.num_classes, inputs.input_shape),
        student=_model_card(student.architecture, student_card, teacher.num_classes, student_shape),
        environment=_environment(torch.get_num_threads()),
        notes=notes,
    )
    if inputs.input_convention is not None:
        report.input_convention.CopyFrom(convert.input_convention(inputs.input_convention))
    if plan.student_pick:
        json_format.Parse(plan.student_pick, report.student_pick)
    if student.training is not None:
        report.training.CopyFrom(student.training)
        report.training.val_samples = len(eval_inputs) if eval_inputs.labels is not None else 0
    if exported is not None and exported.summary is not None:
        report.export.CopyFrom(exported.summary)
    if student.data_free is not None:
        report.data_free.CopyFrom(student.data_free)
    if student.search is not None:
        report.search.CopyFrom(student.search)
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
        if v.parity is not None:
            row.parity.CopyFrom(pb.Parity(
                samples=v.parity.samples, max_abs_diff=v.parity.max_abs_diff, max_rel_diff=v.parity.max_rel_diff,
                top1_mismatch=100 * v.parity.top1_mismatch, within_tolerance=v.parity.within,
            ))
        measured = eval_inputs.score(v.logits, teacher_card.logits)
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
    if eval_inputs.labels is not None:
        names = [] if isinstance(eval_inputs.val, torch.Tensor) else eval_inputs.val.classes
        teacher_classes = per_class_top1(teacher_card.logits, eval_inputs.labels, teacher.num_classes)
        student_classes = per_class_top1(student_card.logits, eval_inputs.labels, teacher.num_classes)
        for c, ((samples, teacher_top1), (_, student_top1)) in enumerate(zip(teacher_classes, student_classes)):
            name = names[c] if c < len(names) else str(c)
            report.per_class.add(name=name, samples=samples, teacher_top1=teacher_top1, student_top1=student_top1)
    return report


def _model_card(architecture: str, variant: Variant, num_classes: int, shape: tuple[int, int, int]) -> pb.ModelCard:
    return pb.ModelCard(
        architecture=architecture, parameters=variant.parameters, macs=variant.macs, num_classes=num_classes, input_shape=shape
    )


def _environment(threads: int) -> pb.Environment:
    in_runtimes = runtimes.available()
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
        onnxruntime_version=next(r.version for r in in_runtimes if r.name == "onnxruntime"),
        onnx_version=onnx.__version__,
        execution_providers=next(r.targets() for r in in_runtimes if r.name == "onnxruntime"),
        runtimes=[pb.RuntimeInfo(name=r.name, version=r.version, targets=r.targets()) for r in in_runtimes],
        python_version=platform.python_version(),
        platform=platform.platform(terse=True),
    )
