"""Server settings, with defaults a single-box deployment can run on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    port: int = 50051
    host: str = "[::]"
    # Roots that dataset paths must resolve inside; default: <data_dir>/datasets.
    data_roots: tuple[Path, ...] = ()
    max_concurrent_jobs: int = 1
    max_queued_jobs: int = 100
    max_upload_bytes: int = 2 << 30
    # Messages are small: big payloads stream in chunks of this size.
    chunk_bytes: int = 1 << 20
    max_message_bytes: int = 8 << 20
    # Intra-op threads of each worker; 0: see threads_per_worker().
    worker_threads: int = 0
    poll_interval_s: float = 0.2
    # A job running longer than this is ended (FAILED, RESOURCE_EXHAUSTED); 0: no limit.
    job_time_limit_s: float = 24 * 3600
    # On SIGTERM, running jobs get this long to checkpoint before they are killed.
    drain_timeout_s: float = 20.0
    # Memory a job's worker may allocate beyond the runtime it starts with; 0: see job_memory_bytes().
    job_memory_limit_bytes: int = 0
    # An upload's inspection (checks and a trial load, in a child process) may take this long.
    inspect_timeout_s: float = 300.0
    # Security: a bearer token every RPC but health must carry; TLS with this certificate and key.
    auth_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The API's threads run this much nicer than the workers (Linux), so that a
    # flood of RPCs takes its CPU from the API, not from training. 0: the same.
    api_nice: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())
        roots = self.data_roots or (self.data_dir / "datasets",)
        object.__setattr__(self, "data_roots", tuple(Path(r).resolve() for r in roots))
        for name in ("max_concurrent_jobs", "max_queued_jobs", "max_upload_bytes", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.job_memory_limit_bytes < 0:
            raise ValueError("job_memory_limit_bytes must not be negative")
        if self.job_time_limit_s < 0 or self.drain_timeout_s < 0 or self.inspect_timeout_s <= 0:
            raise ValueError("time limits must not be negative")
        if not 0 <= self.api_nice <= 19:
            raise ValueError("api_nice must be in [0, 19]")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "distillery.db"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def threads_per_worker(self) -> int:
        """Explicit, or the cores but one shared among running jobs.

        The core left over serves the API. Intra-op threads meet at a barrier
        every op, so one of them losing its core stalls the others: with
        every core training, 50 polling clients slowed a job 3.8x, where one
        thread fewer slowed it 1.1-1.3x (bench/load.py, 2 cores).
        """
        if self.worker_threads > 0:
            return self.worker_threads
        cores = os.cpu_count() or 1
        return max(1, (cores - 1) // self.max_concurrent_jobs)

    def job_memory_bytes(self) -> int:
        """Explicit, or three quarters of the machine's memory shared among running jobs.

        The quarter left over keeps the server, its upload inspections and the
        page cache alive when a job asks for more than the machine has.
        """
        if self.job_memory_limit_bytes > 0:
            return self.job_memory_limit_bytes
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return physical * 3 // 4 // self.max_concurrent_jobs

    def make_dirs(self) -> None:
        for d in (self.data_dir, self.blobs_dir, self.checkpoints_dir, self.logs_dir, self.tmp_dir, *self.data_roots):
            d.mkdir(parents=True, exist_ok=True)
