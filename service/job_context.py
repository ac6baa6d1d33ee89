"""What every stage of one job shares: its store, its folders, its events, its stop request and its outputs."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.loop import Interrupted, Progress
from protos.distillery.v1 import distillery_pb2 as pb
from service import model_formats
from service.artifacts import BlobStore
from service.config import ServerConfig
from service.store import Store

log = logging.getLogger("distillery.worker")

# Where each stage starts on the job's 0..1 progress scale; distil fills the gap to evaluate.
STAGE_START = {
    "load_teacher": 0.0,
    "pick_student": 0.02,  # student.auto only
    "search": 0.025,  # search jobs only: the trials (JobEvent.metrics has trial, trials, best_held_out_top1)
    "build_student": 0.03,
    "distil": 0.05,
    "evaluate": 0.80,
    "export": 0.85,
    "benchmark": 0.90,
    "report": 0.98,
}
# A search job's trials take about as long as its final training (trial epochs x trials against epochs): they
# get that share of the scale, each ended trial a step along it.
SEARCH_STAGE_START = {**STAGE_START, "build_student": 0.45, "distil": 0.46}


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
class JobContext:
    """One job in one process: the worker, or one training process (rank) of a distributed job."""

    config: ServerConfig
    store: Store
    job_id: str
    stop: StopRequest
    # In a distributed job's training processes: each node's first reports progress, rank 0 alone checkpoints.
    rank: int = 0
    local_rank: int = 0
    # The files this job ships: artifact name -> its file in the workdir, published at the end (student.pt and
    # the data-free samples as soon as training ends).
    outputs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.blobs = BlobStore(self.config.blobs_dir, self.config.tmp_dir)
        self.workdir = self.config.tmp_dir / self.job_id
        self.checkpoint_path = self.config.checkpoints_dir / f"{self.job_id}.pt"
        self.threads = self.config.threads_per_worker()
        self.archive_limits = model_formats.archive_limits(self.config.max_upload_bytes)
        self.current_stage = ""  # the last stage announced: what a failure is reported against
        self.stage_starts = STAGE_START  # SEARCH_STAGE_START for a search job (set by the worker)

    def output(self, name: str) -> Path:
        """The path to write artifact ``name`` to; it is published with the job."""
        self.outputs[name] = self.workdir / name
        return self.outputs[name]

    def publish(self, name: str) -> None:
        """Store output ``name`` as an artifact of the job now (it is stored again, unchanged or not, at the end)."""
        sha, size = self.blobs.put_file(self.outputs[name])
        self.store.put_artifact(self.job_id, pb.Artifact(name=name, sha256=sha, size_bytes=size))

    def model_row(self, model_id: str, role: str) -> pb.Model:
        row = self.store.get_model(model_id)
        if row is None:
            raise FileNotFoundError(f"{role} model {model_id} is gone from the store")
        return row

    # ------------------------------------------------------------ events

    def stage(self, name: str, message: str = "", metrics: dict[str, float] | None = None, done: float = 0.0) -> None:
        """Announce stage ``name`` (again, with ``done`` > 0: how far through it, 0..1)."""
        log.info("stage %s %s", name, message)
        self.current_stage = name
        release_freed_memory()
        if self.local_rank != 0:
            return
        self.store.record_progress(self.job_id, pb.JobEvent(stage=name, progress=self._progress(name, done),
                                                            message=message, metrics=metrics))

    def _progress(self, stage: str, done: float) -> float:
        start = self.stage_starts[stage]
        end = min((s for s in self.stage_starts.values() if s > start), default=1.0)
        return start + (end - start) * min(max(done, 0.0), 1.0)

    def on_progress(self, p: Progress) -> None:
        self.store.record_progress(
            self.job_id,
            pb.JobEvent(
                stage="distil",
                progress=self._progress("distil", p.step / p.total_steps),
                step=p.step,
                total_steps=p.total_steps,
                loss=p.loss,
                metrics={"epoch": p.epoch, "pretraining": float(p.pretraining)},
                message=p.message,
            ),
        )

    def training_callbacks(self) -> dict[str, Any]:
        """In a distributed job's processes, each node's first reports progress and rank 0 alone checkpoints."""
        return {
            "on_progress": self.on_progress if self.local_rank == 0 else None,
            "on_checkpoint": (lambda state: save_atomically(state, self.checkpoint_path)) if self.rank == 0 else None,
        }

    def resume(self, device: str) -> dict[str, Any] | None:
        """The job's last checkpoint, if it has one (a restart or a drain interrupted it)."""
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location=device, weights_only=True)


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc keeps them otherwise).

    A stage's large temporaries (the convention search's batches, evaluation
    at 224 px) would else stay resident through the next stage, and the
    worker's memory would be the sum of its stages' peaks rather than the largest.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018  (glibc only: musl and macOS have none)
except (OSError, AttributeError):
    _LIBC = None
