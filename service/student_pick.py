"""The pick_student stage: the most capable student whose untrained copy fits the job's latency budget, here.

Latency depends on the architecture and the input, not on the weights, so
each candidate is built untrained for the job's classes and input, exported
to ONNX as the job would export its student, and timed in the budget's
runtime at the budget's batch size: all candidates (and, for a speedup
budget, the teacher) interleaved in one measurement, so they sample the same
stretch of this shared machine's speed. Of those that fit, the one with the
most parameters (then MACs) is trained. The plan is stored again with the
chosen architecture and the table, so a resumed run, a retry and every
training process of a distributed job train that one without timing again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from google.protobuf import json_format

from distill import models
from distill.benchmark import Runner, TimingPlan, count_macs, count_parameters, measure_runners
from exporters import onnx_export, onnx_teacher, runtimes
from protos.distillery.v1 import distillery_pb2 as pb
from service import specs
from service.errors import FailedPrecondition
from service.job_context import JobContext
from service.job_inputs import JobInputs
from service.variants import macs_or_zero

log = logging.getLogger("distillery.worker")


def pick(ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs) -> specs.JobPlan:
    """``plan`` with ``student_architecture`` and ``student_pick`` filled in (and stored); FailedPrecondition when
    no candidate fits."""
    auto = plan.student_auto
    assert auto is not None
    ctx.stage("pick_student", f"timing {len(auto.candidates)} untrained candidates for {auto.describe()}")
    where = specs.LatencyPlan(auto.batch_size, auto.runtime)
    table, teacher_p50 = time_candidates(ctx, plan, inputs, auto.candidates, where, with_teacher=bool(auto.min_speedup))
    result = pb.StudentPick(budget=auto.describe(), teacher_p50_ms=teacher_p50)
    for row in table:
        if row.p50_ms:
            row.fits = (row.p50_ms <= auto.max_latency_ms if auto.max_latency_ms
                        else result.teacher_p50_ms / row.p50_ms >= auto.min_speedup)
        result.candidates.append(row)
    fitting = [row for row in result.candidates if row.fits]
    if not fitting:
        timed = sorted((row for row in result.candidates if row.p50_ms), key=lambda row: row.p50_ms)
        fastest = f"the fastest, {timed[0].architecture}, takes {timed[0].p50_ms:.3f} ms" if timed else "none could be timed"
        raise FailedPrecondition(f"no student candidate fits {auto.describe()}: {fastest}"
                                 + (f" against the teacher's {result.teacher_p50_ms:.3f} ms" if auto.min_speedup else "")
                                 + "; relax the budget or name other candidates")
    chosen = max(fitting, key=lambda row: (row.parameters, row.macs))
    result.chosen = chosen.architecture
    result.reason = (f"{chosen.architecture} has the most parameters ({chosen.parameters:,}) of the {len(fitting)} of "
                     f"{len(result.candidates)} candidates within {auto.describe()} (its p50: {chosen.p50_ms:.3f} ms)")
    log.info("student picked: %s", result.reason)
    picked = replace(plan, student_architecture=chosen.architecture, student_pick=json_format.MessageToJson(result))
    ctx.store.set_plan(ctx.job_id, specs.plan_to_json(picked))
    return picked


_TEACHER = "(teacher)"


def time_candidates(
    ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs, candidates: tuple[str, ...], where: specs.LatencyPlan,
    with_teacher: bool,
) -> tuple[list[pb.StudentCandidate], float]:
    """Each of ``candidates`` built untrained, exported and timed ``where`` (p50_ms 0 and a note when it would not
    export), interleaved with each other and, ``with_teacher``, with the teacher; and the teacher's p50 (or 0)."""
    runtime = next(r for r in runtimes.available() if r.name == where.runtime)
    channels, size = inputs.input_shape[0], inputs.input_shape[1:]
    student_shape = (channels, *(plan.export.input_size or size))
    table: dict[str, pb.StudentCandidate] = {}
    runners: dict[str, Runner] = {}
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as folder:
        for name in candidates:
            torch.manual_seed(plan.training.seed)
            model = models.build(name, inputs.teacher.num_classes, channels, student_shape[1]).eval()
            row = table[name] = pb.StudentCandidate(
                architecture=name, parameters=count_parameters(model),
                macs=macs_or_zero(lambda: count_macs(model, student_shape)))
            try:
                path = Path(folder) / f"{name}.onnx"
                onnx_export.export_onnx(model, torch.rand(2, *student_shape), path, plan.export.opset, True,
                                        plan.export.exporters)
            except onnx_export.ExportError as e:
                row.note = f"not exported: {' '.join(str(e).split())[:200]}"
                continue
            runners[name] = _runner(runtime, path, ctx.threads, student_shape)
        if with_teacher:
            teacher = _teacher_file(ctx, plan, inputs, Path(folder))
            runners[_TEACHER] = _runner(runtime, teacher, ctx.threads, inputs.input_shape)
        timing = plan.benchmark.timing
        measured = measure_runners(
            runners, lambda n: torch.rand(n, 1), TimingPlan((where.batch_size,), timing.warmup_runs, timing.min_runs,
                                                            timing.min_seconds))
    p50 = {name: stats[0].p50_ms for name, stats in measured.items() if stats}
    for name, row in table.items():
        row.p50_ms = p50.get(name, 0.0)
    return list(table.values()), p50.get(_TEACHER, 0.0)


def _runner(runtime: runtimes.Runtime, path: Path, threads: int, shape: tuple[int, ...]) -> Runner:
    offer = runtime.offers({"fp32": path})[0]  # the runtime's CPU target: what the report's latency is on
    session = runtime.open(offer, threads)
    # Each model gets random inputs of its own shape (a student deployed at another size than the teacher's).
    return Runner(open=lambda: session.run, prepare=lambda batch: torch.rand(len(batch), *shape).numpy())


def _teacher_file(ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs, folder: Path) -> Path:
    """The teacher as ONNX: its own file when it was uploaded as one, else exported like the students."""
    if inputs.teacher.format == onnx_teacher.ONNX:
        return ctx.blobs.path(inputs.teacher_row.sha256)
    path = folder / "teacher.onnx"
    onnx_export.export_onnx(inputs.teacher.model, torch.rand(2, *inputs.input_shape), path, plan.export.opset, True,
                            plan.export.exporters)
    inputs.teacher.model.to(plan.training.device)  # the exporter runs it on the CPU
    return path
