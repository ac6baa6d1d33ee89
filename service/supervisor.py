"""Runs queued jobs in worker processes, at most K at a time.

Forked from the server's forkserver (service/forkserver.py), never from the
server itself: a worker starts clean (no copy of the server's threads,
sockets or CUDA state) with torch and the engine imported already, and a
crash in it (segfault, OOM kill) takes down that job only. The supervisor
polls: it reaps finished workers, starts queued jobs into free slots, and
wakes WatchJob streams when new events land.

Its ticks run on the store's thread, not the event loop: they read and write
SQLite. Everything that changes which jobs run (a tick, a cancel's store
write) runs there too, so none of it interleaves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import time
from multiprocessing.process import BaseProcess

import grpc

from protos.distillery.v1 import distillery_pb2 as pb
from service import forkserver, worker
from service.config import ServerConfig
from service.job_states import TERMINAL_STATES
from service.store import StoreThread

log = logging.getLogger("distillery.supervisor")


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (likely out of memory)" if name == "SIGKILL" else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {exitcode} without finishing the job"


# How often the running jobs' run time is saved: what a crash of the whole server can leave
# uncounted (--job-time-limit counts the time jobs run, never the time the server is down).
RUN_TIME_SAVE_INTERVAL_S = 2.0


class Supervisor:
    def __init__(self, config: ServerConfig, store_thread: StoreThread) -> None:
        self.config = config
        self.store_thread = store_thread
        self.store = store_thread.store  # only ever used on the store's thread (or before the server serves)
        self.running: dict[str, BaseProcess] = {}
        self.accepting = True
        self._context = forkserver.context()
        # A child inherits the nice value of the thread that starts it. The forkserver starts from this
        # thread, made before the server lowers its own threads' priority (server.lower_api_priority).
        self._starter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="worker-starter")
        self._starter.submit(lambda: None).result()
        self._changed = asyncio.Event()
        self._watermark = -1
        self._stopped = asyncio.Event()
        self._run_time_saved = time.monotonic()

    def start_forkserver(self) -> None:
        """Start the forkserver workers fork from (at this thread's priority); it imports in the background."""
        self._starter.submit(forkserver.start).result()

    def recover(self) -> None:
        """Jobs that were RUNNING when the server died go back to the queue (they resume from a checkpoint)."""
        for job_id in self.store.ids_in_state(pb.JOB_STATE_RUNNING):
            # The time since its last saved run time was mostly the server being down: not counted.
            self.store.transition(job_id, pb.JOB_STATE_QUEUED, "requeued after a server restart", count_running_time=False)

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                if await self.store_thread.run(self.tick):
                    self._changed.set()
                    self._changed = asyncio.Event()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("supervisor tick failed")
            try:
                await asyncio.wait_for(self._stopped.wait(), self.config.poll_interval_s)
            except TimeoutError:
                pass

    def tick(self) -> bool:
        """Reap, enforce the time limit, start queued jobs; True when new events landed. On the store's thread."""
        limit = self.config.job_time_limit_s
        if self.running and time.monotonic() - self._run_time_saved >= RUN_TIME_SAVE_INTERVAL_S:
            self.store.save_run_time(list(self.running))
            self._run_time_saved = time.monotonic()
        run_seconds = self.store.run_seconds(list(self.running)) if limit and self.running else {}
        for job_id, process in list(self.running.items()):
            if limit and process.is_alive() and run_seconds.get(job_id, 0.0) > limit:
                self._kill_now(process)
                self.store.transition(
                    job_id,
                    pb.JOB_STATE_FAILED,
                    f"the job ran longer than this server's time limit of {limit:g} s (--job-time-limit)",
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                )
            if not process.is_alive():
                process.join()
                del self.running[job_id]
                job = self.store.get_job(job_id)
                if job is not None and job.state not in TERMINAL_STATES:
                    self.store.transition(
                        job_id, pb.JOB_STATE_FAILED, describe_exit(process.exitcode), grpc.StatusCode.INTERNAL.value[0]
                    )
        while self.accepting and len(self.running) < self.config.max_concurrent_jobs:
            job_id = self.store.next_queued()
            # Not while the running jobs hold every slot: a search may hold several, for trials in parallel.
            if job_id is None or not self.store.transition(job_id, pb.JOB_STATE_RUNNING, "started",
                                                           slot_limit=self.config.max_concurrent_jobs):
                break
            process = self._context.Process(
                target=worker.main, args=(self.config, job_id, os.getpid()), name=f"distillery-worker-{job_id}"
            )
            try:
                self._starter.submit(process.start).result()
            except OSError as e:  # no memory or PIDs left for a new process
                self.store.transition(
                    job_id, pb.JOB_STATE_FAILED, f"could not start a worker: {e}", grpc.StatusCode.UNAVAILABLE.value[0]
                )
                continue
            self.running[job_id] = process
            log.info("job %s started in worker pid %s", job_id, process.pid)
        watermark = self.store.event_watermark()
        changed, self._watermark = watermark != self._watermark, watermark
        return changed

    async def wait_for_change(self, timeout: float) -> None:
        """Return when new events may exist, or after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had already ended."""
        cancelled, process = await self.store_thread.run(self._mark_cancelled, job_id)
        if not cancelled:
            return False
        if process is not None:
            await asyncio.to_thread(process.join, 10)
        (self.config.checkpoints_dir / f"{job_id}.pt").unlink(missing_ok=True)
        return True

    async def retry(self, job_id: str) -> bool:
        """Queue a FAILED job again; False when it is not FAILED. It resumes after its last finished stage
        (a published student.pt: no training again; else its training checkpoint)."""
        reopened, process = await self.store_thread.run(self._reopen, job_id)
        if process is not None:  # the failed attempt's worker, still exiting (its job already reads FAILED)
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                self._kill_now(process)
                await asyncio.to_thread(process.join)
        return reopened

    def _reopen(self, job_id: str) -> tuple[bool, BaseProcess | None]:
        """On the store's thread: back to QUEUED; the failed attempt's worker is no longer this job's process."""
        if not self.store.reopen(job_id, "retry requested: queued again"):
            return False, None
        return True, self.running.pop(job_id, None)

    def _mark_cancelled(self, job_id: str) -> tuple[bool, BaseProcess | None]:
        """On the store's thread: the job reads CANCELLED and its worker is killed, never half-way through a tick."""
        if not self.store.transition(
            job_id, pb.JOB_STATE_CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED.value[0]
        ):
            return False, None
        process = self.running.pop(job_id, None)
        if process is not None:
            self._kill_now(process)
        return True, process

    async def shutdown(self) -> None:
        """Stop starting jobs; running ones checkpoint, go back to the queue, and resume on the next start.

        Workers get SIGTERM and ``drain_timeout_s`` to stop at a step boundary
        (they checkpoint first); any still running then is killed, and resumes
        from its last periodic checkpoint instead.
        """
        self.accepting = False
        self._stopped.set()
        # Queued behind a tick in flight, if any; no tick starts after it (run() sees _stopped).
        running = await self.store_thread.run(lambda: dict(self.running))
        for process in running.values():
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.config.drain_timeout_s
        for job_id, process in running.items():
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("job %s did not stop within %g s; killing it", job_id, self.config.drain_timeout_s)
                self._kill_now(process)
                await asyncio.to_thread(process.join, 10)
            elif process.exitcode == worker.EXIT_INTERRUPTED:
                log.info("job %s checkpointed and stopped", job_id)
            # A job that ended meanwhile keeps its ending: transition() never reopens one.
            await self.store_thread.transition(job_id, pb.JOB_STATE_QUEUED, "requeued: the server is shutting down")
        await self.store_thread.run(self.running.clear)
        self._changed.set()

    @staticmethod
    def _kill_now(process: BaseProcess) -> None:
        # The worker leads its own process group; killing the group ends its children too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.kill()  # in case it had not reached setpgrp yet
