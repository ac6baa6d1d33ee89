"""A synchronous client of DistillationService, for the CLI, the demo and pipelines."""

from __future__ import annotations

import collections
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from protos.distillery.v1 import distillery_pb2 as pb
from protos.distillery.v1 import distillery_pb2_grpc as pb_grpc
from service.job_states import TERMINAL_STATES

CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call, on plaintext and TLS channels alike.

    (gRPC's own call credentials refuse plaintext channels, and a server on
    localhost or behind a TLS-terminating proxy is plaintext.)
    """

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201 (grpc's signature)
        return continuation(self._with_token(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


class Client:
    def __init__(self, address: str, timeout: float = 60.0, token: str = "", tls_ca: bytes | None = None) -> None:
        """``token``: the server's bearer token, if it wants one; ``tls_ca``: PEM roots to verify a TLS server by."""
        self.address = address
        self.timeout = timeout
        if tls_ca is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca))
        else:
            self.channel = grpc.insecure_channel(address)
        if token:
            self.channel = grpc.intercept_channel(self.channel, _BearerToken(token))
        self.stub = pb_grpc.DistillationServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upload(self, path: Path, name: str = "", architecture: str = "", model_format: int = 0) -> pb.Model:
        """Stream a model file to the server (header first, then 1 MiB chunks)."""
        header = pb.UploadModelHeader(
            name=name or path.name,
            format=model_format,
            architecture=architecture,
            sha256=file_sha256(path),
            size_bytes=path.stat().st_size,
        )

        def messages() -> Iterator[pb.UploadModelRequest]:
            yield pb.UploadModelRequest(header=header)
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield pb.UploadModelRequest(chunk=chunk)

        return self.stub.UploadModel(messages(), timeout=self.timeout).model

    def create_job(self, spec: pb.JobSpec, request_id: str = "") -> pb.Job:
        return self.stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id=request_id), timeout=self.timeout).job

    def get_job(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout).job

    def list_jobs(self, state: int = 0, page_size: int = 50) -> Iterator[pb.Job]:
        token = ""
        while True:
            response = self.stub.ListJobs(
                pb.ListJobsRequest(page_size=page_size, page_token=token, state=state), timeout=self.timeout
            )
            yield from response.jobs
            token = response.next_page_token
            if not token:
                return

    def cancel(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=self.timeout).job

    def retry(self, job_id: str) -> pb.Job:
        return self.stub.RetryJob(pb.RetryJobRequest(job_id=job_id), timeout=self.timeout).job

    def watch(self, job_id: str, after_sequence: int = 0) -> Iterator[pb.JobEvent]:
        for response in self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)):
            yield response.event

    def wait(self, job_id: str, on_event: Callable[[pb.JobEvent], None] | None = None) -> pb.Job:
        """Follow the job's events until it ends (re-attaching if the stream drops); returns the final job."""
        after, attempt = 0, 0
        while True:
            try:
                for event in self.watch(job_id, after):
                    after = event.sequence
                    if on_event:
                        on_event(event)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            try:
                job = self.get_job(job_id)
                if job.state in TERMINAL_STATES:
                    return job
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            # The stream ended early (a server restart or drain): back off, then re-attach.
            attempt += 1
            time.sleep(min(10.0, 0.5 * attempt))

    def report(self, job_id: str) -> pb.Report:
        return self.stub.GetReport(pb.GetReportRequest(job_id=job_id), timeout=self.timeout).report

    def download(self, job_id: str, name: str, destination: Path) -> Path:
        """Stream an artifact to ``destination`` (a file, or a directory to put it in); checks its sha256."""
        if destination.is_dir():
            destination = destination / name
        digest, artifact = hashlib.sha256(), None
        tmp = destination.with_name(destination.name + ".part")
        with open(tmp, "wb") as f:
            for response in self.stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, name=name)):
                if response.WhichOneof("payload") == "artifact":
                    artifact = response.artifact
                else:
                    digest.update(response.chunk)
                    f.write(response.chunk)
        if artifact is None or digest.hexdigest() != artifact.sha256:
            tmp.unlink(missing_ok=True)
            raise OSError(f"download of {name} is corrupt (sha256 mismatch)")
        tmp.replace(destination)
        return destination


class ProgressBar:
    """One line on stderr, redrawn per event: stage, bar, percent, step and loss."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.interactive = sys.stderr.isatty()
        self.last_stage = ""

    def update(self, event: pb.JobEvent) -> None:
        filled = round(self.width * event.progress)
        bar = "#" * filled + "-" * (self.width - filled)
        detail = f" step {event.step}/{event.total_steps} loss {event.loss:.4f}" if event.total_steps else ""
        line = f"{event.stage or pb.JobState.Name(event.state).removeprefix('JOB_STATE_').lower():<13} [{bar}] {100 * event.progress:5.1f}%{detail}"
        if self.interactive:
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
            if event.state in TERMINAL_STATES:
                print(file=sys.stderr)
        elif event.stage != self.last_stage or event.state != pb.JOB_STATE_RUNNING:
            print(line, file=sys.stderr, flush=True)  # logs: one line per stage, not per step
        self.last_stage = event.stage
