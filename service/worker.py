"""One job, start to finish, in its own process (forked from the server's forkserver): process control, then one linear run.

load_teacher -> build_student -> distil -> evaluate -> export -> benchmark -> report -> publish

Each stage is one function elsewhere (service/job_inputs.py, students.py,
variants.py, report_build.py); this file is the order they run in. A
benchmark-only job loads an uploaded student instead of building and
distilling one; the rest is the same pipeline, so its report is the same.

Each stage is announced as an event in the store. The worker ends its job
itself (SUCCEEDED, or FAILED with a readable message); if it dies instead, the
supervisor sees the exit and fails the job.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import sys
import threading
from typing import Any

import torch
from google.protobuf import json_format

from distill.allocator import keep_freed_memory, limit_memory, out_of_memory
from distill.datafree import DataFreeFailedError
from distill.evaluate import accuracy
from distill.loop import Interrupted
from distill.methods import SpecialistEnsemble
from distill.trainer import predict
from exporters import onnx_export, onnx_teacher
from protos.distillery.v1 import distillery_pb2 as pb
from service import bundle, forkserver, ranks, report_build, report_html, search_job, student_pick, students, variants
from service import report as report_format
from service.config import ServerConfig
from service.errors import describe, status_code
from service.job_context import SEARCH_STAGE_START, JobContext, StopRequest
from service.job_inputs import JobInputs, accepted_plan, load_inputs
from service.store import Store
from service.variants import PARITY_SAMPLES, EvalInputs

log = logging.getLogger("distillery.worker")

# Exit status of a worker that stopped for a drain (EX_TEMPFAIL): its job goes back to the queue.
EXIT_INTERRUPTED = 75
_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def main(config: ServerConfig, job_id: str, server_pid: int) -> None:
    """Process entry point (started by the supervisor, from its forkserver)."""
    # Own process group: cancelling kills the worker and anything it started.
    os.setpgrp()
    forkserver.leave()
    _die_with_parent(server_pid)
    _die_with_server(server_pid)
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
    ctx = JobContext(config, store, job_id, stop)
    try:
        run(ctx)
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
        store.transition(job_id, pb.JOB_STATE_FAILED, _failure_message(ctx, e), status_code(e).value[0])
    finally:
        store.close()


AFTER_TRAINING = ("evaluate", "export", "benchmark", "report")


def _failure_message(ctx: JobContext, error: BaseException) -> str:
    """The error, and for a stage after training, which one failed and that the trained student is kept."""
    kept = "student.pt" in ctx.outputs and ctx.current_stage in AFTER_TRAINING
    if not kept or isinstance(error, DataFreeFailedError):  # a verdict on the student, not a stage that broke
        return describe(error)
    return (
        f"the {ctx.current_stage} stage failed; the trained student is kept (student.pt) and RetryJob goes on "
        f"from after training: {describe(error)}"
    )


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
    ctx = JobContext(config, store, job_id, stop, rank=rank, local_rank=local_rank)
    try:
        with ranks.reporting_errors(ctx.workdir, rank):
            return students.train_as_rank(ctx)
    finally:
        store.close()


def _die_with_parent(owner_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even by kill -9); exit now if ``owner_pid`` is gone.

    ``owner_pid``: the server for a worker (whose parent is the server's
    forkserver, which exits when the server does), the worker for a training
    process (its parent). A worker outliving the server would keep training a
    job that the restarted server requeues and runs again: two writers of one
    checkpoint. A training process outliving its worker would wait on its
    peers for ever.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent or not _alive(owner_pid):  # it died before the request took effect
        os._exit(1)


def _die_with_server(server_pid: int) -> None:
    """SIGKILL this worker the moment the server exits (Linux 5.3+: a pidfd becomes readable then).

    The forkserver, this worker's parent, exits when the server does, but only
    after its interpreter's teardown: long enough for a small job to finish and
    write to the store that the restarted server owns. A daemon thread waits
    on the server's pidfd instead; where pidfds are missing, the parent-death
    signal is the only guard.
    """
    try:
        pidfd = os.pidfd_open(server_pid)
    except (AttributeError, OSError):  # no pidfd_open here, or the server is gone already (then the parent check ends us)
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or its pid taken by another user's process since
        return False
    return True


def run(ctx: JobContext) -> None:
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    plan = accepted_plan(ctx)
    device = plan.training.device
    if plan.search is not None:
        ctx.stage_starts = SEARCH_STAGE_START  # the trials get their share of the progress scale

    ctx.stage("load_teacher")
    inputs = load_inputs(ctx, plan)
    teacher, input_shape = inputs.teacher, inputs.input_shape
    if plan.student_auto is not None and not plan.student_architecture:  # picked once: a resumed run has its pick
        plan = student_pick.pick(ctx, plan, inputs)
    if plan.search is not None and not plan.search_result:  # searched once: a resumed run trains the chosen trial
        plan = search_job.run(ctx, plan, inputs)

    student = students.obtain(ctx, plan, inputs, rank_main)

    ctx.stage("evaluate")
    eval_inputs = _evaluation_inputs(inputs, student)
    teacher_logits = predict(teacher.model, eval_inputs.batches(), device)
    # The student is evaluated, exported and timed at the size it will be deployed at.
    student_shape = (input_shape[0], *(plan.export.input_size or input_shape[1:]))
    student_inputs = eval_inputs.resized(student_shape[1:]) if student_shape != input_shape else eval_inputs
    student_logits = _student_logits(student, student_inputs, student_shape != input_shape, device)
    if isinstance(student.model, SpecialistEnsemble) and student_inputs.labels is not None and student.training:
        generalist_logits = predict(student.model.generalist, student_inputs.batches(), device)  # what the rest adds
        student.training.generalist_top1 = accuracy(generalist_logits, student_inputs.labels).top1

    ctx.stage("export")
    student.model.cpu().eval()
    measured = [
        variants.torch_variant("teacher", teacher.model, teacher_logits, inputs.teacher_row.size_bytes, input_shape,
                               device, onnx=teacher.format == onnx_teacher.ONNX),
    ]
    exported, notes = None, []
    if student.is_onnx:
        assert student.file is not None
        measured.append(variants.torch_variant("student", student.model, student_logits, student.file.stat().st_size,
                                               student_shape, "cpu", onnx=True))
    else:
        file = student.file or student.saved
        assert file is not None
        student.model.to(device)
        measured.append(variants.torch_variant("student", student.model, student_logits, file.stat().st_size,
                                               student_shape, device, artifact="student.pt" if student.saved else "",
                                               inputs=student_inputs))
        exported = variants.export(ctx, plan, student.model.cpu(), student_inputs, measured[-1])  # from the CPU
        student.model.to(device)
        measured += exported.variants
        notes += exported.notes

    if teacher.format != onnx_teacher.ONNX and any(v.runtime != "pytorch" for v in measured[1:]):
        # Like for like: the teacher in the runtimes the student is timed in.
        in_runtimes, note = variants.teacher_in_runtimes(ctx, plan, teacher.model, measured[0], eval_inputs)
        teacher.model.to(device)  # the exporter ran it on the CPU
        measured += in_runtimes  # last: variants[0] and [1] keep their meaning
        notes += [note] if note else []

    ctx.stage("benchmark")
    latency, skipped = variants.benchmark(ctx, plan.benchmark, measured, eval_inputs)
    if student.retried:
        notes.append("retried (RetryJob): the student is the one the failed attempt trained; training did not run again")

    ctx.stage("report")
    report = report_build.build(ctx.job_id, plan, inputs, student, student_shape, measured, eval_inputs, latency,
                                exported, notes + skipped)
    handing_off = exported is not None and exported.summary is not None and not plan.benchmark_only
    if handing_off:
        report.export.bundle_artifact = "bundle.zip"
    report_format.finish(report)
    _publish(ctx, report, inputs, with_bundle=handing_off)
    if student.data_free is not None:
        why = report_format.data_free_failure(report)
        if why:
            raise DataFreeFailedError(f"{why}; its student, report and samples are kept for inspection (DownloadArtifact)")


def _evaluation_inputs(inputs: JobInputs, student: students.Student) -> EvalInputs:
    if inputs.splits:
        return EvalInputs(inputs.splits.val, inputs.splits.normalization)
    if student.generator is not None:  # no labelled data: fresh generated images stand in for parity and latency
        return EvalInputs(student.generator.sample(PARITY_SAMPLES))
    # A benchmark-only job without data: latency on random inputs, no accuracy.
    return EvalInputs(torch.randn(PARITY_SAMPLES, *inputs.input_shape, generator=torch.Generator().manual_seed(0)))


def _student_logits(student: students.Student, inputs: EvalInputs, resized: bool, device: str) -> torch.Tensor:
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


def _publish(ctx: JobContext, report: pb.Report, inputs: JobInputs, with_bundle: bool) -> None:
    """metadata_props in every ONNX file this job made (never an uploaded one), bundle.zip, the report; then store all."""
    splits, num_classes = inputs.splits, inputs.teacher.num_classes
    classes = splits.val.classes if splits else [str(c) for c in range(num_classes)]
    handoff = bundle.Handoff(report, classes, splits.normalization if splits else None, inputs.teacher_row.sha256)
    onnx_files = {v.artifact: ctx.outputs[v.artifact] for v in report.variants if v.artifact.endswith(".onnx")}
    for name, path in onnx_files.items():
        onnx_export.write_metadata(path, handoff.onnx_metadata(name))
    if with_bundle:
        handoff.write_zip(ctx.output("bundle.zip"), onnx_files)
    ctx.output("report.json").write_text(json_format.MessageToJson(report, preserving_proto_field_name=True))
    ctx.output("report.md").write_text(report_format.to_markdown(report))
    ctx.output("report.html").write_text(report_html.to_html(report))
    for name in ctx.outputs:
        ctx.publish(name)
    ctx.checkpoint_path.unlink(missing_ok=True)
    shutil.rmtree(ctx.workdir, ignore_errors=True)
