"""DistillationService RPCs: each translates a request into store and supervisor calls.

No training or export logic lives here. Errors are ServiceError subclasses
that carry their status code; anything else is logged and returned as
INTERNAL with a one-line message, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import torch
from google.protobuf import json_format

from distill import losses, models
from distill.model_checks import ModelFileError
from protos.distillery.v1 import distillery_pb2 as pb
from protos.distillery.v1 import distillery_pb2_grpc as pb_grpc
from service import model_formats, specs
from service.artifacts import BlobStore
from service.config import ServerConfig
from service.inspection import InspectionLimitError, Inspector
from service.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    describe,
)
from service.job_states import TERMINAL_STATES
from service.store import StoreThread
from service.supervisor import Supervisor

log = logging.getLogger("distillery.servicer")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_PAGE_SIZE = 500


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, ServiceError):
        await context.abort(error.code, str(error))
    log.exception("unexpected error")
    await context.abort(grpc.StatusCode.INTERNAL, describe(error))


def unary(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as e:  # mapped to a status code in one place
            await _abort(context, e)

    return wrapper


def streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as e:
            await _abort(context, e)

    return wrapper


class DistillationServicer(pb_grpc.DistillationServiceServicer):
    def __init__(self, config: ServerConfig, store: StoreThread, supervisor: Supervisor) -> None:
        self.config = config
        self.store = store  # every call awaited: SQLite runs on the store's thread, never on the event loop
        self.supervisor = supervisor
        self.blobs = BlobStore(config.blobs_dir, config.tmp_dir)
        self.inspector = Inspector(model_formats.archive_limits(config.max_upload_bytes), config.inspect_timeout_s,
                                   nice=config.api_nice)
        self.cuda_devices = torch.cuda.device_count()

    # ------------------------------------------------------------- models

    @unary
    async def UploadModel(self, request_iterator: AsyncIterator[pb.UploadModelRequest], context: Any) -> pb.UploadModelResponse:
        header: pb.UploadModelHeader | None = None
        writer = None
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("payload")
                if header is None:
                    if kind != "header":
                        raise InvalidArgument("the first UploadModel message must carry the header")
                    header = await asyncio.to_thread(self._check_upload_header, message.header)  # may import timm
                    writer = await asyncio.to_thread(self.blobs.writer)
                elif kind == "chunk":
                    if writer.size + len(message.chunk) > header.size_bytes:
                        raise InvalidArgument(f"received more bytes than the header's size_bytes ({header.size_bytes})")
                    await asyncio.to_thread(writer.write, message.chunk)  # disk writes stay off the event loop
                else:
                    raise InvalidArgument("the header must be sent once, in the first message")
            if header is None or writer is None:
                raise InvalidArgument("empty upload: send a header, then the file in chunks")
            if writer.size != header.size_bytes:
                raise InvalidArgument(f"received {writer.size} bytes, the header declared {header.size_bytes}")
            if writer.hash.hexdigest() != header.sha256:
                raise InvalidArgument(
                    f"sha256 mismatch: the bytes hash to {writer.hash.hexdigest()}, the header says {header.sha256}"
                )
            try:  # in a bounded child process: the event loop keeps serving meanwhile
                detected = await self.inspector.run(writer.staged_path())
            except ModelFileError as e:
                raise InvalidArgument(str(e)) from e
            except InspectionLimitError as e:
                raise ResourceExhausted(str(e)) from e
            if header.format and header.format != detected:
                raise InvalidArgument(
                    f"the header says {pb.ModelFormat.Name(header.format)}, the file is {pb.ModelFormat.Name(detected)}"
                )
            if detected in model_formats.WEIGHTS_FORMATS and not header.architecture:
                raise InvalidArgument(
                    f"{pb.ModelFormat.Name(detected)} holds weights only: name its architecture; "
                    f"known: {', '.join(models.architectures())}, or any of timm's (timm.list_models())"
                )
            sha, size = await asyncio.to_thread(writer.commit)
            writer = None
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.discard)
        model_id = "m-" + hashlib.sha256(f"{sha}:{header.architecture}".encode()).hexdigest()[:16]
        model = await self.store.put_model(
            pb.Model(
                id=model_id,
                name=header.name,
                format=detected,
                architecture=header.architecture,
                sha256=sha,
                size_bytes=size,
            )
        )
        log.info("model %s uploaded (%s, %d bytes)", model.id, pb.ModelFormat.Name(detected), size)
        return pb.UploadModelResponse(model=model)

    def _check_upload_header(self, header: pb.UploadModelHeader) -> pb.UploadModelHeader:
        if header.size_bytes <= 0:
            raise InvalidArgument("header.size_bytes must be positive")
        if header.size_bytes > self.config.max_upload_bytes:
            raise ResourceExhausted(
                f"the model is {header.size_bytes} bytes; this server accepts at most "
                f"{self.config.max_upload_bytes} (--max-upload-bytes)"
            )
        if not _SHA256.match(header.sha256):
            raise InvalidArgument("header.sha256 must be 64 lowercase hex digits")
        if header.format not in pb.ModelFormat.values():
            raise InvalidArgument(f"unknown header.format {header.format}")
        if header.architecture and not models.is_known(header.architecture):
            raise InvalidArgument(models.unknown_message(header.architecture))
        if len(header.name) > 256:
            raise InvalidArgument("header.name is longer than 256 characters")
        return header

    @unary
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        model = await self.store.get_model(request.model_id)
        if model is None:
            raise NotFound(f"model {request.model_id!r} not found")
        return pb.GetModelResponse(model=model)

    # --------------------------------------------------------------- jobs

    async def _job(self, job_id: str) -> pb.Job:
        job = await self.store.get_job(job_id) if job_id else None
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job

    @unary
    async def CreateJob(self, request: pb.CreateJobRequest, context: Any) -> pb.CreateJobResponse:
        if len(request.request_id) > 128:
            raise InvalidArgument("request_id is longer than 128 characters")
        if not self.supervisor.accepting:
            raise Unavailable("the server is shutting down; retry on another replica or after the restart")
        # Off the event loop: planning looks at the data roots, and a timm student's name imports timm.
        plan = await asyncio.to_thread(specs.plan, request.spec, self.config.data_roots, self.cuda_devices)
        teacher = await self.store.get_model(request.spec.teacher_model_id)
        if teacher is None:
            raise NotFound(f"teacher model {request.spec.teacher_model_id!r} not found; upload it first")
        if plan.benchmark_only and await self.store.get_model(plan.benchmark_only.student_model_id) is None:
            raise NotFound(f"student model {plan.benchmark_only.student_model_id!r} not found; upload it first")
        if plan.student_init_model_id:
            _check_pretrained_start(await self.store.get_model(plan.student_init_model_id), plan)
        if plan.student_model_id:
            own = await self.store.get_model(plan.student_model_id)
            if own is None:
                raise NotFound(f"student.model_id {plan.student_model_id!r} not found; upload the module first")
            if own.format != pb.MODEL_FORMAT_TORCHSCRIPT:
                raise InvalidArgument(f"student.model_id {own.id} is {pb.ModelFormat.Name(own.format)}; a student to "
                                      "train is a TorchScript module (torch.jit.save(torch.jit.script(model)))")
        chosen_among = [name for choice in (plan.search.methods if plan.search else ()) for name in choice.split("+")]
        for name in [m.method for m in plan.methods] + chosen_among:
            if losses.method(name).needs_teacher_features and teacher.format not in model_formats.LAYERED_FORMATS:
                raise InvalidArgument(f"{name} {losses.FEATURES_NEED_MODULES}")
        try:
            job, created = await self.store.create_job(
                request.spec, request.request_id, self.config.max_queued_jobs, specs.plan_to_json(plan)
            )
        except OverflowError as e:
            raise ResourceExhausted(f"{e} (--max-queued-jobs)") from e
        if not created and job.spec != request.spec:
            raise AlreadyExists(f"request_id {request.request_id!r} was used for job {job.id} with a different spec")
        return pb.CreateJobResponse(job=job)

    @unary
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=await self._job(request.job_id))

    @unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        if request.state not in pb.JobState.values():
            raise InvalidArgument(f"unknown state {request.state}")
        page_size = min(request.page_size or 50, MAX_PAGE_SIZE)
        try:
            jobs, token = await self.store.list_jobs(page_size, request.page_token, request.state)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    @unary
    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        job = await self._job(request.job_id)
        if not await self.supervisor.cancel(job.id):
            state = pb.JobState.Name((await self._job(job.id)).state)
            raise FailedPrecondition(f"job {job.id} has already ended ({state})")
        return pb.CancelJobResponse(job=await self._job(job.id))

    @unary
    async def RetryJob(self, request: pb.RetryJobRequest, context: Any) -> pb.RetryJobResponse:
        job = await self._job(request.job_id)
        if not await self.supervisor.retry(job.id):
            state = pb.JobState.Name((await self._job(job.id)).state)
            raise FailedPrecondition(f"job {job.id} is {state}; only a FAILED job can be retried")
        return pb.RetryJobResponse(job=await self._job(job.id))

    @streaming
    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.WatchJobResponse]:
        job = await self._job(request.job_id)
        after = request.after_sequence
        while True:
            ended = (await self._job(job.id)).state in TERMINAL_STATES  # read before the events: no last event is missed
            for event in await self.store.events(job.id, after):
                after = event.sequence
                yield pb.WatchJobResponse(event=event)
            if ended or not self.supervisor.accepting:
                return
            await self.supervisor.wait_for_change(timeout=1.0)

    @unary
    async def GetReport(self, request: pb.GetReportRequest, context: Any) -> pb.GetReportResponse:
        job = await self._job(request.job_id)
        if job.state != pb.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(f"job {job.id} is {pb.JobState.Name(job.state)}; a report exists once it SUCCEEDED")
        artifact = next((a for a in job.artifacts if a.name == "report.json"), None)
        if artifact is None:
            raise ServiceError(f"job {job.id} succeeded but its report.json is missing")
        text = await asyncio.to_thread(self.blobs.path(artifact.sha256).read_text)
        return pb.GetReportResponse(report=json_format.Parse(text, pb.Report()))

    @streaming
    async def DownloadArtifact(self, request: pb.DownloadArtifactRequest, context: Any) -> AsyncIterator[pb.DownloadArtifactResponse]:
        job = await self._job(request.job_id)
        artifact = next((a for a in job.artifacts if a.name == request.name), None)
        if artifact is None:
            names = ", ".join(a.name for a in job.artifacts) or "none yet"
            raise NotFound(f"job {job.id} has no artifact {request.name!r}; it has: {names}")
        yield pb.DownloadArtifactResponse(artifact=artifact)
        with open(self.blobs.path(artifact.sha256), "rb") as f:
            while chunk := await asyncio.to_thread(f.read, self.config.chunk_bytes):
                yield pb.DownloadArtifactResponse(chunk=chunk)


def _check_pretrained_start(weights: pb.Model | None, plan: specs.JobPlan) -> None:
    if weights is None:
        raise NotFound(f"student.init_model_id {plan.student_init_model_id!r} not found; upload the weights first")
    if weights.format not in model_formats.WEIGHTS_FORMATS:
        raise InvalidArgument(f"student.init_model_id {weights.id} is {pb.ModelFormat.Name(weights.format)}; "
                              "a pretrained start is a weights file (state_dict or safetensors)")
    if weights.architecture != plan.student_architecture:
        raise InvalidArgument(f"student.init_model_id {weights.id} holds weights for {weights.architecture!r}, "
                              f"the student is {plan.student_architecture!r}")
